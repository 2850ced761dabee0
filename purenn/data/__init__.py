"""Image data pipeline: folder scan, decode-once cache, splits, statistics, augmentation, loader.

Typical use::

    scan = scan_image_folder("data/plantvillage")
    cache = build_cache(scan, "cache", image_size=128)
    train, val, test = stratified_split(cache.labels, 0.15, 0.15, seed=0)
    mean, std = channel_stats(cache.images, train)
    loader = DataLoader(cache.images, cache.labels, train, 32, mean, std, shuffle=True,
                        augmentation=Augmentation(), augment_factor=2)
    for x, y in loader.epoch(0): ...
"""

from purenn.data.augment import Augmentation
from purenn.data.cache import ImageCache, build_cache
from purenn.data.decode import decode_image_bytes, load_image
from purenn.data.errors import DataError
from purenn.data.field import FieldAugmentation
from purenn.data.folder import (
    IMAGE_EXTENSIONS,
    FolderScan,
    collect_images,
    scan_image_folder,
    scan_outlier_folder,
)
from purenn.data.loader import DataLoader
from purenn.data.split import stratified_split, subset_split
from purenn.data.stats import channel_stats, normalize_batch

__all__ = [
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "DataError",
    "DataLoader",
    "FieldAugmentation",
    "FolderScan",
    "ImageCache",
    "build_cache",
    "decode_image_bytes",
    "channel_stats",
    "collect_images",
    "load_image",
    "normalize_batch",
    "scan_image_folder",
    "scan_outlier_folder",
    "stratified_split",
    "subset_split",
]
