"""The candidate styled foundation's pool: style randomisation, its captions, the VAE's extra images and the public
photos' provenance (warmfed_flwr/generative/styles.py)."""

from __future__ import annotations

import torch

from benchmarks.styled_foundation import StyledSpec, styled_pipeline
from warmfed_flwr.data import digits
from warmfed_flwr.generative import styles
from warmfed_flwr.generative.styles import (
    PALETTE,
    WORDS,
    colour_name,
    flat_colours,
    gradients,
    ink_mask,
    random_shapes,
    source_phrase,
    stylise,
    vae_extras,
)


def _digit_like(count: int, size: int = 16) -> torch.Tensor:
    """White bars on black: a stroke in the middle columns."""
    images = torch.zeros(count, 3, size, size)
    images[:, :, 2:-2, size // 2 - 2:size // 2 + 2] = 1.0
    return images


def test_colour_names_are_the_nearest_palette_entry() -> None:
    for name, rgb in PALETTE.items():
        assert colour_name(torch.tensor(rgb)) == name
    assert colour_name(torch.tensor([0.9, 0.15, 0.1])) == "red"


def test_ink_mask_is_one_on_strokes_for_either_polarity() -> None:
    light = _digit_like(1)
    for image in (light, 1.0 - light):
        ink = ink_mask(image)[0, 0]
        assert ink[8, 8] == 1.0 and ink[0, 0] == 0.0


def test_source_phrase_names_white_on_black_and_its_inverse() -> None:
    assert source_phrase(_digit_like(4)) == "white on black"
    assert source_phrase(1.0 - _digit_like(4)) == "black on white"


def test_stylise_captions_what_it_draws_and_repeats_by_seed() -> None:
    images, labels = _digit_like(40), torch.arange(40) % 10
    textures = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pool = stylise(images, labels, textures, copies=3, seed=5)
    assert pool.images.shape == (120, 3, 16, 16) and torch.equal(pool.labels, labels.repeat(3))
    assert 0.0 <= float(pool.images.min()) and float(pool.images.max()) <= 1.0
    again = stylise(images, labels, textures, copies=3, seed=5)
    assert torch.equal(pool.images, again.images) and pool.phrases == again.phrases
    assert len(set(pool.phrases)) > 5
    for image, phrase in zip(pool.images, pool.phrases, strict=True):
        words = phrase.replace(",", " ").split()
        assert set(words) <= set(WORDS), phrase
        if "on a" not in phrase and "textured" not in phrase and "blurry" not in phrase and "noisy" not in phrase:
            fg, bg = phrase.split(",")[0].split(" on ")
            assert colour_name(image[:, 8, 8]) == fg and colour_name(image[:, 0, 0]) == bg, phrase


def test_every_style_word_is_one_token_of_the_styled_pipeline() -> None:
    tokenizer = styled_pipeline(StyledSpec()).tokenizer
    for word in WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_vae_extras_are_seeded_images_in_range() -> None:
    generator = torch.Generator().manual_seed(0)
    flat = flat_colours(4, 8, generator)
    assert torch.equal(flat, flat[:, :, :1, :1].expand_as(flat))
    ramp = gradients(4, 8, generator)
    assert float(ramp.std((2, 3)).min()) > 0.0
    shapes = random_shapes(4, 8, generator)
    assert shapes.shape == (4, 3, 8, 8)
    extras = vae_extras(5, 8, seed=3)
    assert extras.shape == (15, 3, 8, 8) and torch.equal(extras, vae_extras(5, 8, seed=3))
    assert 0.0 <= float(extras.min()) and float(extras.max()) <= 1.0


def test_public_photos_share_no_source_with_the_client_domains() -> None:
    assert not set(styles.SKIMAGE_NAMES) & set(digits._PHOTOS)
    assert not any(name.endswith(".ttf") for name in styles.MATPLOTLIB_NAMES)
    crops = styles.photo_crops(6, 16, seed=0)
    assert crops.shape == (6, 3, 16, 16) and torch.equal(crops, styles.photo_crops(6, 16, seed=0))
    assert len(styles.public_photos()) == 2 + len(styles.MATPLOTLIB_NAMES) + len(styles.SKIMAGE_NAMES)
