"""Short class labels for plots and tables: ``Tomato___Late_blight`` -> ``Tomato: Late blight``."""

from __future__ import annotations

import re

# PlantVillage's folder names are "<plant>___<condition>".
_PLANT_SEPARATOR = "___"
_PARENTHESES = re.compile(r"\([^)]*\)")
_ELLIPSIS = "\u2026"


def short_label(name: str, max_length: int = 32) -> str:
    """A readable label for one class folder name; the same name always gives the same label.

    ``plant___condition`` becomes ``plant: condition``; underscores become spaces, parenthesised
    asides are dropped (``Corn_(maize)`` -> ``Corn``), the plant is not repeated at the start of
    its condition (``Tomato___Tomato_mosaic_virus`` -> ``Tomato: mosaic virus``), and a label
    longer than ``max_length`` is cut at a word boundary with an ellipsis. A name without the
    separator keeps only the underscore and length rules.
    """
    plant, sep, condition = name.partition(_PLANT_SEPARATOR)
    if not sep:
        plant, condition = "", name

    def tidy(text: str) -> str:
        text = _PARENTHESES.sub(" ", text.replace("_", " "))
        return " ".join(text.split()).strip(" ,")

    plant, condition = tidy(plant), tidy(condition)
    if plant and condition.lower().startswith(plant.lower() + " "):
        condition = condition[len(plant) + 1 :]
    label = f"{plant}: {condition}" if plant and condition else plant or condition or name
    if len(label) <= max_length:
        return label
    cut = label[: max_length - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" :,") + _ELLIPSIS


def short_labels(names: list[str], max_length: int = 32) -> list[str]:
    """:func:`short_label` of each name, unique: names whose labels collide keep their full name.

    Args:
        names: distinct class names (folder names).
        max_length: the longest label before it is cut.

    Returns:
        One label per name, in order, all distinct.
    """
    labels = [short_label(name, max_length) for name in names]
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    labels = [
        name if counts[label] > 1 else label for name, label in zip(names, labels, strict=True)
    ]
    # A kept full name could still equal another class's label: then the full names, distinct.
    return labels if len(set(labels)) == len(labels) else list(names)
