"""A few epochs of a small CNN through the real fit loop, run by tests/test_distributed_mpi.py
under ``mpiexec -n 2`` (``run``) and as one process (``reference``).

``python tests/distributed_script.py run|reference OUT.npz``: rank 0 writes every case's final
weights (``<case>/<name>``), metrics history (``<case>/history``: val loss, train loss and
accuracy per epoch) and, under MPI, whether all ranks ended with bit-identical weights.

Cases: ``dropout32`` / ``dropout64``: a CNN with Dropout, float32 / float64, batches of 7 from
22 samples (uneven 3 + 4 slices over 2 ranks and a last batch of 1, so one rank's slice is
empty), augmentation, clipping that engages. ``graph32`` / ``graph64``: the same for a graph
model (a fan-out feeding a depthwise residual branch, an Add, a grouped 1x1 side branch and a
Concatenate, then Dropout). ``bn64`` / ``graphbn64``: the CNN and the graph with BatchNorm and
without Dropout, batches of 8. The reference adds ``bn64-per-half`` and ``graphbn64-per-half``:
one process computing each half of every batch separately (forward, backward; running
statistics of the first half only) and stepping on the scaled sum -- what 2 ranks with per-rank
BatchNorm statistics compute.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

import purenn as pn
from purenn.data import Augmentation, DataLoader
from purenn.data.loader import shard_bounds
from purenn.distributed import LocalCommunicator, world
from purenn.optim.optimizers import clip_grad_norm
from purenn.optim.schedules import Constant
from purenn.training.callbacks import EarlyStopping
from purenn.training.progress import Progress
from purenn.training.trainer import Trainer

CASES = {
    "dropout32": (np.float32, 7),
    "dropout64": (np.float64, 7),
    "bn64": (np.float64, 8),
    "graph32": (np.float32, 7),
    "graph64": (np.float64, 7),
    "graphbn64": (np.float64, 8),
}
#: The cases with BatchNorm: 2 ranks equal one process normalising each half on its own.
PER_HALF = ("bn64", "graphbn64")
EPOCHS, CLIP, SMOOTHING = 2, 0.5, 0.1


def dataset():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(19, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, size=19)
    return images, labels, np.arange(11), np.arange(11, 19)


def build(case: str) -> pn.Sequential | pn.Model:
    if case.startswith("graph"):
        return build_graph(case)
    rng = np.random.default_rng(3)
    bn = case.startswith("bn")
    layers = [pn.Conv2D(3, 4, 3, padding=1, rng=rng)]
    layers += [pn.BatchNorm2D(4)] if bn else []
    layers += [pn.ReLU(), pn.MaxPool2D(2), pn.Flatten(), pn.Dense(64, 16, rng=rng), pn.ReLU()]
    layers += [] if bn else [pn.Dropout(0.4, rng=np.random.default_rng(4))]
    layers += [pn.Dense(16, 3, init="glorot", rng=rng)]
    return pn.Sequential(layers, input_shape=(3, 8, 8)).astype(CASES[case][0])


def build_graph(case: str) -> pn.Model:
    """conv -> h; h + depthwise(h) and a grouped 1x1 of h, concatenated; pool, dense head."""
    rng = np.random.default_rng(3)
    bn = case.endswith("bn64")

    def norm(t):
        return pn.BatchNorm2D(4)(t) if bn else t

    x = pn.Input((3, 8, 8))
    h = pn.ReLU()(norm(pn.Conv2D(3, 4, 3, padding=1, rng=rng)(x)))
    residual = norm(pn.Conv2D(4, 4, 3, padding=1, groups=4, rng=rng)(h))
    side = pn.Conv2D(4, 2, 1, groups=2, rng=rng)(h)  # h feeds three nodes
    joined = pn.Concatenate(axis=1)([pn.ReLU()(pn.Add()([h, residual])), side])
    y = pn.ReLU()(pn.Dense(96, 16, rng=rng)(pn.Flatten()(pn.MaxPool2D(2)(joined))))
    if not bn:
        y = pn.Dropout(0.4, rng=np.random.default_rng(4))(y)
    return pn.Model(x, pn.Dense(16, 3, init="glorot", rng=rng)(y)).astype(CASES[case][0])


def loaders(case: str, shard: tuple[int, int]):
    images, labels, train, val = dataset()
    train_loader = DataLoader(
        images, labels, train, CASES[case][1], mean=np.full(3, 0.5), std=np.full(3, 0.25),
        shuffle=True, seed=5, augmentation=Augmentation(), augment_factor=2, shard=shard,
    )  # fmt: skip
    block = val[slice(*shard_bounds(len(val), *shard))]
    return train_loader, DataLoader(images, labels, block, 3, np.full(3, 0.5), np.full(3, 0.25))


def train(case: str, comm) -> tuple[pn.Sequential | pn.Model, list]:
    model = build(case)
    optimizer = pn.Adam(model.parameters(), lr=0.02)
    train_loader, val_loader = loaders(case, comm.shard)
    trainer = Trainer(
        model, optimizer, Constant(optimizer), pn.SoftmaxCrossEntropy(SMOOTHING), train_loader,
        val_loader, EPOCHS, CLIP, EarlyStopping(0), 0, lambda: None, lambda row, better: None,
        Progress(quiet=True), comm,
    )  # fmt: skip
    trainer.fit()
    history = [[r["val_loss"], r["train_loss"], r["train_accuracy"]] for r in trainer.state.history]
    return model, history


def train_per_half(case: str) -> pn.Sequential | pn.Model:
    """One process doing what 2 ranks with per-rank BatchNorm statistics do (no Dropout)."""
    model = build(case)
    params = model.parameters()
    optimizer = pn.Adam(params, lr=0.02)
    loss_fn = pn.SoftmaxCrossEntropy(SMOOTHING)
    train_loader, _ = loaders(case, (0, 1))
    for epoch in range(EPOCHS):
        for x, y in train_loader.epoch(epoch):
            summed = [np.zeros_like(grad) for _, grad in params]
            for rank in (0, 1):
                if rank == 1:
                    kept = {k: v.copy() for k, v in model.state_dict().items() if "running" in k}
                rows = slice(*shard_bounds(len(y), rank, 2))
                loss_fn.forward(model.forward(x[rows], training=True), y[rows])
                model.backward(loss_fn.backward(), input_grad=False)
                for acc, (_, grad) in zip(summed, params, strict=True):
                    acc += grad * ((rows.stop - rows.start) / len(y))
            model.load_state_dict({**model.state_dict(), **kept})  # rank 0's running stats
            for acc, (_, grad) in zip(summed, params, strict=True):
                grad[...] = acc
            clip_grad_norm(params, CLIP)
            optimizer.step()
    return model


def main(mode: str, out: str) -> None:
    comm = world() if mode == "run" else LocalCommunicator()
    arrays = {}
    for case in CASES:
        model, history = train(case, comm)
        state = model.state_dict()
        arrays.update({f"{case}/{k}": v for k, v in state.items()})
        arrays[f"{case}/history"] = np.array(history)
        digest = hashlib.sha256(b"".join(state[k].tobytes() for k in sorted(state))).hexdigest()
        arrays[f"{case}/ranks_agree"] = np.array(len(set(comm.allgather(digest))) == 1)
    if mode == "reference":
        for case in PER_HALF:
            state = train_per_half(case).state_dict()
            arrays.update({f"{case}-per-half/{k}": v for k, v in state.items()})
    if comm.is_root:
        np.savez(out, **arrays)
        print(json.dumps({"ranks": comm.size, "cases": list(CASES)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
