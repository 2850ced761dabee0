"""TrainConfig: the seed's recipe as defaults, config files, overrides and validation."""

from __future__ import annotations

import json

import pytest

from purenn.presets import build_preset
from purenn.training import ConfigError, TrainConfig, make_config
from purenn.training.config import KEYS
from purenn.training.fit import make_optimizer, make_schedule


def test_defaults_are_the_seed_recipe():
    c = make_config()
    assert (c.optimizer, c.lr, c.batch_size) == ("adam", 1e-3, 32)
    assert (c.schedule, c.warmup_epochs) == ("cosine", 2.0)
    assert (c.label_smoothing, c.clip_norm, c.patience, c.augment_factor) == (0.1, 1.0, 5, 2)
    assert (c.weight_decay, c.weight_norm) == (0.0, False)
    optimizer = make_optimizer(c, build_preset("demo-cnn", num_classes=3, image_size=8))
    assert (optimizer.betas, optimizer.eps) == ((0.9, 0.999), 1e-8)


def test_toml_and_json_files_give_the_same_config(tmp_path):
    (tmp_path / "a.toml").write_text(
        'epochs = 7\nlr = 0.01\noptimizer = "sgd"\nweight-norm = true\n'
    )
    (tmp_path / "a.json").write_text(
        json.dumps({"epochs": 7, "lr": 0.01, "optimizer": "sgd", "weight_norm": True})
    )
    toml, js = make_config(tmp_path / "a.toml"), make_config(tmp_path / "a.json")
    assert toml == js
    assert (toml.epochs, toml.lr, toml.optimizer, toml.weight_norm) == (7, 0.01, "sgd", True)


def test_overrides_win_over_the_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"epochs": 7, "seed": 3, "warmup_epochs": 1}))
    c = make_config(tmp_path / "a.json", {"epochs": 2})
    assert (c.epochs, c.seed) == (2, 3)


def test_a_preset_carries_its_recipe_and_what_the_user_gives_wins(tmp_path):
    resnet = make_config(overrides={"preset": "plantvillage-resnet"})
    assert (resnet.epochs, resnet.patience) == (30, 0)
    assert (resnet.optimizer, resnet.lr, resnet.momentum, resnet.weight_decay) == (
        "sgd",
        0.05,
        0.9,
        5e-4,
    )
    # another optimizer drops the preset's optimizer settings, not its other keys
    with_adam = make_config(overrides={"preset": "plantvillage-resnet", "optimizer": "adam"})
    assert (with_adam.lr, with_adam.weight_decay, with_adam.epochs) == (1e-3, 0.0, 30)
    with_sgd = make_config(overrides={"preset": "plantvillage-resnet", "optimizer": "sgd"})
    assert (with_sgd.lr, with_sgd.weight_decay) == (0.05, 5e-4)
    assert (make_config().optimizer, make_config().lr) == ("adam", 1e-3)
    assert resnet.ood_score == "mahalanobis" and make_config().ood_score is None
    exposed = make_config(overrides={"preset": "plantvillage-resnet", "outliers": "not-leaves"})
    assert exposed.ood_score is None  # outlier exposure picks max_softmax itself
    assert make_config(overrides={"preset": "plantvillage-resnet", "patience": 3}).patience == 3
    (tmp_path / "a.json").write_text(json.dumps({"preset": "plantvillage-resnet", "epochs": 4}))
    from_file = make_config(tmp_path / "a.json")
    assert (from_file.epochs, from_file.patience) == (4, 0)
    assert (make_config().epochs, make_config().patience) == (30, 5)  # the seed's recipe


def test_a_value_fixed_by_an_override_is_not_an_error_in_the_file(tmp_path):
    """Cross-key checks run on the merged config: the file alone may not satisfy them."""
    (tmp_path / "a.json").write_text(json.dumps({"min_lr": 0.01}))
    assert make_config(tmp_path / "a.json", {"lr": 0.1}).min_lr == 0.01
    with pytest.raises(ConfigError, match="min_lr must be <= lr"):
        make_config(tmp_path / "a.json")


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown config key 'epoch' in the arguments") as err:
        make_config(overrides={"epoch": 3})
    assert all(key in str(err.value) for key in KEYS)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", 2.5, "epochs must be an int"),
        ("epochs", True, "epochs must be an int"),
        ("lr", "fast", "lr must be a float"),
        ("lr", float("nan"), "lr must be a float"),
        ("weight_norm", 1, "weight_norm must be a bool"),
        ("optimizer", "rmsprop", "optimizer must be one of adam, adamw, sgd"),
        ("schedule", "linear", "schedule must be one of cosine, step, constant"),
        ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\)"),
        ("threads", 0, "threads must be >= 1"),
        ("split_seed", -1, "split_seed must be >= 0"),
        ("test_fraction", 1.0, r"test_fraction must be in \[0, 1\)"),
        ("min_lr", 1.0, r"min_lr must be <= lr \(0.001\)"),
        ("step_gamma", 0.0, r"step_gamma must be in \(0, 1\]"),
    ],
)
def test_bad_values_name_the_key_and_value(key, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config(overrides={"epochs": 3, key: value})


def test_split_seed_defaults_to_the_seed():
    assert make_config(overrides={"seed": 3}).split_seed == 3
    assert make_config(overrides={"seed": 3, "split_seed": 0}).split_seed == 0


def test_ints_are_accepted_for_floats_and_stored_as_floats():
    c = make_config(overrides={"lr": 1, "warmup_epochs": 0})
    assert c.lr == 1.0 and isinstance(c.lr, float)


def test_resolved_config_is_json_round_trippable(tmp_path):
    c = make_config(overrides={"data_dir": "/data", "threads": 2})
    (tmp_path / "config.json").write_text(json.dumps(c.to_dict()))
    assert make_config(tmp_path / "config.json") == c
    assert TrainConfig(**c.to_dict()) == c


@pytest.mark.parametrize(
    ("overrides", "lrs"),
    [
        # 4 steps per epoch: warmup over 2 epochs from 0, then a cosine over the other 2.
        ({"schedule": "cosine", "warmup_epochs": 2.0, "epochs": 4}, [0.0, 0.125, 0.5, 0.875, 1.0]),
        (
            {"schedule": "step", "step_epochs": 0.5, "step_gamma": 0.5},
            [1.0, 1.0, 0.25, 0.125, 0.0625],
        ),
        ({"schedule": "constant"}, [1.0] * 5),
    ],
)
def test_schedules_are_stepped_per_batch_with_epochs_converted(overrides, lrs):
    c = make_config(overrides={"lr": 1.0, **overrides})
    optimizer = make_optimizer(c, build_preset("demo-cnn", num_classes=3, image_size=8))
    schedule = make_schedule(c, optimizer, steps_per_epoch=4)
    assert [schedule.lr_at(step) for step in (0, 1, 4, 7, 8)] == pytest.approx(lrs)


def test_the_augmentation_recipe_is_a_config_key_and_a_flag(tmp_path):
    from purenn.cli.main import build_parser
    from purenn.data import Augmentation, FieldAugmentation
    from purenn.training.pipeline import make_augmentation

    assert make_config().augment == "standard"  # the default stays the lab recipe
    args = build_parser().parse_args(["train", "data", "--augment", "field"])
    config = make_config(overrides={"augment": args.augment})
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(config.to_dict()))
    assert json.loads(saved.read_text())["augment"] == "field"
    assert make_config(saved).augment == "field"
    assert isinstance(make_augmentation("standard"), Augmentation)
    assert make_augmentation("field", str(tmp_path)) == FieldAugmentation(
        background_dir=str(tmp_path)
    )
    geometric = make_augmentation("geometric")
    assert [piece for piece in FieldAugmentation.PIECES if getattr(geometric, piece)] == [
        "hflip",
        "crop",
        "rotate",
        "brightness",
    ]
    with pytest.raises(ConfigError, match="augment must be one of standard, geometric, field"):
        make_config(overrides={"augment": "fancy"})
    with pytest.raises(ConfigError, match="augment_backgrounds must be unset unless augment"):
        make_config(overrides={"augment_backgrounds": str(tmp_path)})


def test_replace_background_is_a_probability_and_takes_the_backgrounds_folder(tmp_path):
    from PIL import Image

    from purenn.data import FieldAugmentation
    from purenn.training.pipeline import make_backdrop

    Image.new("RGB", (8, 8), (90, 60, 30)).save(tmp_path / "soil.png")
    config = make_config(
        overrides={"replace_background": 0.5, "augment_backgrounds": str(tmp_path)}
    )
    backdrop = make_backdrop(config.replace_background, config.augment_backgrounds)
    assert [piece for piece in FieldAugmentation.PIECES if getattr(backdrop, piece)] == [
        "background"
    ]
    assert backdrop.background == 0.5 and backdrop.background_dir == str(tmp_path)
    assert make_backdrop(make_config().replace_background) is None
    with pytest.raises(ConfigError, match=r"replace_background must be in \[0, 1\]"):
        make_config(overrides={"replace_background": 1.5})
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing", tmp_path / "soil.png"):
        with pytest.raises(ConfigError, match="augment_backgrounds must be a folder with image"):
            make_config(overrides={"replace_background": 1, "augment_backgrounds": str(folder)})
