"""Kill a training process (SIGKILL) at many points, resume it, and get bit for bit the run that
was never stopped; Ctrl-C saves a checkpoint and exits 130.

The runs use Dropout (demo-cnn), augmentation (factor 2), a cosine schedule with warmup, Adam
and gradient clipping, so every piece of resumable state matters. 18 training images x 2 views
in batches of 8: 5 steps per epoch, 4 epochs, a checkpoint every 2 steps and every epoch.
"""

from __future__ import annotations

import json
import random
import shutil
import time

import numpy as np
import pytest

from purenn.io import ModelFileError, load_checkpoint

TIMING = ("seconds", "images_per_sec", "elapsed_s")


@pytest.fixture(scope="module")
def run_args(checkpointing_run_args):
    return checkpointing_run_args(4)


@pytest.fixture(scope="module")
def reference(run_args, tmp_path_factory, purenn_subprocess):
    """The uninterrupted run, in a process of its own like the interrupted ones."""
    out = tmp_path_factory.mktemp("reference") / "run"
    finish(purenn_subprocess(*run_args, "--out", out))
    return out


def finish(process, expected: int = 0) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == expected, (process.returncode, out, err)
    return err


def arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files if key != "__purenn__"}


def assert_same_run(run, reference, metrics_reader) -> None:
    """Same best model, same final checkpoint (weights, optimizer, best weights), same metrics."""
    for name in ("best.npz", "last.ckpt.npz"):
        got, want = arrays(run / name), arrays(reference / name)
        assert got.keys() == want.keys()
        different = [k for k in want if not np.array_equal(got[k], want[k])]
        assert not different, f"{name}: {different}"
    state, ref_state = (load_checkpoint(r / "last.ckpt.npz")[2] for r in (run, reference))
    for s in (state, ref_state):
        s["loop"]["train_seconds"] = s["loop"]["elapsed_seconds"] = 0
        for row in s["loop"]["history"]:
            for key in TIMING:
                row.pop(key)
    assert state == ref_state
    rows, ref_rows = (metrics_reader(r / "metrics.csv") for r in (run, reference))
    assert [{k: v for k, v in row.items() if k not in TIMING} for row in rows] == [
        {k: v for k, v in row.items() if k not in TIMING} for row in ref_rows
    ]
    report, ref_report = (json.loads((r / "report.json").read_text()) for r in (run, reference))
    # Same images trained, whatever the time they took.
    assert report.pop("run")["training_images"] == ref_report.pop("run")["training_images"]
    assert {**report, "model": None} == {**ref_report, "model": None}


def test_killed_at_several_steps_resumes_to_identical_weights(
    run_args, reference, tmp_path, purenn_subprocess, metrics_reader
):
    out = tmp_path / "run"
    # step 1: before any checkpoint; 4: just after a step checkpoint; 5: last batch of epoch 1,
    # before its validation; 11: one step after epoch 2's end; 18: in the last epoch.
    kills = [1, 4, 5, 11, 18]
    process = purenn_subprocess(*run_args, "--out", out, env={"PURENN_TEST_SIGNAL": "KILL@1"})
    finish(process, expected=-9)
    steps = []
    for step in kills[1:]:
        process = purenn_subprocess(
            "train", "--resume", out, env={"PURENN_TEST_SIGNAL": f"KILL@{step}"}
        )
        finish(process, expected=-9)
        steps.append(load_checkpoint(out / "last.ckpt.npz")[2]["loop"]["step"])
    # The checkpoint on disk after each kill: every 2 steps and at epoch ends (5, 10, ...).
    assert steps == [4, 4, 10, 18]
    finish(purenn_subprocess("train", "--resume", out))
    assert_same_run(out, reference, metrics_reader)


def checkpoint_step(out) -> int:
    """The step of the checkpoint on disk (-1 before the first); safe while it is replaced."""
    try:
        return load_checkpoint(out / "last.ckpt.npz")[2]["loop"]["step"]
    except ModelFileError:
        return -1


def test_killed_at_random_moments_resumes_to_identical_weights(
    run_args, reference, tmp_path, purenn_subprocess, metrics_reader
):
    """Kills land anywhere: start-up, a step, validation, a file being written.

    The first kill comes at a random time after start; the others a random few milliseconds
    after the checkpoint on disk reaches a random step, i.e. anywhere in the following steps.
    """
    out = tmp_path / "run"
    rng = random.Random(0)
    process = purenn_subprocess(*run_args, "--out", out)
    time.sleep(rng.uniform(0.1, 0.6))
    kills = []
    for target in [None, *sorted(rng.sample(range(2, 19), 3))]:
        while target is not None and process.poll() is None and checkpoint_step(out) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        if process.poll() is not None:
            break
        process.kill()
        process.communicate(timeout=60)
        kills.append(checkpoint_step(out))
        if (out / "config.json").exists():
            process = purenn_subprocess("train", "--resume", out)
        else:  # killed before the run wrote its config: nothing to resume, start it again
            process = purenn_subprocess(*run_args, "--out", out)
    finish(process)
    assert len(kills) >= 3, kills
    assert_same_run(out, reference, metrics_reader)


def test_ctrl_c_writes_a_checkpoint_exits_130_and_resumes_identically(
    run_args, reference, tmp_path, purenn_subprocess, metrics_reader
):
    out = tmp_path / "run"
    process = purenn_subprocess(*run_args, "--out", out, env={"PURENN_TEST_SIGNAL": "INT@7"})
    err = finish(process, expected=130)
    assert f"purenn train --resume {out}" in err and "Traceback" not in err
    # Interrupted after step 7 although the last scheduled checkpoint was at step 6.
    assert load_checkpoint(out / "last.ckpt.npz")[2]["loop"]["step"] == 7
    finish(purenn_subprocess("train", "--resume", out))
    assert_same_run(out, reference, metrics_reader)


def test_ctrl_c_from_outside_saves_a_checkpoint(run_args, tmp_path, purenn_subprocess):
    """A real SIGINT from another process while the loop runs (many epochs so that it does)."""
    out = tmp_path / "run"
    args = [*run_args, "--out", out]
    args[args.index("--epochs") + 1] = "500"
    process = purenn_subprocess(*args)
    deadline = time.monotonic() + 60
    while not (out / "last.ckpt.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(2)  # SIGINT
    err = finish(process, expected=130)
    assert "checkpoint saved" in err and "--resume" in err
    state = load_checkpoint(out / "last.ckpt.npz")[2]
    assert 0 < state["loop"]["step"] < 500 * 5 and not state["loop"]["finished"]


def test_resuming_a_finished_run_only_redoes_the_final_stage(
    reference, tmp_path, purenn_subprocess, metrics_reader
):
    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    (copy / "best.npz").unlink()
    (copy / "report.json").unlink()
    process = purenn_subprocess("train", "--resume", copy, "-q")
    finish(process)
    assert_same_run(copy, reference, metrics_reader)


def test_a_graph_model_killed_mid_run_resumes_to_identical_weights(
    checkpointing_run_args, tmp_path, purenn_subprocess, metrics_reader
):
    # plantvillage-resnet: a graph (residual Adds, projection shortcuts) with BatchNorm buffers;
    # every view's background replaced at random too (the backdrop's draws: seed, epoch, batch).
    args = checkpointing_run_args(2) + ["--replace-background", "0.5"]
    args[args.index("--preset") + 1] = "plantvillage-resnet"
    args[args.index("--image-size") + 1] = "32"  # the preset halves the image 5 times
    reference = tmp_path / "reference"
    finish(purenn_subprocess(*args, "--out", reference))
    out = tmp_path / "run"
    finish(purenn_subprocess(*args, "--out", out, env={"PURENN_TEST_SIGNAL": "KILL@3"}), -9)
    assert checkpoint_step(out) == 2
    finish(purenn_subprocess("train", "--resume", out))
    assert_same_run(out, reference, metrics_reader)
