"""Data-parallel training: what every rank computes (in one process), and 2 ranks under mpiexec
against one process (tests/distributed_script.py)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import mpi_launch
import numpy as np
import pytest
from distributed_script import build

import purenn as pn
from purenn.data import Augmentation, DataLoader
from purenn.data.loader import shard_bounds
from purenn.distributed import communicator, group
from purenn.distributed.group import DistributedError, default_threads, launcher_size
from purenn.training.pipeline import TrainingData


@pytest.mark.parametrize("total", [0, 1, 5, 7, 32])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shard_bounds_split_a_batch_into_contiguous_near_equal_slices(total, size):
    bounds = [shard_bounds(total, rank, size) for rank in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def _images(n=11):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 3, 6, 6), dtype=np.uint8), rng.integers(0, 3, n)


@pytest.mark.parametrize("size", [2, 3])
def test_shards_of_a_batch_make_up_the_one_process_batch_augmentation_included(size):
    images, labels = _images()
    kwargs = dict(
        batch_size=7, mean=np.full(3, 0.4), std=np.full(3, 0.3), shuffle=True, seed=9,
        augmentation=Augmentation(), augment_factor=2, prefetch=False,
    )  # fmt: skip
    whole = DataLoader(images, labels, np.arange(11), **kwargs)
    shards = [
        DataLoader(images, labels, np.arange(11), shard=(r, size), **kwargs) for r in range(size)
    ]
    for epoch in (0, 1):
        parts = [list(shard.epoch(epoch)) for shard in shards]
        for b, (x, y) in enumerate(whole.epoch(epoch)):
            assert whole.global_batch_size(b) == len(y)
            np.testing.assert_array_equal(np.concatenate([p[b][0] for p in parts]), x)
            np.testing.assert_array_equal(np.concatenate([p[b][1] for p in parts]), y)
    # the last batch (22 samples = 3 x 7 + 1) leaves ranks without rows
    assert [len(p[-1][1]) for p in parts] == [0] * (size - 1) + [1]


def test_shard_is_checked():
    images, labels = _images()
    with pytest.raises(ValueError, match=r"shard rank must be in \[0, 2\), received: shard rank=2"):
        DataLoader(images, labels, np.arange(11), shard=(2, 2))


def test_dropout_keeps_its_rows_of_the_whole_batch_masks():
    x = np.ones((7, 5), dtype=np.float32)
    whole_layer = pn.Dropout(0.5, rng=1)
    whole = whole_layer.forward(x)
    parts = []
    for rank in (0, 1):
        layer = pn.Dropout(0.5, rng=1)
        start, stop = shard_bounds(7, rank, 2)
        layer.batch_part = (start, 7)
        parts.append(layer.forward(x[start:stop]))
        # every rank's generator advances as the one process's: the next masks agree too
        assert layer.rng.bit_generator.state == whole_layer.rng.bit_generator.state
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_evaluation_blocks_of_every_rank_make_up_the_split():
    images, labels = _images()
    splits = {"train": np.arange(6), "val": np.arange(6, 11), "test": np.array([], dtype=int)}
    cache = SimpleNamespace(images=images, labels=labels, class_names=["a", "b", "c"], key="k")
    data = TrainingData(cache, splits, None, None)
    blocks = [data.loader("val", 2, shard=(r, 3)).indices for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(blocks), splits["val"])
    assert data.loader("test", 2, shard=(1, 3)) is None


def test_the_training_split_in_order_for_evaluation_and_shuffled_in_shards_for_training():
    from purenn.training.config import TrainConfig

    images, labels = _images()
    splits = {"train": np.arange(9), "val": np.arange(9, 11), "test": np.array([], dtype=int)}
    cache = SimpleNamespace(images=images, labels=labels, class_names=["a", "b", "c"], key="k")
    data = TrainingData(cache, splits, np.full(3, 0.5), np.full(3, 0.25))
    in_order = [y for _, y in data.loader("train", 4).epoch(0)]
    np.testing.assert_array_equal(np.concatenate(in_order), labels[:9])
    config = TrainConfig(batch_size=4, seed=5, augment_factor=2)
    whole = list(data.train_loader(config).epoch(1))
    shards = [list(data.train_loader(config, (r, 2)).epoch(1)) for r in range(2)]
    for b, (x, _) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([shards[0][b][0], shards[1][b][0]]), x)
    trained = np.concatenate([y for _, y in whole])
    # every sample once and its augmented view once, in the seed's shuffled order
    np.testing.assert_array_equal(np.sort(trained), np.sort(np.repeat(labels[:9], 2)))
    assert not np.array_equal(trained[::2], labels[:9]) and not np.array_equal(
        trained[:9], labels[:9]
    )


def test_launcher_size_and_threads_per_rank():
    assert launcher_size({}) == 1
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert launcher_size({"PMI_SIZE": "3"}) == 3
    assert default_threads(cores=8, machine_cores=8, ranks_here=2) == 4  # unbound: a share
    assert default_threads(cores=2, machine_cores=8, ranks_here=2) == 2  # bound: its cores
    assert default_threads(cores=2, machine_cores=2, ranks_here=4) == 1


def test_one_process_uses_the_local_communicator(monkeypatch):
    monkeypatch.setattr(communicator, "_world", None)
    for name in group.SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    comm = communicator.world()
    assert (comm.rank, comm.size, comm.shard, comm.is_root) == (0, 1, (0, 1), True)
    buffer = np.arange(3.0)
    assert comm.allreduce_(buffer) is buffer and comm.allgather(5) == [5]


def test_mpiexec_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(communicator, "_world", None)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.delitem(sys.modules, "purenn.distributed.mpi", raising=False)
    with pytest.raises(DistributedError, match=r"mpiexec with 2 processes.*purenn\[mpi\]"):
        communicator.world()


# -- under mpiexec ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """tests/distributed_script.py as 2 MPI ranks and as one process: their npz files."""
    folder = tmp_path_factory.mktemp("distributed")
    script = mpi_launch.REPO / "tests" / "distributed_script.py"
    outcomes = {}
    for mode, ranks in (("run", 2), ("reference", None)):
        launch = mpi_launch.run(ranks, [script, mode, folder / f"{mode}.npz"], timeout=120)
        assert launch.code == 0, launch.err
        outcomes[mode] = np.load(folder / f"{mode}.npz")
    return outcomes


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize(
    "case, tolerance",
    [("dropout32", 1e-5), ("dropout64", 1e-12), ("graph32", 1e-5), ("graph64", 1e-12)],
)
def test_two_ranks_train_the_weights_of_one_process(runs, case, tolerance):
    run, reference = runs["run"], runs["reference"]
    assert run[f"{case}/ranks_agree"]  # the replicas stay bit-identical
    initial = build(case).state_dict()
    keys = [k for k in reference.files if k.startswith(f"{case}/") and "agree" not in k]
    assert sorted(keys) == sorted([f"{case}/{k}" for k in initial] + [f"{case}/history"])
    for key in keys:
        assert _relative(run[key], reference[key]) < tolerance, key
    # the weights moved: not a comparison of untouched arrays
    first, last = list(initial)[0], list(initial)[-2]
    for name in (first, last):
        assert _relative(run[f"{case}/{name}"], initial[name]) > 0.01, name


@pytest.mark.parametrize("case", ["bn64", "graphbn64"])
def test_batchnorm_uses_per_rank_batch_statistics_and_rank_0s_running_statistics(runs, case):
    run, reference = runs["run"], runs["reference"]
    assert run[f"{case}/ranks_agree"]
    keys = [
        k for k in run.files if k.startswith(f"{case}/") and "agree" not in k and "hist" not in k
    ]
    assert f"{case}/1.running_mean" in keys
    for key in keys:
        # equal to one process normalising each rank's half of every batch on its own...
        assert _relative(run[key], reference[key.replace(case, f"{case}-per-half")]) < 1e-12, key
    # ...which is not what one process normalising the whole batch computes
    assert _relative(run[f"{case}/0.weight"], reference[f"{case}/0.weight"]) > 1e-3
