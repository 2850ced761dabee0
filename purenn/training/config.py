"""The training configuration: defaults (the seed's recipe), config files, validation.

A config file (TOML or JSON, by extension) holds a flat table of the keys of :class:`TrainConfig`;
command-line flags override it. The resolved config is saved as ``config.json`` in the run folder
and is itself a valid config file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from purenn.checks import require
from purenn.data.decode import MIN_IMAGE_SIZE
from purenn.data.folder import find_images
from purenn.inference.recognition import SCORES
from purenn.presets import PRESETS, RECIPES

OPTIMIZERS = ("adam", "adamw", "sgd")
#: The keys whose good values depend on the optimizer.
OPTIMIZER_KEYS = ("lr", "momentum", "weight_decay")
SCHEDULES = ("cosine", "step", "constant")
AUGMENTATIONS = ("standard", "geometric", "field")


class ConfigError(ValueError):
    """A bad config key or value; the message names the key (and the file, if any)."""


def _key(help_text: str, choices: tuple[str, ...] | None = None, default: Any = None) -> Any:
    return field(default=default, metadata={"help": help_text, "choices": choices})


@dataclass
class TrainConfig:
    """Everything that determines a training run; the defaults are the seed's recipe.

    Adam (0.9, 0.999, 1e-8) at lr 1e-3, cosine annealing with 2 warmup epochs stepped per batch,
    label smoothing 0.1, global gradient-norm clipping at 1.0, early stopping on validation loss
    with patience 5 (best weights restored), augmentation factor 2, He initialisation (presets).
    A preset may carry its own defaults (``purenn.presets.RECIPES``), used for the keys a config
    file or the arguments leave unset.
    """

    data_dir: str | None = _key("image folder: DATA_DIR/<class>/<image> or DATA_DIR/<split>/...")
    out: str | None = _key("run folder (default: runs/<preset>-<date>-<time>)")
    preset: str = _key("model architecture", tuple(PRESETS), default="plantvillage-cnn")
    init_from: str | None = _key(
        "start from this model file or run folder (fine-tuning) instead of the preset"
    )
    replay: str | None = _key(
        "fine-tuning: mix in a sample of this folder (the model's original training data; its "
        "training split) so its classes are not forgotten; the run keeps the model's classes"
    )
    replay_fraction: float = _key(
        "replay: replayed images per new training image (a fixed sample of that many times the "
        "new training split)",
        default=1.0,
    )
    image_size: int = _key("images are resized to IMAGE_SIZE x IMAGE_SIZE", default=128)
    epochs: int = _key("maximum number of epochs", default=30)
    batch_size: int = _key("images per training batch", default=32)
    optimizer: str = _key("optimizer", OPTIMIZERS, default="adam")
    lr: float = _key("peak learning rate", default=1e-3)
    momentum: float = _key("SGD momentum (sgd only)", default=0.9)
    weight_decay: float = _key("L2 penalty (adam, sgd) or decoupled decay (adamw)", default=0.0)
    label_smoothing: float = _key("label smoothing of the cross-entropy", default=0.1)
    clip_norm: float = _key("global gradient-norm clipping threshold; 0 disables", default=1.0)
    schedule: str = _key("learning-rate schedule, stepped per batch", SCHEDULES, default="cosine")
    warmup_epochs: float = _key(
        "linear warmup before the cosine annealing (halved run length if not shorter)",
        default=2.0,
    )
    min_lr: float = _key("final learning rate of the cosine schedule", default=0.0)
    step_epochs: float = _key("step schedule: epochs between decays", default=10.0)
    step_gamma: float = _key("step schedule: decay factor", default=0.1)
    patience: int = _key("early stopping: epochs without val-loss gain; 0 disables", default=5)
    augment_factor: int = _key("views of each training image per epoch (1 = none)", default=2)
    augment: str = _key(
        "augmentation recipe of the extra views: standard (flips, right-angle turns, brightness, "
        "contrast), geometric (flips, crops and zoom, any-angle turns, brightness) or field "
        "(field-photo conditions: the geometric recipe plus colour, blur, noise, JPEG, leaf over "
        "new backgrounds)",
        AUGMENTATIONS,
        default="standard",
    )
    augment_backgrounds: str | None = _key(
        "field recipe and replace_background: also put leaves over the photos in this folder "
        "(never the images you evaluate on)"
    )
    replace_background: float = _key(
        "probability that a training sample's background is replaced by a texture (and the "
        "photos of augment_backgrounds), on every view, the unaugmented one too: the lab's "
        "backgrounds then tell no class (PlantVillage photographed Common rust on black)",
        default=0.0,
    )
    outliers: str | None = _key(
        "outlier exposure: a folder of photos that are none of the classes "
        "(OUTLIERS/<group>/<image>, or images directly); a batch of them beside each training "
        "batch, their predictions pulled toward uniform (never the photos you evaluate on)"
    )
    ood_score: str | None = _key(
        "score of the OOD test fitted at the end (default: max_softmax with --outliers, else "
        "knn, or the preset's own)",
        SCORES,
    )
    outlier_weight: float = _key(
        "outlier exposure: weight of the cross-entropy to uniform beside the training loss",
        default=0.5,
    )
    outlier_batch_size: int | None = _key(
        "outlier exposure: outlier images per training batch (default: half of batch_size)"
    )
    weight_norm: bool = _key("weight normalization of conv and dense layers", default=False)
    val_fraction: float = _key("fraction of each class held out for validation", default=0.1)
    test_fraction: float = _key("fraction of each class held out for the test", default=0.1)
    seed: int = _key("seed of the initial weights, shuffles, augmentation and dropout", default=0)
    split_seed: int | None = _key("seed of the train/val/test split (default: the seed)")
    threads: int | None = _key("BLAS, array and image-decoding threads (default: all cores)")
    checkpoint_steps: int = _key("also checkpoint every N steps; 0: per epoch only", default=500)
    cache_dir: str | None = _key("decoded-image cache (default: ~/.cache/purenn)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


KEYS = {f.name: f for f in fields(TrainConfig)}
# Keys that may differ when a run is resumed: they do not change what is computed.
RESUMABLE_OVERRIDES = ("threads",)


def _type_name(f: dataclasses.Field) -> str:
    return str(f.type).replace(" | None", "")


def _check_type(name: str, value: Any) -> Any:
    """``value`` converted to the key's type, or ConfigError naming the key."""
    f = KEYS[name]
    kind = _type_name(f)
    if value is None and "None" in str(f.type):
        return None
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok or (kind == "float" and not math.isfinite(value)):
        raise ConfigError(
            f"{name} must be {'an' if kind == 'int' else 'a'} {kind}, received: {name}={value!r}"
        )
    if f.metadata["choices"] and value not in f.metadata["choices"]:
        raise ConfigError(
            f"{name} must be one of {', '.join(f.metadata['choices'])}, received: {name}={value!r}"
        )
    return float(value) if kind == "float" else value


def _require(ok: bool, name: str, requirement: str, value: Any) -> None:
    require(ok, name, requirement, value, ConfigError)


def validate(config: TrainConfig) -> TrainConfig:
    """Check every value's type and range; raises ConfigError naming the first bad key."""
    for name in KEYS:
        setattr(config, name, _check_type(name, getattr(config, name)))
    c = config
    _require(c.image_size >= MIN_IMAGE_SIZE, "image_size", f">= {MIN_IMAGE_SIZE}", c.image_size)
    for name in ("epochs", "batch_size", "augment_factor"):
        _require(getattr(c, name) >= 1, name, ">= 1", getattr(c, name))
    for name in ("patience", "seed", "checkpoint_steps"):
        _require(getattr(c, name) >= 0, name, ">= 0", getattr(c, name))
    if c.split_seed is None:
        c.split_seed = c.seed
    _require(c.split_seed >= 0, "split_seed", ">= 0", c.split_seed)
    _require(c.threads is None or c.threads >= 1, "threads", ">= 1", c.threads)
    _require(
        0 <= c.replace_background <= 1, "replace_background", "in [0, 1]", c.replace_background
    )
    _require(
        c.augment_backgrounds is None or c.augment == "field" or c.replace_background > 0,
        "augment_backgrounds",
        "unset unless augment is field or replace_background is above 0",
        c.augment_backgrounds,
    )
    if c.cache_dir is not None:
        cache = Path(c.cache_dir).expanduser()
        _require(not cache.exists() or cache.is_dir(), "cache_dir", "a folder", c.cache_dir)
    if c.augment_backgrounds is not None:
        folder = Path(c.augment_backgrounds).expanduser()
        _require(
            folder.is_dir() and bool(find_images(folder)),
            "augment_backgrounds",
            "a folder with image files",
            c.augment_backgrounds,
        )
    _require(c.outlier_weight >= 0, "outlier_weight", ">= 0", c.outlier_weight)
    if c.outlier_batch_size is None:
        c.outlier_batch_size = max(1, c.batch_size // 2)
    _require(c.outlier_batch_size >= 1, "outlier_batch_size", ">= 1", c.outlier_batch_size)
    _require(
        c.replay is None or c.init_from is not None,
        "replay",
        "used with init_from (the model whose training data it replays)",
        c.replay,
    )
    _require(c.replay_fraction > 0, "replay_fraction", "> 0", c.replay_fraction)
    _require(c.lr > 0, "lr", "> 0", c.lr)
    for name in ("momentum", "weight_decay", "clip_norm", "min_lr", "warmup_epochs"):
        _require(getattr(c, name) >= 0, name, ">= 0", getattr(c, name))
    _require(0 <= c.label_smoothing < 1, "label_smoothing", "in [0, 1)", c.label_smoothing)
    _require(c.min_lr <= c.lr, "min_lr", f"<= lr ({c.lr})", c.min_lr)
    _require(c.step_epochs > 0, "step_epochs", "> 0", c.step_epochs)
    _require(0 < c.step_gamma <= 1, "step_gamma", "in (0, 1]", c.step_gamma)
    for name in ("val_fraction", "test_fraction"):
        _require(0 <= getattr(c, name) < 1, name, "in [0, 1)", getattr(c, name))
    _require(
        c.val_fraction + c.test_fraction < 1,
        "val_fraction + test_fraction",
        "< 1",
        c.val_fraction + c.test_fraction,
    )
    return config


def effective_warmup(config: TrainConfig) -> float:
    """The warmup in epochs: ``warmup_epochs``, or half the run when that is not shorter.

    A warmup as long as the run would leave no annealing; short runs (``--epochs 2`` with the
    default 2-epoch warmup, ``purenn demo --epochs 1``) warm up for half their length instead.
    """
    return config.warmup_epochs if config.warmup_epochs < config.epochs else config.epochs / 2


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The flat table of a ``.toml`` or ``.json`` config file (keys not yet checked).

    Dashes in key names are read as underscores (``batch-size`` = ``batch_size``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"config file must end in .toml or .json, received: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        if suffix == ".json":
            table = json.loads(text)
        else:
            table = _toml_loads(text)
    except ValueError as err:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise ConfigError(f"cannot parse config file {path}: {err}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path} must hold a table of keys, received: {table!r}")
    return {str(key).replace("-", "_"): value for key, value in table.items()}


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError(
                "TOML config files need Python >= 3.11 or the tomli package; use a .json file"
            ) from None
    return tomllib.loads(text)


def check_keys(table: dict[str, Any], source: str) -> None:
    """Raise ConfigError for the first key of ``table`` that is not a config key."""
    for key in table:
        if key not in KEYS:
            raise ConfigError(
                f"unknown config key {key!r} in {source}; valid keys: {', '.join(KEYS)}"
            )


def _is_run_config(file: str | Path, table: dict[str, Any]) -> bool:
    """The file is the ``config.json`` that a run saved in its own folder."""
    out = table.get("out")
    if not isinstance(out, str):
        return False
    return Path(out).expanduser().resolve() == Path(file).expanduser().resolve().parent


def make_config(
    file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, updated by the config ``file`` (if any), updated by ``overrides``; validated.

    A run's saved ``config.json`` can be the ``file`` of a new run: its ``out`` (the old run's
    folder) is dropped, so the new run gets its own folder.

    Raises:
        ConfigError: unreadable file, unknown key, or a bad value (naming the key and file).
    """
    table: dict[str, Any] = {}
    if file is not None:
        table = read_config_file(file)
        check_keys(table, str(file))
        if _is_run_config(file, table):
            # A run's own config.json reused for a new run: its "out" is that run's folder.
            del table["out"]
        for key, value in table.items():
            try:
                _check_type(key, value)
            except ConfigError as err:
                raise ConfigError(f"{err} (in {file})") from None
    overrides = dict(overrides or {})
    check_keys(overrides, "the arguments")
    given = {**table, **overrides}
    preset = given.get("preset", KEYS["preset"].default)
    # The preset's own recipe replaces the seed's defaults, never a value the user gave; its
    # OOD score is for a run without outlier exposure, which picks max_softmax itself, and its
    # learning rate, momentum and weight decay are for its own optimizer only (SGD's lr 0.05
    # would wreck Adam).
    recipe = dict(RECIPES.get(preset, {})) if isinstance(preset, str) else {}
    if given.get("outliers"):
        recipe.pop("ood_score", None)
    if given.get("optimizer", recipe.get("optimizer")) != recipe.get("optimizer"):
        for key in OPTIMIZER_KEYS:
            recipe.pop(key, None)
    return validate(TrainConfig(**{**recipe, **given}))
