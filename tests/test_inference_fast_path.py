"""The eval-mode fast path (purenn.nn.inference) gives what the layers' own forward gives.

The reference is the layers' evaluation-mode forward (``forward(x, training=False,
for_backward=True)``: Dropout off, BatchNorm on its running statistics), to 1e-5 relative in
float32 and 1e-12 in float64, for every layer type, the fused patterns, both presets and graphs.
"""

from __future__ import annotations

import numpy as np
import pytest

import purenn as pn
from purenn.kernels import banded, channels_last, winograd_channels_last
from purenn.kernels.parallel import set_num_threads
from purenn.nn.layers import LAYER_TYPES
from purenn.presets import build_preset

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


def _randomise_statistics(model, seed: int = 0) -> None:
    """Non-zero biases, and BatchNorm with non-trivial running statistics and affine
    parameters (signs mixed)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if "bias" in layer.params:
            layer.params["bias"][:] = rng.normal(0, 0.3, layer.params["bias"].shape)
        if "running_mean" in layer.buffers:
            c = len(layer.buffers["running_mean"])
            layer.buffers["running_mean"][:] = rng.normal(0, 0.3, c)
            layer.buffers["running_var"][:] = rng.uniform(0.2, 2.0, c)
            layer.params["weight"][:] = rng.normal(0, 1.0, c)
            layer.params["bias"][:] = rng.normal(0, 0.3, c)


def assert_fast_path_matches(model, x: np.ndarray, label: str = "") -> None:
    _randomise_statistics(model)
    reference = model.forward(x, training=False, for_backward=True)
    fast = model.eval()(x)
    scale = max(float(np.abs(reference).max()), 1e-30)
    error = float(np.abs(fast - reference).max()) / scale
    assert fast.shape == reference.shape and fast.dtype == reference.dtype
    assert error <= TOLERANCE[x.dtype.type], (label, error)


def _stack(layers, shape):
    return pn.Sequential(layers, input_shape=shape)


def _models(dtype):
    """(name, model, per-sample input shape, covered layer types) for each case."""
    d = {"dtype": dtype}
    conv = lambda c, o, k=3, **kw: pn.Conv2D(c, o, k, rng=1, **d, **kw)  # noqa: E731
    dense = lambda i, o, **kw: pn.Dense(i, o, rng=2, **d, **kw)  # noqa: E731

    def residual():
        x = pn.Input((4, 9, 9))
        h = pn.ReLU()(pn.BatchNorm2D(6, **d)(conv(4, 6, padding=1)(x)))
        branch = pn.BatchNorm2D(6, **d)(conv(6, 6, padding=1, groups=3)(h))
        side = conv(6, 6, padding=1, groups=6)(h)  # h fans out: computed on its own
        y = pn.ReLU()(pn.Add()([branch, h, side]))
        both = pn.Concatenate(axis=1)([pn.AvgPool2D(2)(y), pn.MaxPool2D(3, 2)(pn.Sigmoid()(h))])
        return pn.Model(x, pn.Dense(192, 5, rng=3, **d)(pn.Flatten()(both)))

    yield "residual graph", residual(), (4, 9, 9), {"Add", "Concatenate", "AvgPool2D"}
    yield (
        "conv-bn-relu-pool and friends",
        _stack(
            [
                conv(3, 8, padding=1, bias=False),
                pn.BatchNorm2D(8, **d),
                pn.ReLU(),
                pn.MaxPool2D(2),
                conv(8, 8, padding=1, weight_norm=True),
                pn.MaxPool2D(2),
                pn.ReLU(),
                conv(8, 6, 5, stride=2, padding=2),
                pn.BatchNorm2D(6, **d),
                pn.LeakyReLU(0.1),
                conv(6, 6, padding=1, algorithm="winograd"),
                pn.ReLU(),
                pn.MaxPool2D(2),
                pn.GlobalAvgPool2D(),
                dense(6, 7, weight_norm=True),
                pn.BatchNorm1D(7, **d),
                pn.ReLU(),
                pn.Dropout(0.5, rng=0),
                dense(7, 6),
                pn.Tanh(),
                pn.Softmax(),
            ],
            (3, 19, 19),
        ),
        (3, 19, 19),
        {"Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "LeakyReLU", "GlobalAvgPool2D", "Dense"}
        | {"BatchNorm1D", "Dropout", "Tanh", "Softmax"},
    )
    yield (
        "flatten, pooling with odd borders, standalone BatchNorm",
        _stack(
            [
                pn.BatchNorm2D(3, **d),
                pn.ReLU(),
                conv(3, 4, 3),
                pn.MaxPool2D(2),
                pn.Flatten(),
                pn.Sigmoid(),
                dense(4 * 3 * 3, 3, bias=False),
            ],
            (3, 9, 9),
        ),
        (3, 9, 9),
        {"Flatten", "Sigmoid"},
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_layer_type_and_fused_pattern_matches_the_layers_forward(dtype):
    covered = set()
    for name, model, shape, types in _models(dtype):
        x = np.random.default_rng(1).standard_normal((5, *shape)).astype(dtype)
        assert_fast_path_matches(model, x, name)
        covered |= types
    assert covered == set(LAYER_TYPES)


@pytest.mark.parametrize("preset", ["plantvillage-cnn", "plantvillage-resnet"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_presets_match_the_layers_forward(preset, dtype):
    model = build_preset(preset, num_classes=34, image_size=64, seed=0).astype(dtype)
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(dtype)
    assert_fast_path_matches(model, x)


def test_the_presets_are_fused_into_few_steps():
    cnn = build_preset("plantvillage-cnn", num_classes=34, image_size=64, seed=0).eval()
    cnn(np.zeros((1, 3, 64, 64), np.float32))
    # four conv+ReLU+pool steps, Flatten, Dense+ReLU+Dropout, Dense
    assert [len(step.layers) for step in cnn.inference_plan().steps] == [3, 3, 3, 3, 1, 3, 1]
    resnet = build_preset("plantvillage-resnet", num_classes=34, image_size=64, seed=0).eval()
    resnet(np.zeros((1, 3, 64, 64), np.float32))
    fused = [
        [type(resnet.layers[k]).__name__ for k in step.layers]
        for step in resnet.inference_plan().steps
    ]
    assert fused[0] == ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D"]
    assert fused.count(["Add", "ReLU"]) == 4
    assert ["BatchNorm2D"] not in fused


CASES = ("n", "c", "o", "side", "stride", "pad", "groups", "relu", "pool", "whole_samples")
#: the last flag: whether the channels-first kernel takes bands of whole samples
KERNEL_CASES = [
    (11, 8, 6, 4, 1, 1, 1, True, False, True),  # 4x4 maps
    (9, 6, 6, 5, 1, 1, 3, False, True, True),  # grouped, an odd map pooled to 2x2
    (7, 4, 8, 8, 2, 0, 1, True, True, True),  # strided, unpadded
    (3, 3, 4, 24, 1, 1, 1, True, True, False),  # a larger map
    (2, 4, 4, 9, 2, 1, 4, False, False, False),  # depthwise, one image split in rows
]


def _convolution_relu_pooling(x, weight, bias, stride, pad, groups, relu, pool):
    """The loop convolution, ReLU and 2x2 pooling, written from the definition (float64)."""
    from naive_conv import naive_conv2d

    o, ci = len(weight), x.shape[1] // groups
    co = o // groups  # each group: its own input and output channels
    y = np.concatenate(
        [
            naive_conv2d(
                x[:, g * ci : (g + 1) * ci],
                weight[g * co : (g + 1) * co],
                bias[g * co : (g + 1) * co],
                (stride, stride),
                (pad,) * 4,
            )
            for g in range(groups)
        ],
        axis=1,
    )
    if relu:
        y = np.maximum(y, 0)
    if pool:
        h, w = y.shape[2] // 2 * 2, y.shape[3] // 2 * 2
        y = y[:, :, :h, :w].reshape(len(x), o, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    return y


def _kernel_case(n, c, o, side, groups, seed=7):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, c, side, side)),
        rng.standard_normal((o, c // groups, 3, 3)),
        rng.standard_normal(o),
    )


@pytest.mark.parametrize(CASES, KERNEL_CASES)
def test_the_banded_kernel_is_the_convolution(
    n, c, o, side, stride, pad, groups, relu, pool, whole_samples
):
    """Conv2D's forward kernel (channels-first; no ReLU or pooling of its own), both band
    shapes (rows of a sample; several whole samples of a small map, remainder included),
    against the definition."""
    x, weight, bias = _kernel_case(n, c, o, side, groups)
    expected = _convolution_relu_pooling(x, weight, bias, stride, pad, groups, False, False)
    out_side = (side + 2 * pad - 3) // stride + 1
    group = banded.samples_per_band(c * 9 + o, out_side**2, n, 8)
    assert (group > 1) == whole_samples and group < n
    y = banded.conv2d(x, weight, bias, (stride,) * 2, (pad,) * 4, groups)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(CASES, KERNEL_CASES)
@pytest.mark.parametrize(
    ("band_bytes", "least_parallel_flops"),
    [(1 << 12, 0), (1 << 22, 0), (1 << 22, 1 << 40)],
    ids=["bands of a few rows", "bands for the threads", "one band"],
)
def test_the_channels_last_kernel_is_the_convolution_then_relu_then_pooling(
    n, c, o, side, stride, pad, groups, relu, pool, whole_samples, band_bytes,
    least_parallel_flops, monkeypatch,
):  # fmt: skip
    """From a channels-last and from a channels-first input, against the definition."""
    monkeypatch.setattr(channels_last, "BAND_BYTES", band_bytes)
    monkeypatch.setattr(channels_last, "MIN_PARALLEL_FLOPS", least_parallel_flops)
    x, weight, bias = _kernel_case(n, c, o, side, groups)
    expected = _convolution_relu_pooling(x, weight, bias, stride, pad, groups, relu, pool)
    for channels_last_input in (True, False):
        given = channels_last.to_channels_last(x) if channels_last_input else x
        matrix = channels_last.weight_matrix(weight, groups, channels_last_input)
        geometry = ((3, 3), (stride,) * 2, (pad,) * 4)
        y = channels_last.conv2d(given, matrix, bias, *geometry, relu, pool, channels_last_input)
        np.testing.assert_allclose(
            channels_last.to_channels_first(y), expected, rtol=1e-12, atol=1e-12
        )


WINOGRAD_CASES = [
    (5, 3, 4, 4, True, False),  # 4x4 maps, several samples a band
    (3, 4, 6, 8, False, True),  # pooled
    (2, 6, 5, 12, True, True),  # a larger map, pooled after the ReLU
    (1, 2, 3, 2, False, False),  # a single tile
]


@pytest.mark.parametrize(("n", "c", "o", "side", "relu", "pool"), WINOGRAD_CASES)
@pytest.mark.parametrize(
    ("band_bytes", "least_parallel_flops"),
    [(1 << 10, 0), (1 << 22, 0), (1 << 22, 1 << 40)],
    ids=["bands of a tile row", "bands for the threads", "one band"],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_channels_last_winograd_kernel_is_the_convolution_then_relu_then_pooling(
    n, c, o, side, relu, pool, band_bytes, least_parallel_flops, with_bias, monkeypatch
):
    """F(2x2, 3x3) with the bias in the transformed domain, against the definition (float64)."""
    monkeypatch.setattr(channels_last, "BAND_BYTES", band_bytes)
    monkeypatch.setattr(winograd_channels_last, "MIN_PARALLEL_FLOPS", least_parallel_flops)
    x, weight, bias = _kernel_case(n, c, o, side, 1)
    bias = bias if with_bias else np.zeros(o)
    expected = _convolution_relu_pooling(x, weight, bias, 1, 1, 1, relu, pool)
    y = winograd_channels_last.conv3x3(
        channels_last.to_channels_last(x),
        winograd_channels_last.filter_matrices(weight),
        bias if with_bias else None,
        relu,
        pool,
    )
    np.testing.assert_allclose(channels_last.to_channels_first(y), expected, rtol=1e-12, atol=1e-12)


def test_the_plan_runs_winograd_where_it_pays_and_matches_the_layers(monkeypatch):
    """A 3x3 layer with many channels on a map of enough tiles goes through Winograd (and
    nowhere else); the plan's output still equals the layers' forward."""
    calls = []
    kernel = winograd_channels_last.conv3x3

    def counted(x, *args):
        calls.append(x.shape)
        return kernel(x, *args)

    monkeypatch.setattr(winograd_channels_last, "conv3x3", counted)
    model = pn.Sequential(
        [
            pn.Conv2D(3, 96, 3, padding=1),
            pn.ReLU(),
            pn.Conv2D(96, 96, 3, padding=1),  # C*O/(C+O) = 48: Winograd
            pn.BatchNorm2D(96),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Conv2D(96, 96, 3, padding=1, stride=2),  # strided: im2col
            pn.Conv2D(96, 8, 3, padding=1),  # few output channels: im2col
            pn.Flatten(),
        ],
        input_shape=(3, 16, 16),
    ).astype(np.float64)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16))  # 2 x 64 tiles: 128
    assert_fast_path_matches(model, x)
    assert calls == [(2, 16, 16, 96)]
    calls.clear()
    model(x[:1])  # 64 tiles: too few
    assert calls == []


def test_the_channels_last_bands(monkeypatch):
    """(rows, samples) per band: under BAND_BYTES, at least one per core when split over the
    threads (here 2 cores)."""
    monkeypatch.setattr(channels_last, "available_cores", lambda: 2)
    float32 = 4
    # plantvillage-resnet's 32x32 layer at batch 32 (K + O = 320): three samples fit, but
    # 11 bands of 3 would give one core 18 samples; 16 bands of 2 give each 16
    assert channels_last.bands(320, 32, 32, 32, float32, False, True) == (32, 2)
    # its 4x4 layer (K + O = 2560): 16 samples per band, one band per core
    assert channels_last.bands(2560, 4, 4, 32, float32, False, True) == (4, 16)
    # the CNN's first layer for one image: a band of 64 rows per core, or one band in one thread
    assert channels_last.bands(59, 128, 128, 1, float32, True, True) == (64, 1)
    assert channels_last.bands(59, 128, 128, 1, float32, True, False) == (128, 1)
    # a sample larger than BAND_BYTES is cut into bands of rows, an even count when pooled
    # (up to one row more than fits)
    rows, samples = channels_last.bands(59, 128, 128, 32, 8, True, True)
    assert samples == 1 and rows % 2 == 0 and rows < 128
    assert (rows - 1) * 128 * 59 * 8 <= channels_last.BAND_BYTES < (rows + 1) * 128 * 59 * 8


def test_the_result_does_not_depend_on_the_thread_count():
    model = build_preset("plantvillage-resnet", num_classes=5, image_size=32, seed=0).eval()
    for batch in (1, 6):
        x = np.random.default_rng(3).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        outputs = []
        for threads in (1, 2):
            set_num_threads(threads)
            try:
                outputs.append(model(x))
            finally:
                set_num_threads(None)
        np.testing.assert_array_equal(outputs[0], outputs[1])


def _train_steps(model, x, y, optimizer, steps: int, infer_between: bool) -> None:
    for _ in range(steps):
        loss = pn.losses.SoftmaxCrossEntropy()
        loss.forward(model.train()(x), y)
        model.backward(loss.backward())
        optimizer.step()
        if infer_between:
            model.eval()(x)


def test_folding_leaves_the_parameters_alone_and_training_continues_after_inference():
    x = np.random.default_rng(4).standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    runs = []
    for infer_between in (False, True):
        model = build_preset("plantvillage-resnet", num_classes=3, image_size=32, seed=0)
        optimizer = pn.Adam(model.parameters(), lr=1e-2)
        before = model.state_dict()
        model.eval()(x)
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(value, before[key])
        _train_steps(model, x, y, optimizer, 3, infer_between)
        runs.append(model)
    for key, value in runs[0].state_dict().items():
        np.testing.assert_array_equal(value, runs[1].state_dict()[key])
    # the plan was rebuilt from the trained weights, not kept from before training
    fresh = runs[1].eval()(x)
    np.testing.assert_allclose(
        fresh, runs[1].forward(x, training=False, for_backward=True), rtol=1e-5, atol=1e-6
    )


def test_backward_after_a_fast_path_forward_is_refused_clearly():
    model = build_preset("demo-cnn", num_classes=3, image_size=8, in_channels=1, seed=0).eval()
    logits = model(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(RuntimeError, match="for_backward=True"):
        model.backward(np.ones_like(logits))
    logits = model.forward(np.zeros((2, 1, 8, 8), np.float32), for_backward=True)
    assert model.backward(np.ones_like(logits)).shape == (2, 1, 8, 8)
