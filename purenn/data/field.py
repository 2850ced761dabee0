"""Field-photo augmentation: lab leaves made to look like photos taken on the plant.

Every operation works on a float batch ``(N, 3, H, W)`` in [0, 1] (float32 or float64, kept) and
is vectorised over the batch; ``apply`` runs them ``CHUNK_IMAGES`` images at a time, and only
the JPEG round trip (Pillow), the sensor noise's slices of its bank and the foliage ellipses'
boxes loop over images.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from purenn.checks import require
from purenn.data.decode import load_image
from purenn.data.folder import find_images

# Leaf mask thresholds (PlantVillage: one leaf on a plain grey, white-ish or black background).
MIN_VALUE = 0.12  # darker pixels are black background or shadow
MIN_EXCESS_GREEN = 0.08  # 2g - r - b: green tissue
MIN_SATURATION = 0.25  # coloured tissue (yellowing, brown lesions); backgrounds are greyer
LEAF_HUES = (0.07, 0.55)  # 25 to 198 degrees: orange-brown through yellow and green to cyan
OPEN_SIZE, CLOSE_SIZE = 3, 7  # box sides of the morphological clean-up, in pixels
# Below this sigma (pixels) a Gaussian keeps more than 99% of a pixel's weight: left out.
MIN_BLUR_SIGMA = 0.3
BACKGROUND_KINDS = ("soil", "foliage", "sky")
_NOISE_GRIDS = (3, 5, 9, 17, 33)  # octaves of the smooth-noise fields of the backgrounds
_ELLIPSES = 14  # leaf-like shapes painted over the foliage background
CHUNK_IMAGES = 4  # images augmented together (``FieldAugmentation.apply``)


@dataclass(frozen=True)
class FieldAugmentation:
    """Random field-photo conditions, each image of a batch with its own draws.

    Pieces (each disabled by False, 0 or None):
        hflip: mirror left-right with probability 0.5.
        crop: ``(lo, hi)`` fraction of the image area a window covers, with aspect ratio from
            ``crop_ratio`` (log-uniform), placed uniformly (torchvision's RandomResizedCrop: 10
            attempts, then the centre crop), resampled bilinearly to H x W. ``hi > 1`` zooms out:
            the window is larger than the image and the leaf smaller.
        rotate: r; rotate by an angle from U(-r, r) degrees (180: any angle), bilinear.
        background: probability of replacing an image's background: the leaf (``leaf_mask``)
            is composited over a synthetic texture (``BACKGROUND_KINDS``), or over a photo
            from ``background_dir`` (one more kind, as likely as each texture).
        hue: h; shift the hue by U(-h, h) of the colour circle (at most 0.5).
        saturation, brightness: s; multiply the HSV saturation (value) by U(1 - s, 1 + s).
        blur: b; Gaussian blur with sigma from U(0, b) pixels (separable, reflected edges).
        noise: n; add Gaussian sensor noise with sigma from U(0, n) (``add_sensor_noise``).
        jpeg: ``(lo, hi)``; re-encode as JPEG at a quality from lo..hi (Pillow).

    Order: the leaf mask (on the lab image), one bilinear warp for flip, crop and rotation (the
    image reflected at its edges, the mask 0 outside), the background composite, colour,
    blur, noise, clip to [0, 1], JPEG.
    """

    hflip: bool = True
    crop: tuple[float, float] | None = (0.3, 1.5)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate: float = 180.0
    background: float = 0.8
    background_dir: str | None = None
    hue: float = 0.03
    saturation: float = 0.3
    brightness: float = 0.3
    blur: float = 1.5
    noise: float = 0.03
    jpeg: tuple[int, int] | None = (30, 95)
    _photos: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    PIECES = (
        "hflip",
        "crop",
        "rotate",
        "background",
        "hue",
        "saturation",
        "brightness",
        "blur",
        "noise",
        "jpeg",
    )

    def __post_init__(self) -> None:
        if self.crop is not None:
            lo, hi = self.crop
            require(0 < lo <= hi <= 4, "crop", "(lo, hi) with 0 < lo <= hi <= 4", self.crop)
        lo, hi = self.crop_ratio
        require(0 < lo <= hi, "crop_ratio", "(lo, hi) with 0 < lo <= hi", self.crop_ratio)
        require(0 <= self.rotate <= 180, "rotate", "in [0, 180] degrees", self.rotate)
        require(0 <= self.background <= 1, "background", "a probability", self.background)
        require(0 <= self.hue <= 0.5, "hue", "in [0, 0.5]", self.hue)
        for name in ("saturation", "brightness"):
            value = getattr(self, name)
            require(0 <= value < 1, name, "in [0, 1)", value)
        require(0 <= self.blur <= 10, "blur", "in [0, 10] pixels", self.blur)
        require(0 <= self.noise <= 0.5, "noise", "in [0, 0.5]", self.noise)
        if self.jpeg is not None:
            lo, hi = self.jpeg
            require(1 <= lo <= hi <= 100, "jpeg", "(lo, hi) with 1 <= lo <= hi <= 100", self.jpeg)
        if self.background_dir is not None:
            require(
                Path(self.background_dir).is_dir(),
                "background_dir",
                "a folder",
                self.background_dir,
            )

    @classmethod
    def none(cls) -> FieldAugmentation:
        """An augmentation that changes nothing."""
        return cls(
            hflip=False,
            crop=None,
            rotate=0.0,
            background=0.0,
            hue=0.0,
            saturation=0.0,
            brightness=0.0,
            blur=0.0,
            noise=0.0,
            jpeg=None,
        )

    @classmethod
    def only(cls, *pieces: str, **settings) -> FieldAugmentation:
        """Just ``pieces`` (names from ``PIECES``) at their default strengths, plus ``settings``."""
        for piece in pieces:
            require(piece in cls.PIECES, "piece", f"one of {', '.join(cls.PIECES)}", piece)
        defaults = {f.name: f.default for f in fields(cls) if f.name in pieces}
        return replace(cls.none(), **{**defaults, **settings})

    @property
    def enabled(self) -> bool:
        return any(bool(getattr(self, piece)) for piece in self.PIECES)

    @property
    def needs_square(self) -> bool:
        """Whether the images must be square (never: rotations resample)."""
        return False

    def apply(
        self,
        batch: np.ndarray,
        rng: np.random.Generator,
        draws: int | None = None,
        keep: np.ndarray | None = None,
        alpha: np.ndarray | None = None,
    ) -> np.ndarray:
        """Augment ``batch`` in place and return it.

        All random numbers are drawn first, in a fixed order, for ``draws`` images (each piece
        only if enabled); image i then uses draw ``keep[i]``. The result is a function of the
        rng state alone, and a shard augmented with ``keep`` equals those rows of the whole.

        Args:
            batch: float array of shape ``(N, 3, H, W)`` with values in [0, 1].
            rng: the source of randomness.
            draws, keep: as for ``Augmentation.apply`` (default: ``draws = N``, ``keep[i] = i``).
            alpha: float32 (N, H, W), the leaves of the images as the lab shot them
                (:func:`leaf_alpha`), for the background piece; computed from ``batch`` when
                None. The loader passes them when its backdrop has already replaced the lab's
                backgrounds, where a green texture could pass for leaf.

        Returns:
            ``batch``, augmented, with values in [0, 1].
        """
        if batch.ndim != 4 or batch.shape[1] != 3 or not np.issubdtype(batch.dtype, np.floating):
            raise ValueError(
                f"batch must be float of shape (N, 3, H, W), received: {batch.dtype} {batch.shape}"
            )
        n_images, _, height, width = batch.shape
        n = n_images if draws is None else draws
        if keep is not None and len(keep) != n_images:
            raise ValueError(f"keep must have {n_images} entries, received: {len(keep)}")
        if alpha is not None and alpha.shape != (n_images, height, width):
            raise ValueError(
                f"alpha must have shape {(n_images, height, width)}, received: {alpha.shape}"
            )

        drawn = self._draws(rng, n, height, width)
        if keep is not None:
            drawn = {name: value[keep] for name, value in drawn.items()}
        # A few images at a time: their temporaries stay in the core's cache, which makes the
        # element-wise passes about 20% faster than over the whole batch.
        for start in range(0, n_images, CHUNK_IMAGES):
            rows = slice(start, start + CHUNK_IMAGES)
            chunk_alpha = None if alpha is None else alpha[rows]
            self._augment(
                batch[rows], {name: value[rows] for name, value in drawn.items()}, chunk_alpha
            )
        return batch

    def _draws(
        self, rng: np.random.Generator, n: int, height: int, width: int
    ) -> dict[str, np.ndarray]:
        """Every random number of ``n`` images, in a fixed order: arrays of n rows, by name."""
        draws = {"flip": rng.random(n) < 0.5 if self.hflip else np.zeros(n, bool)}
        if self.crop:
            draws["window"] = np.stack(self._windows(rng, n, height, width), axis=1)
        if self.rotate:
            draws["angle"] = rng.uniform(-self.rotate, self.rotate, n)
        if self.background:
            draws["replaced"] = rng.random(n) < self.background
            draws["kind"] = rng.integers(0, len(self._background_kinds), n)
            draws["params"] = rng.random((n, 8 + 6 * _ELLIPSES))
            draws["grids"] = rng.standard_normal((n, 2, sum(g * g for g in _NOISE_GRIDS)))
        if self.hue:
            draws["hue"] = rng.uniform(-self.hue, self.hue, n)
        if self.saturation:
            draws["saturation"] = _factors(rng, self.saturation, n)
        if self.brightness:
            draws["brightness"] = _factors(rng, self.brightness, n)
        if self.blur:
            draws["sigma"] = rng.uniform(0, self.blur, n)
        if self.noise:
            draws["noise_sigma"] = rng.uniform(0, self.noise, n)
            draws["noise_start"] = rng.random(n)
        if self.jpeg:
            draws["quality"] = rng.integers(self.jpeg[0], self.jpeg[1] + 1, n)
        return draws

    @property
    def _background_kinds(self) -> tuple[str, ...]:
        return BACKGROUND_KINDS + (("photo",) if self.background_dir else ())

    def _augment(
        self, batch: np.ndarray, draws: dict[str, np.ndarray], lab_alpha: np.ndarray | None
    ) -> None:
        """Augment ``batch`` (N, 3, H, W) in place with ``draws`` (``_draws``, N rows each);
        ``lab_alpha``: ``apply``'s ``alpha`` for these rows, or None."""
        n, _, height, width = batch.shape
        dtype = batch.dtype
        flip = draws["flip"]
        alpha, replaced = None, draws.get("replaced")
        if replaced is not None and replaced.any():
            alpha = np.zeros((n, height, width), dtype)
            alpha[replaced] = (
                leaf_alpha(batch[replaced]) if lab_alpha is None else lab_alpha[replaced]
            )
        if self.crop or self.rotate:
            window = draws["window"].T if self.crop else None
            grid = _window_grid(n, height, width, window, draws.get("angle"), flip)
            if alpha is None:
                batch[...] = resample(batch, *grid)
            else:  # one pass for both; the mask is then cut to the image
                warped = resample(np.concatenate([batch, alpha[:, None]], axis=1), *grid)
                batch[...] = warped[:, :3]
                alpha = warped[:, 3] * _inside(*grid, height, width).astype(dtype)
        elif self.hflip:
            batch[flip] = batch[flip, :, :, ::-1]
            if alpha is not None:
                alpha[flip] = alpha[flip, :, ::-1]
        if alpha is not None:
            chosen = np.flatnonzero(replaced)
            backdrop = self._backgrounds(
                draws["kind"][chosen],
                draws["params"][chosen],
                draws["grids"][chosen],
                height,
                width,
                dtype,
            )
            a = alpha[chosen, None]
            batch[chosen] = a * batch[chosen] + (1 - a) * backdrop
        colour = [draws.get(name) for name in ("hue", "saturation", "brightness")]
        if any(c is not None for c in colour):
            jitter_hsv(batch, *colour)
        if "sigma" in draws:
            sigma = draws["sigma"]
            # Each image's kernel reaches 3 sigma (99.7% of its weight): images by radius.
            radius = np.ceil(3 * sigma).astype(int)
            visible = sigma >= MIN_BLUR_SIGMA
            for r in np.unique(radius[visible]):
                blurred = np.flatnonzero((radius == r) & visible)
                batch[blurred] = gaussian_blur(batch[blurred], sigma[blurred], int(r))
        if "noise_sigma" in draws:
            add_sensor_noise(batch, draws["noise_sigma"], draws["noise_start"])
        np.clip(batch, 0, 1, out=batch)
        if "quality" in draws:
            batch[...] = jpeg_round_trip(batch, draws["quality"])

    def _windows(
        self, rng: np.random.Generator, n: int, height: int, width: int
    ) -> tuple[np.ndarray, ...]:
        """Crop windows ``(x0, y0, w, h)`` in pixels, float64 of shape (n,) each."""
        attempts = 10
        area = height * width * rng.uniform(*self.crop, size=(n, attempts))
        log_lo, log_hi = np.log(self.crop_ratio)
        aspect = np.exp(rng.uniform(log_lo, log_hi, size=(n, attempts)))
        position = rng.random((n, 2))
        w, h = np.sqrt(area * aspect), np.sqrt(area / aspect)
        # torchvision accepts a window inside the image; zooming out allows sqrt(hi) times it.
        reach = max(1.0, np.sqrt(self.crop[1]))
        fits = (w <= width * reach) & (h <= height * reach)
        first = np.argmax(fits, axis=1)
        found = fits[np.arange(n), first]
        w, h = w[np.arange(n), first], h[np.arange(n), first]
        # No attempt fits: the whole image, cut to the nearest allowed aspect ratio (centred).
        ratio = np.clip(width / height, *self.crop_ratio)
        centre_w, centre_h = min(width, height * ratio), min(height, width / ratio)
        w, h = np.where(found, w, centre_w), np.where(found, h, centre_h)
        position = np.where(found[:, None], position, 0.5)
        return position[:, 0] * (width - w), position[:, 1] * (height - h), w, h

    def _backgrounds(
        self,
        kind: np.ndarray,
        params: np.ndarray,
        grids: np.ndarray,
        height: int,
        width: int,
        dtype: np.dtype,
    ) -> np.ndarray:
        """``(M, 3, H, W)`` backgrounds, image m of kind ``self._background_kinds[kind[m]]``."""
        out = np.empty((len(kind), 3, height, width), dtype)
        params = params.astype(np.float32)
        for k, name in enumerate(self._background_kinds):
            members = np.flatnonzero(kind == k)
            if not members.size:
                continue
            if name == "photo":
                out[members] = self._photo_backgrounds(params[members], height, width, dtype)
                continue
            texture, used = {"soil": (soil, 2), "foliage": (foliage, 1), "sky": (sky, 1)}[name]
            fields_ = smooth_noise(grids[members, :used], height, width)
            out[members] = texture(params[members], fields_).astype(dtype, copy=False)
        return out

    def _photo_backgrounds(
        self, params: np.ndarray, height: int, width: int, dtype: np.dtype
    ) -> np.ndarray:
        """Photos of ``background_dir`` resized to H x W, chosen and flipped by ``params``."""
        key = (height, width)
        if key not in self._photos:
            files = find_images(self.background_dir)
            if not files:
                raise ValueError(f"no image files in background_dir {self.background_dir}")
            size = max(height, width)
            photos = np.stack([load_image(f, size) for f in files])[:, :, :height, :width]
            self._photos[key] = photos
        photos = self._photos[key]
        chosen = np.minimum((params[:, 0] * len(photos)).astype(int), len(photos) - 1)
        out = photos[chosen].astype(dtype) / 255
        flipped = params[:, 1] < 0.5
        out[flipped] = out[flipped, :, :, ::-1]
        return out


def _factors(rng: np.random.Generator, spread: float, n: int) -> np.ndarray:
    return rng.uniform(1 - spread, 1 + spread, size=n)


# -- geometry ---------------------------------------------------------------------------------
def affine_grid(
    height: int,
    width: int,
    centre: tuple[np.ndarray, np.ndarray],
    scale: tuple[np.ndarray, np.ndarray],
    degrees: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (pixel indices) of every output pixel, float32 (N, H, W) each.

    Output pixel (i, j) is offset ``(j - (W-1)/2, i - (H-1)/2)`` from the output centre; the
    offset is scaled by ``scale = (sx, sy)`` (source pixels per output pixel; sx < 0 mirrors),
    rotated by ``degrees`` (clockwise on screen: 90 is ``np.rot90(k=-1)``) and added to
    ``centre = (cx, cy)`` (source pixel indices). Each argument has shape (N,).
    """
    dx = (np.arange(width) - (width - 1) / 2).astype(np.float32)
    dy = (np.arange(height) - (height - 1) / 2).astype(np.float32)
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    cos, sin = np.cos(theta), np.sin(theta)
    sx, sy = (np.asarray(s, dtype=np.float64) for s in scale)
    cx, cy = (np.asarray(c, dtype=np.float64) for c in centre)

    def column(a: np.ndarray) -> np.ndarray:  # (N,) float64 -> (N, 1) float32
        return a.astype(np.float32)[:, None]

    # The output offset turned by -theta in (x, y); rows grow downwards, so clockwise on screen.
    # Each coordinate is a row term (N, W) plus a column term (N, H): one full-size sum.
    src_x = (column(cx) + column(cos * sx) * dx)[:, None, :] + (column(sin * sy) * dy)[:, :, None]
    src_y = (column(cy) - column(sin * sx) * dx)[:, None, :] + (column(cos * sy) * dy)[:, :, None]
    return src_x, src_y


def _window_grid(
    n: int,
    height: int,
    width: int,
    window: np.ndarray | None,
    angle: np.ndarray | None,
    flip: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The source grid of each image's crop window, rotation and mirror (identity if none)."""
    if window is None:
        x0, y0, w, h = np.zeros(n), np.zeros(n), np.full(n, float(width)), np.full(n, float(height))
    else:
        x0, y0, w, h = window
    centre = (x0 + w / 2 - 0.5, y0 + h / 2 - 0.5)
    scale = (np.where(flip, -1.0, 1.0) * w / width, h / height)
    return affine_grid(height, width, centre, scale, np.zeros(n) if angle is None else angle)


def _reflect(coord: np.ndarray, size: int) -> np.ndarray:
    """Coordinates folded into [0, size - 1] by mirroring at the edge pixels (period 2(size-1))."""
    if size == 1:
        return np.zeros_like(coord)
    if coord.min() >= 0 and coord.max() <= size - 1:
        return coord
    period = 2 * (size - 1)
    folded = coord - period * np.floor(coord / period)  # in [0, period); np.mod is slower
    return (size - 1) - np.abs(folded - (size - 1))


def _inside(src_x: np.ndarray, src_y: np.ndarray, height: int, width: int) -> np.ndarray:
    """1 at coordinates inside the image, fading linearly to 0 one pixel beyond its edges."""
    fade_x = np.clip(src_x + 1, 0, 1) * np.clip(width - src_x, 0, 1)
    return fade_x * np.clip(src_y + 1, 0, 1) * np.clip(height - src_y, 0, 1)


def resample(batch: np.ndarray, src_x: np.ndarray, src_y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``batch`` (N, C, H, W) at ``(src_y, src_x)`` (N, H', W' each).

    Outside the image, the image mirrored at its edge pixels. Returns a new array of
    ``batch``'s dtype.
    """
    n, c, height, width = batch.shape
    src_x = _reflect(src_x.astype(np.float32, copy=False), width)
    src_y = _reflect(src_y.astype(np.float32, copy=False), height)
    # Corner (x0, y0) of each sample's pixel square, kept inside so that x0 + 1, y0 + 1 are too.
    x0 = np.minimum(np.floor(src_x), max(width - 2, 0)).astype(np.intp)
    y0 = np.minimum(np.floor(src_y), max(height - 2, 0)).astype(np.intp)
    fx = (src_x - x0).astype(batch.dtype).reshape(n, 1, -1)
    fy = (src_y - y0).astype(batch.dtype).reshape(n, 1, -1)
    # Flat indices of each sample's top-left corner in every (image, channel) plane: one 1-D
    # take per corner (the others are the same indices into the array shifted by 1, W, W + 1)
    # is several times faster than take_along_axis.
    planes = height * width * np.arange(n * c).reshape(n, c, 1)
    corner = (y0 * width + x0).reshape(n, 1, -1) + planes
    flat = batch.reshape(-1)
    step_x, step_y = min(1, width - 1), (height > 1) * width

    def lerp_x(offset: int) -> np.ndarray:
        left, right = flat[offset:].take(corner), flat[offset + step_x :].take(corner)
        right -= left
        right *= fx
        left += right
        return left

    top, bottom = lerp_x(0), lerp_x(step_y)
    bottom -= top
    bottom *= fy
    top += bottom
    return top.reshape(n, c, *src_x.shape[1:])


# -- colour -----------------------------------------------------------------------------------
def _hue_value_chroma(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in [0, 1), value (the largest channel), chroma (largest - smallest): (N, H, W) each."""
    r, g, b = batch[:, 0], batch[:, 1], batch[:, 2]
    value = np.maximum(np.maximum(r, g), b)
    chroma = value - np.minimum(np.minimum(r, g), b)
    # The hue sector is set by the largest channel: red (0), green (1/3), blue (2/3); within it
    # the hue moves by the difference of the other two over the spread. Masks multiply rather
    # than np.where, which is several times slower.
    red_max = value == r
    green_max = (value == g) & ~red_max
    blue_max = ~(red_max | green_max)
    hue = red_max * (g - b) + green_max * (b - r + 2 * chroma) + blue_max * (r - g + 4 * chroma)
    hue /= 6 * np.maximum(chroma, np.finfo(batch.dtype).tiny)  # grey pixels: 0 / tiny = 0
    hue -= np.floor(hue)
    return hue.astype(batch.dtype, copy=False), value, chroma


def _rgb_from_hue(
    hue: np.ndarray, value: np.ndarray, chroma: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """(N, 3, H, W) RGB into ``out`` from hue, value and chroma (N, H, W).

    Channel k is v - c clip(min(t, 4 - t), 0, 1) with t = (n_k + 6h) mod 6, n = 5, 3, 1 for
    red, green, blue: branch-free, the same as the six-sector table.
    """
    sixths = 6 * hue
    for channel, n_k in enumerate((5, 3, 1)):  # red, green, blue
        t = sixths + n_k  # in [0, 11): one wrap is (n_k + 6h) mod 6
        t -= 6 * (t >= 6)
        np.clip(np.minimum(t, 4 - t, out=t), 0, 1, out=t)
        np.subtract(value, chroma * t, out=out[:, channel])
    return out


def rgb_to_hsv(batch: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) RGB in [0, 1] to HSV, hue in [0, 1) (a fraction of the circle); same dtype."""
    hue, value, chroma = _hue_value_chroma(batch)
    saturation = chroma / np.maximum(value, np.finfo(batch.dtype).tiny)  # grey: s = 0
    return np.stack([hue, saturation, value], axis=1).astype(batch.dtype, copy=False)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hsv``."""
    return _rgb_from_hue(hsv[:, 0], hsv[:, 2], hsv[:, 2] * hsv[:, 1], np.empty_like(hsv))


def jitter_hsv(
    batch: np.ndarray,
    hue: np.ndarray | None,
    saturation: np.ndarray | None,
    brightness: np.ndarray | None,
) -> np.ndarray:
    """Per image: add ``hue`` to the hue, multiply saturation and value; in place, (N,) each.

    Only the hue needs HSV. With v = max and m = min of a pixel's channels, every channel is
    c = v - v s k(h), so scaling s by f (s clipped at 1: f at most v / (v - m)) gives
    c' = v - f (v - c), and scaling v by b is scaling every channel by b.
    """
    if hue is not None:
        turned, value, chroma = _hue_value_chroma(batch)
        turned += hue.astype(batch.dtype)[:, None, None]
        turned -= np.floor(turned)
        _rgb_from_hue(turned, value, chroma, out=batch)
    if saturation is not None:
        value = batch.max(axis=1, keepdims=True)
        spread = value - batch.min(axis=1, keepdims=True)
        factor = saturation.astype(batch.dtype)[:, None, None, None]
        factor = np.minimum(factor, value / np.maximum(spread, np.finfo(batch.dtype).tiny))
        batch[...] = value - factor * (value - batch)
    if brightness is not None:
        batch *= brightness.astype(batch.dtype)[:, None, None, None]
    return batch


# -- blur, noise, JPEG ------------------------------------------------------------------------
def gaussian_blur(batch: np.ndarray, sigma: np.ndarray, radius: int) -> np.ndarray:
    """Separable Gaussian blur, sigma[i] pixels for image i, taps -radius..radius, reflected edges.

    Each kernel is normalised to sum 1, so a constant image is unchanged. Returns a new array.
    """
    offsets = np.arange(radius + 1)
    safe = np.maximum(np.asarray(sigma, dtype=np.float64), 1e-6)[:, None]
    weights = np.exp(-0.5 * (offsets[None, :] / safe) ** 2)
    weights /= 2 * weights.sum(axis=1, keepdims=True) - weights[:, :1]
    weights = weights.astype(batch.dtype)[:, :, None, None, None]
    out = batch
    for axis in (3, 2):
        size = out.shape[axis]
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if size > radius else "symmetric")
        # The kernel is symmetric: w_k (x[i - k] + x[i + k]), one product per pair of taps.
        result = _window(padded, axis, radius, size) * weights[:, 0]
        pair = np.empty_like(result)
        for k in range(1, radius + 1):
            before, after = radius - k, radius + k
            np.add(
                _window(padded, axis, before, size), _window(padded, axis, after, size), out=pair
            )
            pair *= weights[:, k]
            result += pair
        out = result
    return out


@functools.cache
def _normal_bank(length: int) -> np.ndarray:
    """``length`` standard normal float32 draws from a fixed seed, read-only."""
    bank = np.random.default_rng(0).standard_normal(length, dtype=np.float32)
    bank.setflags(write=False)
    return bank


def add_sensor_noise(batch: np.ndarray, sigma: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Add sigma[i] times standard normal noise to image i of (N, C, H, W), in place.

    Drawing 3 H W normals per image costs more than the rest of the noise piece (about 15 ns
    each): image i reads them from a fixed bank, at least 16 images long, from the position
    ``start[i]`` in [0, 1) of the way along it.
    """
    need = batch[0].size
    bank = _normal_bank(1 << max(21, (16 * need - 1).bit_length()))
    first = (np.asarray(start) * (bank.size - need)).astype(np.intp)
    for i, offset in enumerate(first):
        noise = bank[offset : offset + need].reshape(batch.shape[1:])
        batch[i] += (sigma[i] * noise).astype(batch.dtype, copy=False)
    return batch


def jpeg_round_trip(batch: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) images in [0, 1], image i encoded as JPEG at ``quality[i]`` and decoded.

    Returns a new array of ``batch``'s dtype.
    """
    pixels = (batch.transpose(0, 2, 3, 1) * 255 + 0.5).astype(np.uint8, order="C")
    for image, q in zip(pixels, quality, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(q))
        buffer.seek(0)
        with Image.open(buffer, formats=("JPEG",)) as decoded:
            image[...] = np.asarray(decoded if decoded.mode == "RGB" else decoded.convert("RGB"))
    return np.multiply(pixels.transpose(0, 3, 1, 2), 1 / 255, dtype=batch.dtype)


# -- leaf mask --------------------------------------------------------------------------------
def _window(array: np.ndarray, axis: int, start: int, length: int) -> np.ndarray:
    """The view of ``array`` from ``start`` to ``start + length`` along ``axis``."""
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, start + length)
    return array[tuple(index)]


def _box(mask: np.ndarray, size: int, combine: np.ufunc) -> np.ndarray:
    """``combine`` (logical and, or, add) over the size x size box around each pixel of (N, H, W).

    Edges replicated; separable: the box along rows, then along columns. Returns a new array.
    """
    half = size // 2
    source = mask
    for axis in (1, 2):
        out, length = source.copy(), source.shape[axis]

        for d in range(1, half + 1):
            # (target start, count, source start, count): the neighbour d after, the one d
            # before, and beyond each edge the edge pixel (no padded copy; a no-op for and, or).
            pieces = ((0, length - d, d, length - d), (d, length - d, 0, length - d))
            pieces += ((0, d, 0, 1), (length - d, d, length - 1, 1))
            for start, count, from_start, from_count in pieces:
                target = _window(out, axis, start, count)
                combine(target, _window(source, axis, from_start, from_count), out=target)
        source = out
    return source


def _erode(mask: np.ndarray, size: int) -> np.ndarray:
    return _box(mask, size, np.logical_and)


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    return _box(mask, size, np.logical_or)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Add the pixels that have the mask on their left, right, above and below (holes)."""
    enclosed = np.ones_like(mask)
    for axis in (1, 2):
        # Between the first and the last mask pixel of each row (axis 2) or column (axis 1).
        length = mask.shape[axis]
        first = np.expand_dims(np.argmax(mask, axis=axis), axis)
        last = length - 1 - np.expand_dims(np.argmax(np.flip(mask, axis), axis=axis), axis)
        position = np.arange(length).reshape([-1 if a == axis else 1 for a in range(3)])
        enclosed &= (position >= first) & (position <= last) & mask.any(axis=axis, keepdims=True)
    return mask | enclosed


def leaf_mask(batch: np.ndarray) -> np.ndarray:
    """Where the leaf is, by colour: bool (N, H, W) of a float (N, 3, H, W) batch in [0, 1].

    A pixel is leaf if it is not dark and is either green (excess green 2g - r - b) or coloured
    (saturated, hue from orange-brown to cyan), which PlantVillage's grey, white-ish and black
    backgrounds are not. Then an opening removes specks, a closing joins the leaf across
    lesions and veins, and enclosed holes (lesions, glare) are filled.
    """
    hue, value, chroma = _hue_value_chroma(batch)
    excess_green = 2 * batch[:, 1] - batch[:, 0] - batch[:, 2]
    saturated = chroma > MIN_SATURATION * value  # saturation chroma / value above the minimum
    coloured = saturated & (hue > LEAF_HUES[0]) & (hue < LEAF_HUES[1])
    mask = (value > MIN_VALUE) & ((excess_green > MIN_EXCESS_GREEN) | coloured)
    mask = _dilate(_erode(mask, OPEN_SIZE), OPEN_SIZE)
    mask = _erode(_dilate(mask, CLOSE_SIZE), CLOSE_SIZE)
    return _fill_holes(mask)


def soft_mask(mask: np.ndarray) -> np.ndarray:
    """The bool (N, H, W) mask as float32 alpha with a 3-pixel soft edge (3 x 3 box mean)."""
    return _box(mask.astype(np.float32), 3, np.add) / np.float32(9)


def leaf_alpha(batch: np.ndarray) -> np.ndarray:
    """float32 (N, H, W) alpha of the leaf in a float (N, 3, H, W) batch in [0, 1]: its
    :func:`leaf_mask` with a soft edge (:func:`soft_mask`)."""
    return soft_mask(leaf_mask(batch))


# -- synthetic backgrounds --------------------------------------------------------------------
def _smooth_upsample(nodes: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Interpolate ``nodes`` along ``axis`` to ``size`` samples, smoothstep between nodes.

    Gathers and element-wise arithmetic only: no BLAS, which would contend with the training
    step's BLAS threads (this runs in the loader's thread).
    """
    grid = nodes.shape[axis]
    position = np.linspace(0, grid - 1, size)
    left = np.minimum(np.floor(position).astype(np.intp), grid - 2)
    t = position - left
    shape = [1] * nodes.ndim
    shape[axis] = size
    t = (t * t * (3 - 2 * t)).astype(np.float32).reshape(shape)
    lo, hi = np.take(nodes, left, axis=axis), np.take(nodes, left + 1, axis=axis)
    return lo + t * (hi - lo)


def _midpoint_upsample(nodes: np.ndarray) -> np.ndarray:
    """(..., g, g) node values to the (..., 2g - 1, 2g - 1) grid with a node between each pair."""
    *lead, g, _ = nodes.shape
    out = np.empty((*lead, 2 * g - 1, 2 * g - 1), nodes.dtype)
    out[..., ::2, ::2] = nodes
    out[..., 1::2, ::2] = (nodes[..., :-1, :] + nodes[..., 1:, :]) / 2
    out[..., :, 1::2] = (out[..., :, :-2:2] + out[..., :, 2::2]) / 2
    return out


def smooth_noise(grids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fractal value noise: (M, F, sum g^2) normal draws -> (M, F, H, W) float32, std about 0.7.

    Octave g (``_NOISE_GRIDS``, each 2g - 1 after the one before) is a g x g grid of draws
    with amplitude 1/g relative to the coarsest. The octaves are summed on the finest grid,
    each coarser one carried there by midpoint interpolation (small arrays), and that sum is
    interpolated smoothly over the image once. The sum has unit variance at the nodes;
    interpolation between them lowers it.
    """
    m, f, _ = grids.shape
    total, start, variance = None, 0, 0.0
    for g in _NOISE_GRIDS:
        nodes = grids[:, :, start : start + g * g].reshape(m, f, g, g).astype(np.float32)
        start += g * g
        amplitude = _NOISE_GRIDS[0] / g
        nodes *= np.float32(amplitude)
        total = nodes if total is None else _midpoint_upsample(total) + nodes
        variance += amplitude**2
    field_ = _smooth_upsample(_smooth_upsample(total, height, 2), width, 3)
    return field_ / np.float32(np.sqrt(variance))


def _lerp(lo: float, hi: float, u: np.ndarray) -> np.ndarray:
    return (lo + (hi - lo) * u)[:, None, None, None]


def soil(params: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Brown earth: a random brown, mottled by the first noise field, grains by the second."""
    red = _lerp(0.25, 0.6, params[:, 0])
    colour = np.concatenate(
        [red, red * _lerp(0.65, 0.85, params[:, 1]), red * _lerp(0.4, 0.7, params[:, 2])], axis=1
    )
    mottle = 1 + 0.25 * noise[:, :1] + 0.1 * np.sign(noise[:, 1:2]) * noise[:, 1:2] ** 2
    return np.clip(colour * mottle, 0, 1)


def foliage(params: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Out-of-focus leaves: dark mottled green with leaf-like ellipses of other greens on top."""
    m, _, height, width = noise.shape
    shapes = params[:, 8:].reshape(m, _ELLIPSES, 6)
    cx, cy, length, ratio, turn = (shapes[:, :, j] for j in range(5))  # (m, ellipses) each
    cx, cy = 1.2 * cx - 0.1, 1.2 * cy - 0.1
    cos, sin = np.cos(np.pi * turn), np.sin(np.pi * turn)
    along = 1 / (0.1 + 0.35 * length) ** 2  # 1 / semi-axis^2, along the leaf and across
    across = along / (0.25 + 0.3 * ratio) ** 2
    # ((dx cos + dy sin)^2 along + (dy cos - dx sin)^2 across) < 1 is a dx^2 + b dx dy + c dy^2
    # < 1, inside the box |dx| <= sqrt(c / det), |dy| <= sqrt(a / det), det = a c - b^2 / 4.
    a = cos**2 * along + sin**2 * across
    b = 2 * cos * sin * (along - across)
    c = sin**2 * along + cos**2 * across
    det = a * c - b**2 / 4
    scale = max(height, width)  # coordinates are fractions of the longer side
    reach_x, reach_y = np.sqrt(c / det), np.sqrt(a / det)
    x0 = np.clip(np.ceil((cx - reach_x) * scale), 0, width).astype(int)
    x1 = np.clip(np.floor((cx + reach_x) * scale) + 1, 0, width).astype(int)
    y0 = np.clip(np.ceil((cy - reach_y) * scale), 0, height).astype(int)
    y1 = np.clip(np.floor((cy + reach_y) * scale) + 1, 0, height).astype(int)
    x, y = np.arange(width, dtype=np.float32) / scale, np.arange(height, dtype=np.float32) / scale
    label = np.zeros((m, height, width), np.intp)  # 0: the base, k + 1: ellipse k
    for i in range(m):
        for k in range(_ELLIPSES):  # painted in order: later leaves cover earlier ones
            if x0[i, k] >= x1[i, k] or y0[i, k] >= y1[i, k]:
                continue
            dx = x[x0[i, k] : x1[i, k]] - cx[i, k]
            dy = (y[y0[i, k] : y1[i, k]] - cy[i, k])[:, None]
            q = (b[i, k] * dy) * dx
            q += a[i, k] * dx**2
            q += c[i, k] * dy**2
            box = label[i, y0[i, k] : y1[i, k], x0[i, k] : x1[i, k]]
            box[q < 1] = k + 1
    shade = np.concatenate([np.full((m, 1), 0.2, np.float32), shapes[:, :, 5]], axis=1)
    greens = np.stack([0.1 + 0.3 * shade**2, 0.25 + 0.45 * shade, 0.05 + 0.15 * shade**2], 1)
    greens[:, :, 0] = (0.08, 0.2, 0.06)  # the base: dark green
    out = np.take_along_axis(greens, label.reshape(m, 1, -1), axis=2).reshape(m, 3, height, width)
    return np.clip(out * (1 + 0.25 * noise[:, :1]), 0, 1)


def sky(params: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Sky: blue at the top to pale at the horizon (tilted), clouds from the noise, or overcast."""
    m, _, height, width = noise.shape
    y, x = (np.mgrid[0:height, 0:width] / max(height, width)).astype(np.float32)
    tilt = (params[:, 0, None, None] - 0.5) * 0.8
    t = np.clip(y[None] + tilt * (x[None] - 0.5), 0, 1)[:, None]
    zenith = np.concatenate(
        [
            _lerp(0.15, 0.45, params[:, 1]),
            _lerp(0.35, 0.6, params[:, 1]),
            _lerp(0.7, 0.95, params[:, 2]),
        ],
        axis=1,
    )
    horizon = _lerp(0.75, 0.95, params[:, 3])
    gradient = zenith * (1 - t) + horizon * np.array([0.95, 0.97, 1.0])[None, :, None, None] * t
    overcast = params[:, 4] < 0.3
    gradient[overcast] = (0.6 + 0.3 * t[overcast]) * np.ones((1, 3, 1, 1))
    cover = params[:, 5, None, None]
    cloud = np.clip((noise[:, 0] - (1 - 2 * cover)) * 1.5, 0, 1)[:, None]
    return np.clip(gradient * (1 - cloud) + _lerp(0.8, 1.0, params[:, 6]) * cloud, 0, 1)
