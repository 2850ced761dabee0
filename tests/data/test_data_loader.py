"""The loader: batch contents, epochs, augmentation views, determinism, resume, the thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from purenn.data import (
    Augmentation,
    DataLoader,
    FieldAugmentation,
    build_cache,
    channel_stats,
    load_image,
    normalize_batch,
    scan_image_folder,
    stratified_split,
)

MEAN, STD = np.array([0.5, 0.45, 0.4]), np.array([0.25, 0.2, 0.3])


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(60, 3, 8, 8), dtype=np.uint8)


@pytest.fixture
def ids(images) -> np.ndarray:
    """Labels equal to the image index, so ``y`` tells which image each row holds."""
    return np.arange(len(images))


@pytest.fixture
def indices() -> np.ndarray:
    return np.arange(3, 60, 2)  # 29 images


def collect(batches) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.copy(), y.copy()) for x, y in batches]


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("purenn-prefetch")]


def test_unshuffled_batches_are_the_normalized_images(images, ids, indices):
    loader = DataLoader(images, ids, indices, batch_size=8, mean=MEAN, std=STD)
    batches = collect(loader)
    assert len(loader) == len(batches) == 4 and loader.num_samples == 29
    assert [len(y) for _, y in batches] == [8, 8, 8, 5]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and x.shape == (29, 3, 8, 8) and y.dtype == np.int64
    np.testing.assert_array_equal(y, indices)
    np.testing.assert_array_equal(x, normalize_batch(images[indices], MEAN, STD))


def test_drop_last(images, ids, indices):
    loader = DataLoader(images, ids, indices, batch_size=8, drop_last=True)
    assert len(loader) == 3 and [len(y) for _, y in loader] == [8, 8, 8]


def test_without_stats_values_are_in_unit_range(images, ids, indices):
    x, _ = next(iter(DataLoader(images, ids, indices, batch_size=29)))
    np.testing.assert_allclose(x, images[indices] / 255, rtol=1e-6)


def test_shuffle_visits_every_image_once_in_a_new_order_each_epoch(images, ids, indices):
    loader = DataLoader(
        images, ids, indices, batch_size=7, mean=MEAN, std=STD, shuffle=True, seed=4
    )
    orders = []
    for epoch in range(2):
        batches = collect(loader.epoch(epoch))
        y = np.concatenate([b[1] for b in batches])
        np.testing.assert_array_equal(np.sort(y), indices)
        x = np.concatenate([b[0] for b in batches])
        np.testing.assert_array_equal(x, normalize_batch(images[y], MEAN, STD))
        orders.append(y)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], indices)


def test_augment_factor_views(images, ids, indices):
    loader = DataLoader(
        images,
        ids,
        indices,
        10,
        MEAN,
        STD,
        shuffle=True,
        seed=1,
        augmentation=Augmentation(),
        augment_factor=3,
    )
    assert loader.num_samples == 87 and len(loader) == 9
    batches = collect(loader.epoch(0))
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(np.bincount(y, minlength=60)[indices], 3)
    plain = normalize_batch(images[y], MEAN, STD)
    unaugmented = (x == plain).all(axis=(1, 2, 3))
    # view 0 of each image is the stored image; views 1 and 2 are augmented (changed)
    assert sorted(y[unaugmented].tolist()) == indices.tolist()
    lo, hi = (
        normalize_batch(np.zeros((3, 1, 1)), MEAN, STD),
        normalize_batch(np.ones((3, 1, 1)), MEAN, STD),
    )
    assert (x >= lo - 1e-6).all() and (x <= hi + 1e-6).all()  # clipped to [0, 1] before z-score


def test_augmented_view_is_a_transform_of_its_image(images, ids):
    flip_only = Augmentation(hflip=True, rotate=False, brightness=0, contrast=0)
    loader = DataLoader(images, ids, np.arange(60), 120, augmentation=flip_only, augment_factor=2)
    x, y = next(iter(loader))
    original = images[y[60:]] / 255
    views = x[60:]
    same = np.isclose(views, original).all(axis=(1, 2, 3))
    mirrored = np.isclose(views, original[..., ::-1]).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and 15 < mirrored.sum() < 45


@pytest.mark.parametrize("drop_last", [False, True])
def test_same_seed_same_batches_with_or_without_prefetch(images, ids, indices, drop_last):
    def run(prefetch: bool, epoch: int, start_batch: int = 0):
        loader = DataLoader(
            images, ids, indices, 6, MEAN, STD, shuffle=True, seed=7,
            augmentation=Augmentation(), augment_factor=2, drop_last=drop_last, prefetch=prefetch,
        )  # fmt: skip
        return collect(loader.epoch(epoch, start_batch=start_batch))

    reference = run(prefetch=False, epoch=3)
    for prefetch in (False, True):
        for start in (0, 4, len(reference)):
            resumed = run(prefetch, epoch=3, start_batch=start)
            assert len(resumed) == len(reference) - start
            for (xa, ya), (xb, yb) in zip(resumed, reference[start:], strict=True):
                np.testing.assert_array_equal(xa, xb)
                np.testing.assert_array_equal(ya, yb)
    other_seed = DataLoader(images, ids, indices, 6, MEAN, STD, shuffle=True, seed=8)
    assert not np.array_equal(next(iter(other_seed.epoch(3)))[1], reference[0][1])


def test_iter_is_epoch_zero(images, ids, indices):
    loader = DataLoader(
        images, ids, indices, 5, shuffle=True, seed=2, augmentation=Augmentation(), augment_factor=2
    )
    for (xa, ya), (xb, yb) in zip(collect(loader), collect(loader.epoch(0)), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_stopping_early_ends_the_prefetch_thread(images, ids, indices):
    loader = DataLoader(images, ids, indices, 4, prefetch=True)
    batches = loader.epoch(0)
    next(batches)
    assert len(prefetch_threads()) == 1
    batches.close()
    assert prefetch_threads() == []
    for _ in loader.epoch(1):
        break
    assert prefetch_threads() == []


class FailingImages(np.ndarray):
    """An image array whose reads fail, like a memmap on a vanished disk."""

    def __getitem__(self, key):
        raise OSError("disk gone")


@pytest.mark.parametrize("prefetch", [False, True])
def test_errors_while_preparing_a_batch_reach_the_caller(images, ids, indices, prefetch):
    loader = DataLoader(images.view(FailingImages), ids, indices, 4, prefetch=prefetch)
    with pytest.raises(OSError, match="disk gone"):
        next(iter(loader))
    assert prefetch_threads() == []


def test_empty_indices_give_no_batches(images, ids):
    loader = DataLoader(images, ids, np.array([], dtype=np.int64), 4)
    assert len(loader) == 0 and list(loader) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"augment_factor": 0}, "augment_factor=0"),
        ({"augment_factor": 2}, "augment_factor >= 2 needs an enabled augmentation"),
        ({"augment_factor": 2, "augmentation": Augmentation.none()}, "augment_factor=2"),
        ({"augmentation": Augmentation()}, "augmentation needs augment_factor >= 2"),
        ({"seed": -1}, "seed=-1"),
        ({"indices": np.array([0, 60])}, r"indices must lie in \[0, 60\)"),
        ({"mean": MEAN}, "together"),
        ({"labels": np.arange(59)}, "labels"),
    ],
)
def test_bad_arguments(images, ids, indices, kwargs, message):
    arguments = {"images": images, "labels": ids, "indices": indices, **kwargs}
    with pytest.raises(ValueError, match=message):
        DataLoader(**arguments)


def test_bad_epoch_arguments(images, ids, indices):
    loader = DataLoader(images, ids, indices, 8)
    with pytest.raises(ValueError, match="start_batch=5"):
        loader.epoch(0, start_batch=5)
    with pytest.raises(ValueError, match="epoch=-1"):
        loader.epoch(-1)


def test_end_to_end_from_an_image_folder(image_folder, tmp_path):
    cache = build_cache(
        scan_image_folder(image_folder), tmp_path / "cache", 16, workers=1, progress=False
    )
    train, val, test = stratified_split(cache.labels, 0.25, 0.25, seed=0)
    assert np.bincount(cache.labels[val]).tolist() == [1, 1, 2]  # round(4, 5, 6 x 0.25), half up
    mean, std = channel_stats(cache.images, train)
    loader = DataLoader(cache.images, cache.labels, train, 4, mean, std, shuffle=True, seed=0)
    seen = 0
    for x, y in loader:
        assert x.shape[1:] == (3, 16, 16) and y.dtype == np.int64
        seen += len(y)
    assert seen == len(train)
    # the first training file, decoded directly, is one of the yielded rows
    first = normalize_batch(load_image(image_folder / cache.files[train[0]], 16), mean, std)
    rows = np.concatenate([x for x, _ in loader.epoch(0)])
    assert any(np.array_equal(first, row) for row in rows)


def test_field_augmentation_shards_make_up_the_whole_batch_and_rectangles_are_fine():
    images = np.random.default_rng(1).integers(0, 256, size=(40, 3, 12, 16), dtype=np.uint8)
    ids = np.arange(40)

    def batches(shard):
        loader = DataLoader(
            images, ids, np.arange(40), 10, MEAN, STD, shuffle=True, seed=3,
            augmentation=FieldAugmentation(), augment_factor=2, shard=shard, prefetch=False,
        )  # fmt: skip
        return collect(loader.epoch(1))

    whole = batches((0, 1))
    parts = [batches((rank, 3)) for rank in range(3)]
    for b, (x, y) in enumerate(whole):
        np.testing.assert_allclose(np.concatenate([p[b][0] for p in parts]), x, atol=1e-5)
        np.testing.assert_array_equal(np.concatenate([p[b][1] for p in parts]), y)
    assert x.shape[2:] == (12, 16)


def leaves_on_black(count: int, size: int = 32) -> np.ndarray:
    """uint8 (count, 3, size, size): a green disc (the leaf) on black, as PlantVillage shot
    Common rust."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (size / 3) ** 2
    images = np.zeros((count, 3, size, size), np.uint8)
    images[:, 1][:, disc] = 170
    images[:, 0][:, disc] = 60
    return images


def test_backdrop_replaces_the_background_of_every_view_and_keeps_the_leaf():
    images, ids = leaves_on_black(12), np.arange(12)
    leaf = images[0, 1] > 0
    core = leaf & np.roll(leaf, 4, 0) & np.roll(leaf, -4, 0) & np.roll(leaf, 4, 1)
    core &= np.roll(leaf, -4, 1)  # the leaf 4 pixels in from its edge: no blending there

    def views(backdrop, shard=(0, 1)):
        loader = DataLoader(
            images, ids, ids, 6, shuffle=True, seed=2, augmentation=Augmentation(contrast=0),
            augment_factor=2, backdrop=backdrop, shard=shard, prefetch=False,
        )  # fmt: skip
        return collect(loader.epoch(0))

    plain = views(None)
    replaced = views(FieldAugmentation.only("background", background=1.0))
    for (x0, y0), (x, y) in zip(plain, replaced, strict=True):
        np.testing.assert_array_equal(y, y0)
        background = np.broadcast_to(~leaf, x[:, 0].shape)
        # Black everywhere off the leaf without the backdrop; replaced in every sample with it.
        assert (x0.sum(axis=1)[background] == 0).all()
        assert (x.sum(axis=1)[:, ~leaf].mean(axis=1) > 0.1).all()
        np.testing.assert_allclose(x[:, :, core], x0[:, :, core], atol=1e-6)
    # The draws belong to the whole batch: the ranks' rows make it up.
    parts = [views(FieldAugmentation.only("background", background=1.0), (r, 2)) for r in (0, 1)]
    for b, (x, _) in enumerate(replaced):
        np.testing.assert_allclose(np.concatenate([p[b][0] for p in parts]), x, atol=1e-6)


def test_backdrop_and_field_recipe_take_the_leaf_masks_of_the_images_as_stored(monkeypatch):
    """Both replace backgrounds: the recipe must not look for the leaf in an image whose
    background the backdrop already replaced (a green texture passes for leaf), so the masks
    come from the lab images, once per sample."""
    from purenn.data import field

    images, ids = leaves_on_black(12), np.arange(12)
    seen = []
    real_leaf_mask = field.leaf_mask
    monkeypatch.setattr(
        field, "leaf_mask", lambda batch: seen.append(batch.copy()) or real_leaf_mask(batch)
    )
    loader = DataLoader(
        images, ids, ids, 6, shuffle=True, seed=2,
        augmentation=FieldAugmentation.only("background", background=1.0), augment_factor=2,
        backdrop=FieldAugmentation.only("background", background=1.0), prefetch=False,
    )  # fmt: skip
    batches = collect(loader.epoch(0))
    leaf = images[0, 1] > 0
    assert sum(len(batch) for batch in seen) == sum(len(x) for x, _ in batches) == 24
    for batch in seen:  # every mask was found on a lab image: black off the leaf
        assert (batch.sum(axis=1)[:, ~leaf] == 0).all()
    for x, _ in batches:  # and every view's background was replaced
        assert (x.sum(axis=1)[:, ~leaf].mean(axis=1) > 0.1).all()
