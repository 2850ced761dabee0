"""Reports that stay readable at 34 classes: short labels, the most confused pairs, the plot."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from purenn.training.labels import short_label, short_labels
from purenn.training.metrics import classification_report, confused_pairs, format_report
from purenn.training.plots import plot_confusion

# The 34 class folders of ../shared/data/plantvillage34 (written out: the test needs no data).
PLANTVILLAGE34 = [
    "Apple___Apple_scab", "Apple___Black_rot", "Apple___Cedar_apple_rust", "Apple___healthy",
    "Blueberry___healthy", "Cherry_(including_sour)___Powdery_mildew",
    "Cherry_(including_sour)___healthy", "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot",
    "Corn_(maize)___Common_rust_", "Corn_(maize)___Northern_Leaf_Blight", "Corn_(maize)___healthy",
    "Grape___Black_rot", "Grape___Esca_(Black_Measles)",
    "Grape___Leaf_blight_(Isariopsis_Leaf_Spot)", "Grape___healthy",
    "Orange___Haunglongbing_(Citrus_greening)", "Pepper,_bell___Bacterial_spot",
    "Pepper,_bell___healthy", "Potato___Early_blight", "Potato___Late_blight", "Potato___healthy",
    "Raspberry___healthy", "Strawberry___Leaf_scorch", "Strawberry___healthy",
    "Tomato___Bacterial_spot", "Tomato___Early_blight", "Tomato___Late_blight",
    "Tomato___Leaf_Mold", "Tomato___Septoria_leaf_spot",
    "Tomato___Spider_mites Two-spotted_spider_mite", "Tomato___Target_Spot",
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus", "Tomato___Tomato_mosaic_virus", "Tomato___healthy",
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("Tomato___Late_blight", "Tomato: Late blight"),
        ("Corn_(maize)___Common_rust_", "Corn: Common rust"),
        ("Tomato___Tomato_mosaic_virus", "Tomato: mosaic virus"),
        ("Apple___Apple_scab", "Apple: scab"),
        ("Pepper,_bell___healthy", "Pepper, bell: healthy"),
        ("Grape___Esca_(Black_Measles)", "Grape: Esca"),
        ("Tomato___Tomato_Yellow_Leaf_Curl_Virus", "Tomato: Yellow Leaf Curl Virus"),
        # too long: cut at a word boundary, marked with an ellipsis
        ("Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot", "Corn: Cercospora leaf spot\u2026"),
        ("Tomato___Spider_mites Two-spotted_spider_mite", "Tomato: Spider mites\u2026"),
        # not PlantVillage's plant___condition
        ("cat", "cat"),
        ("red_car", "red car"),
        ("___", "___"),
    ],
)
def test_short_label(name, label):
    assert short_label(name) == label
    assert len(short_label(name)) <= 32


def test_short_labels_are_unique_and_colliding_names_keep_their_full_name():
    labels = short_labels(PLANTVILLAGE34)
    assert len(set(labels)) == 34 and labels == short_labels(PLANTVILLAGE34)  # deterministic
    names = ["Tomato___Late_blight", "Tomato___Late blight", "Apple___healthy"]
    assert short_labels(names) == ["Tomato___Late_blight", "Tomato___Late blight", "Apple: healthy"]
    names = ["a b", "a_b", "a__b"]
    assert short_labels(names) == names
    # The first one's label is the second name, kept in full (its label is the third's): all in
    # full.
    names = [" b(___)", "b(: )", "b"]
    assert [short_label(n) for n in names] == ["b(: )", "b", "b"]
    assert short_labels(names) == names


def test_confused_pairs_are_the_largest_off_diagonal_cells_with_their_share():
    cm = np.array([[5, 3, 0, 0], [1, 8, 1, 0], [0, 3, 2, 0], [0, 0, 0, 0]])
    pairs = confused_pairs(cm, ["a", "b", "c", "d"])
    assert pairs == [
        {"true": "c", "predicted": "b", "count": 3, "share": 0.6},  # 3 of 5: before 3 of 8
        {"true": "a", "predicted": "b", "count": 3, "share": 0.375},
        {"true": "b", "predicted": "a", "count": 1, "share": 0.1},  # ties: true, then predicted
        {"true": "b", "predicted": "c", "count": 1, "share": 0.1},
    ]
    assert confused_pairs(cm, ["a", "b", "c", "d"], limit=1) == pairs[:1]
    assert confused_pairs(np.diag([3, 4]), ["a", "b"]) == []


def test_report_lists_and_prints_the_most_confused_pairs():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2])
    names = ["Tomato___Late_blight", "Tomato___Early_blight", "Potato___Late_blight"]
    report = classification_report(np.eye(3)[predicted], labels, names)
    assert report["confused_pairs"] == [
        {"true": names[0], "predicted": names[1], "count": 2, "share": 0.5},
        {"true": names[1], "predicted": names[2], "count": 1, "share": 1 / 3},
    ]
    text = format_report(report)
    assert text.endswith(
        "most confused (true -> predicted: images, share of the true class):\n"
        "  Tomato: Late blight -> Tomato: Early blight: 2, 50%\n"
        "  Tomato: Early blight -> Potato: Late blight: 1, 33%"
    )
    # A report written before the pairs existed still prints.
    del report["confused_pairs"]
    assert "most confused" not in format_report(report)


def test_confusion_plot_at_34_classes_is_large_enough_to_read(tmp_path):
    rng = np.random.default_rng(0)
    cm = np.diag(rng.integers(15, 26, 34)) + (rng.random((34, 34)) < 0.08) * rng.integers(
        1, 4, (34, 34)
    )
    plot_confusion(tmp_path / "confusion.png", cm, PLANTVILLAGE34)
    with Image.open(tmp_path / "confusion.png") as image:
        assert image.format == "PNG"
        # >= 40 px per class for cells with a number in them
        assert image.width >= 34 * 40 and image.height >= 34 * 40
        pixels = np.asarray(image.convert("RGB"))
    # Not a blank canvas: cells in many shades, labels and numbers.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
