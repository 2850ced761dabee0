"""``mpiexec -n 2 purenn train``: the run folder of one process, written by rank 0; a killed or
failing rank ends the job quickly; checkpoints resume from 2 ranks to 1 process and back.

18 training images x 2 views in batches of 8 (5 steps per epoch, the last one 4 samples: 2 per
rank), 3 epochs, Dropout, augmentation, clipping, a checkpoint every 2 steps.
"""

from __future__ import annotations

import json

import mpi_launch
import numpy as np
import pytest

from purenn.io import load_checkpoint

# Starts ``python -m purenn ARGS`` with PURENN_TEST_SIGNAL=<first argument> on rank 1 only.
ON_RANK_1 = (
    "import os, runpy, sys; signal = sys.argv.pop(1)\n"
    "if os.environ.get('OMPI_COMM_WORLD_RANK') == '1': os.environ['PURENN_TEST_SIGNAL'] = signal\n"
    "runpy.run_module('purenn', run_name='__main__', alter_sys=True)"
)
RUN_FILES = {
    "best.npz", "last.ckpt.npz", "metrics.csv", "config.json", "curves.png", "confusion.png",
    "report.json", "skipped.txt", "reliability.png",
}  # fmt: skip


@pytest.fixture(scope="module")
def run_args(checkpointing_run_args):
    return checkpointing_run_args(3)


@pytest.fixture(scope="module")
def reference(run_args, tmp_path_factory):
    """The run in one process."""
    mpi_launch.mpiexec()  # skip before any work without MPI
    out = tmp_path_factory.mktemp("one-process") / "run"
    launch = mpi_launch.run(None, ["-m", "purenn", *run_args, "--out", out])
    assert launch.code == 0, launch.err
    return out


def weights(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files if key != "__purenn__"}


def assert_same_training(run, reference, metrics_reader) -> None:
    """The same run up to float summation order: weights and metrics within 1e-5."""
    got, want = weights(run / "best.npz"), weights(reference / "best.npz")
    assert got.keys() == want.keys()
    for key in want:
        scale = np.max(np.abs(want[key]))
        assert np.max(np.abs(got[key] - want[key])) <= 1e-5 * scale, key
    rows, ref_rows = (metrics_reader(r / "metrics.csv") for r in (run, reference))
    assert len(rows) == len(ref_rows) == 3
    for row, ref_row in zip(rows, ref_rows, strict=True):
        for key in ("epoch", "train_accuracy", "val_accuracy", "lr"):
            assert row[key] == ref_row[key], key
        for key in ("train_loss", "val_loss"):
            assert row[key] == pytest.approx(ref_row[key], rel=1e-5), key
    report, ref_report = (json.loads((r / "report.json").read_text()) for r in (run, reference))
    assert report["confusion_matrix"] == ref_report["confusion_matrix"]
    # The temperature is fitted on the validation logits gathered from every rank.
    calibration, ref_calibration = report["calibration"], ref_report["calibration"]
    assert calibration["val"]["samples"] == ref_calibration["val"]["samples"]
    assert calibration["temperature"] == pytest.approx(ref_calibration["temperature"], rel=1e-4)


def test_two_ranks_write_the_run_folder_of_one_process(
    run_args, reference, tmp_path, metrics_reader
):
    out = tmp_path / "run"
    launch = mpi_launch.run(2, ["-m", "purenn", *run_args, "--out", out])
    assert launch.code == 0, launch.err
    assert {p.name for p in tmp_path.iterdir()} == {"run"}  # one folder...
    assert {p.name for p in out.iterdir()} == RUN_FILES == {p.name for p in reference.iterdir()}
    assert launch.out.count("test accuracy:") == launch.out.count("epoch 1/3:") == 1  # rank 0's
    assert_same_training(out, reference, metrics_reader)
    config = json.loads((out / "config.json").read_text())
    assert config == {**json.loads((reference / "config.json").read_text()), "out": str(out)}


def test_killed_rank_ends_the_job_and_the_checkpoint_resumes_in_one_process(
    run_args, reference, tmp_path, metrics_reader
):
    out = tmp_path / "run"
    argv = ["-c", ON_RANK_1, "KILL@7", *run_args, "--out", out]
    launch = mpi_launch.run(2, argv, timeout=60)
    assert launch.code != 0 and launch.seconds < 30, (launch.code, launch.seconds, launch.err)
    # rank 0 cannot finish step 8 without rank 1: its last checkpoint is step 6's
    assert load_checkpoint(out / "last.ckpt.npz")[2]["loop"]["step"] == 6
    resumed = mpi_launch.run(None, ["-m", "purenn", "train", "--resume", out])
    assert resumed.code == 0, resumed.err
    assert "resuming at epoch 2, batch 1 (step 6)" in resumed.out
    assert_same_training(out, reference, metrics_reader)


def test_an_error_on_one_rank_aborts_every_rank(run_args, tmp_path):
    out = tmp_path / "run"
    argv = ["-c", ON_RANK_1, "INT@3", *run_args, "--out", out]  # rank 1 alone is interrupted
    launch = mpi_launch.run(2, argv, timeout=60)
    assert launch.code != 0 and launch.seconds < 30, (launch.code, launch.seconds, launch.err)
    assert "purenn: rank 1 of 2: TrainingInterrupted" in launch.err
    assert "aborting every rank" in launch.err
    assert load_checkpoint(out / "last.ckpt.npz")[2]["loop"]["step"] == 2


def test_one_process_checkpoint_resumes_on_two_ranks(run_args, reference, tmp_path, metrics_reader):
    out = tmp_path / "run"
    argv = ["-m", "purenn", *run_args, "--out", out]
    killed = mpi_launch.run(None, argv, env={"PURENN_TEST_SIGNAL": "KILL@7"})
    assert killed.code == -9, killed.err
    resumed = mpi_launch.run(2, ["-m", "purenn", "train", "--resume", out])
    assert resumed.code == 0, resumed.err
    assert resumed.out.count("resuming at epoch 2, batch 1 (step 6)") == 1
    assert_same_training(out, reference, metrics_reader)
