"""The model a run starts from: a preset, a saved model (fine-tuning), or the user's own.

A run that does not start from a preset keeps its starting model in the run folder as
``init.npz`` (architecture and initial weights), so that ``resume`` can rebuild it exactly and
every model file of the run is self-describing (``predict`` needs nothing else).

Fine-tuning (``init_from``): the saved model's architecture and weights are the start. When its
classes differ from the data's, its last Dense layer is replaced by a fresh one with one output
per class (Glorot initialisation from the run's seed); the header says so. A graph model keeps
its topology and every other layer (BatchNorm running statistics included). The normalisation
statistics are those of the new training split, except with ``replay``: then the run keeps the
model's classes whatever the data's (:mod:`purenn.training.replay`) and its statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from purenn.data import DataError
from purenn.io import load_model, model_file
from purenn.nn.layers import Dense
from purenn.nn.sequential import Sequential
from purenn.presets import build_preset
from purenn.training.config import ConfigError, TrainConfig


@dataclass
class Start:
    """The initial model of a run and how to describe it.

    Attributes:
        model: the model, in training mode, with its Dropout generators seeded by the run.
        name: what the header and model files call it (the preset, or the source's preset).
        note: one line for the run header saying where the weights come from ("" for a preset).
        from_preset: built by ``build_preset`` from the config (no ``init.npz`` needed).
        class_names: the run's classes (the model's outputs, in order).
        source: what a replay run needs of the saved model it starts from (``SOURCE_KEYS`` of
            its metadata; {} otherwise); ``init.npz`` keeps it for ``resume``.
    """

    model: Sequential
    name: str | None
    note: str
    from_preset: bool
    class_names: list[str]
    source: dict = field(default_factory=dict)


# What a replay run keeps of the metadata of the model it fine-tunes: the folder and split it
# was trained on (the replayed images and the original test split) and its statistics.
SOURCE_KEYS = ("data_dir", "split", "mean", "std")


def _seed_dropout(model: Sequential, seed: int) -> Sequential:
    """Give every random layer (Dropout) a generator drawn from the run's seed and its index."""
    for index, layer in enumerate(model.layers):
        if hasattr(layer, "rng"):
            layer.rng = np.random.default_rng([seed, index])
    return model


def _check_input(model: Sequential, image_size: int, source: str) -> list[tuple[int, ...]]:
    """The per-layer output shapes for (3, S, S) images; ConfigError when they do not fit."""
    expected = (3, image_size, image_size)
    if model.input_shape is not None and tuple(model.input_shape) != expected:
        raise ConfigError(
            f"{source} takes inputs of shape {tuple(model.input_shape)}, but the run feeds "
            f"{expected} images (RGB at image_size {image_size}); set image_size "
            f"{model.input_shape[-1]}" + ("" if model.input_shape[0] == 3 else " and RGB input")
        )
    try:
        return model.output_shapes(expected)
    except ValueError as err:
        raise ConfigError(f"{source} does not accept {expected} images: {err}") from None


def _replace_head(model: Sequential, num_classes: int, seed: int, source: str) -> Sequential:
    """``model`` with its last Dense layer replaced by a fresh one of ``num_classes`` outputs.

    Sequential or graph: the Dense must be the output layer, only layers without parameters
    after it, and (in a graph) on every path to the output, not one of several heads.
    """
    dense = [i for i, layer in enumerate(model.layers) if isinstance(layer, Dense)]
    after = [layer for layer in model.layers[dense[-1] + 1 :] if layer.params] if dense else []
    if not dense or after or not model.dominating()[dense[-1]]:
        raise ConfigError(
            f"{source} has other classes than the data, and its output layer is not a Dense "
            "layer that could be replaced"
            + (" (every path to the output must pass through it)" if dense and not after else "")
        )
    old = model.layers[dense[-1]]
    config = old.get_config()
    head = Dense(
        old.in_features,
        num_classes,
        bias=config["bias"],
        init="glorot",
        weight_norm=config["weight_norm"],
        rng=np.random.default_rng(seed),
        dtype=config["dtype"],
    )
    layers = [*model.layers[: dense[-1]], head, *model.layers[dense[-1] + 1 :]]
    return model.with_layers(layers)


def from_model(
    model: Sequential,
    meta: dict,
    config: TrainConfig,
    class_names: list[str],
    source: str,
) -> Start:
    """Start from ``model`` (saved or the user's), checked against the data and image size.

    ``meta`` is the saved file's metadata ({} for a user's model): with ``class_names`` in it
    that differ from ``class_names``, the output layer is replaced; without, the model must
    already have one output per class.
    """
    shapes = _check_input(model, config.image_size, source)
    note = f"weights from {source}"
    saved_classes = meta.get("class_names")
    kept = {}
    if config.replay is not None:
        if saved_classes is None:
            raise ConfigError(
                f"replay keeps the classes of the model it fine-tunes, and {source} names none"
            )
        class_names = list(saved_classes)  # the data's classes are mapped onto these
        kept = {key: meta[key] for key in SOURCE_KEYS if key in meta}
    if saved_classes is not None and list(saved_classes) != list(class_names):
        model = _replace_head(model, len(class_names), config.seed, source)
        note += (
            f"; output layer replaced ({len(saved_classes)} -> {len(class_names)} classes: "
            "the classes differ), freshly initialised"
        )
    elif shapes[-1] != (len(class_names),):
        raise ConfigError(
            f"{source} outputs {shapes[-1]} per image, but the data has {len(class_names)} "
            f"classes: its last layer needs {len(class_names)} outputs"
        )
    if model.input_shape is None:
        model.input_shape = (3, config.image_size, config.image_size)
    model = _seed_dropout(model, config.seed).train()
    return Start(model, meta.get("preset"), note, False, list(class_names), kept)


def initial_model(
    config: TrainConfig,
    class_names: list[str],
    model: Sequential | None = None,
    init_file: Path | None = None,
) -> Start:
    """The model a run starts from, in this order of precedence.

    Args:
        config: the run's config (``preset``, ``image_size``, ``seed``, ``init_from``).
        class_names: the data's classes (with ``config.replay``, the run takes the saved
            model's instead).
        model: the user's own Sequential (``train(config, model=...)``).
        init_file: a run folder's ``init.npz``, when it exists (resume rebuilds from it).

    Raises:
        ConfigError: the model does not fit the images or classes. ModelFileError: a bad file.
    """
    if len(class_names) < 2:
        raise DataError(
            f"only one class ({class_names[0]!r}) in {config.data_dir}: a classifier needs two "
            "or more class folders (DATA_DIR/<class>/<image>); is DATA_DIR one level too deep?"
        )
    if init_file is not None:
        saved, meta = load_model(init_file)
        return Start(
            _seed_dropout(saved, config.seed).train(),
            meta.get("preset"),
            meta.get("note", f"weights from {init_file}"),
            False,
            list(meta["class_names"]),
            meta.get("source", {}),
        )
    if model is not None:
        if config.init_from is not None:
            raise ConfigError(
                f"init_from ({config.init_from}) and a model of your own exclude each other"
            )
        return from_model(model, {}, config, class_names, "your Sequential")
    if config.init_from is not None:
        path = model_file(config.init_from, "init_from")
        saved, meta = load_model(path)
        return from_model(saved, meta, config, class_names, str(path))
    built = build_preset(
        config.preset,
        num_classes=len(class_names),
        image_size=config.image_size,
        seed=config.seed,
        weight_norm=config.weight_norm,
    )
    return Start(built, config.preset, "", True, list(class_names))
