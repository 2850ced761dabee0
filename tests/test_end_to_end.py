"""A small CNN trained 20 Adam steps in purenn and in PyTorch from the same weights and batches."""

from __future__ import annotations

import numpy as np
import pytest
from small_models import two_conv_cnn

import purenn as pn


def test_small_cnn_training_matches_torch_step_by_step():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = two_conv_cnn(5, 16, rng)
    reference = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 5),
    )
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    optimizer = pn.Adam(model.parameters(), lr=3e-3)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=3e-3)
    loss_fn = pn.SoftmaxCrossEntropy(label_smoothing=0.1)

    # A learnable task: the class is the brightest of five image regions.
    losses = []
    for _ in range(20):
        x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
        labels = rng.integers(0, 5, 16)
        x[np.arange(16), :, labels * 3, :] += 2.0
        loss = loss_fn.forward(model.forward(x, training=True), labels)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

        reference_optimizer.zero_grad()
        expected = nn.functional.cross_entropy(
            reference(torch.from_numpy(x)), torch.from_numpy(labels), label_smoothing=0.1
        )
        expected.backward()
        reference_optimizer.step()
        losses.append(loss)
        assert abs(loss - expected.item()) < 1e-4, f"step {len(losses)}: {loss} vs {expected}"
    assert losses[-1] < losses[0] - 0.3  # it actually learned, so the steps were not trivial
