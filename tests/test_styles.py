"""The shipped foundation's style stage: style randomisation, its captions, the VAE's extra images, the public
photos' provenance (warmfed_flwr/generative/styles.py) and the stage itself (style_stage.py)."""

from __future__ import annotations

import torch

from benchmarks.styled_foundation import StyledSpec, styled_pipeline
from tests.test_generative import CPU, NAMES, TEMPLATE, shapes_dataset
from warmfed_flwr.data import digits
from warmfed_flwr.generative import styles
from warmfed_flwr.generative.foundation_spec import FoundationSpec
from warmfed_flwr.generative.images import training_images
from warmfed_flwr.generative.style_stage import add_style_words, train_on_styles
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
from warmfed_flwr.generative.tiny_architecture import build_tiny_pipeline
from warmfed_flwr.generative.tokenizer import class_words


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


def test_styled_pipeline_builds_the_requested_unet_width_on_its_latent_channels() -> None:
    unet = styled_pipeline(StyledSpec(unet_channels=(48, 96), latent_channels=8)).unet
    assert tuple(unet.config.block_out_channels) == (48, 96)
    assert unet.config.in_channels == unet.config.out_channels == 8
    assert unet(torch.zeros(1, 8, 4, 4), 0, torch.zeros(1, 3, 64)).sample.shape == (1, 8, 4, 4)


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


def test_adding_style_words_keeps_every_old_token_embedding() -> None:
    pipe = build_tiny_pipeline(seed=1)
    old_vocab = pipe.tokenizer.get_vocab()
    old_table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    prompt = pipe.tokenizer("a photo of a one", return_tensors="pt").input_ids
    before = pipe.text_encoder(prompt)[0]
    add_style_words(pipe, NAMES)
    table = pipe.text_encoder.get_input_embeddings().weight
    vocab = pipe.tokenizer.get_vocab()
    kept = [token for token in old_vocab if token in vocab]
    assert len(kept) >= 0.95 * len(old_vocab) and all(f"{word}</w>" in vocab for word in NAMES)
    assert all(torch.equal(table[vocab[token]], old_table[old_vocab[token]]) for token in kept)
    assert all(len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1 for word in WORDS)
    assert torch.allclose(pipe.text_encoder(pipe.tokenizer("a photo of a one", return_tensors="pt").input_ids)[0],
                          before)


def test_style_stage_trains_on_captioned_styles_and_freezes_after() -> None:
    pipe = build_tiny_pipeline(seed=1)
    images, labels = training_images(shapes_dataset(per_class=4), NAMES, 32, "foundation")
    unet_before = [p.detach().clone() for p in pipe.unet.parameters()]
    spec = FoundationSpec(style_steps=3, style_copies=2, style_photo_crops=4, batch_size=8, warmup_steps=1)
    stats = train_on_styles(pipe, images, labels, NAMES, spec, TEMPLATE, CPU)
    assert stats["style_images"] == 2 * len(labels) and stats["style_captions"] > len(NAMES) + 1
    assert any(not torch.equal(a, b) for a, b in zip(unet_before, pipe.unet.parameters(), strict=True))
    assert not any(p.requires_grad for p in [*pipe.unet.parameters(), *pipe.text_encoder.parameters()])
    assert len(pipe.tokenizer("red on blue", add_special_tokens=False).input_ids) == 3


def test_a_custom_pools_class_words_keep_their_tokens_through_the_style_stage() -> None:
    names = ["chair", "duck", "tennis_racket"]  # without class_words "duck" is duc|k, then du|ck after the stage
    pipe = build_tiny_pipeline(seed=1, words=class_words(names))
    prompts = [f"a photo of a {name}" for name in names]
    before = [pipe.tokenizer.tokenize(prompt) for prompt in prompts]
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    rows = {token: table[pipe.tokenizer.get_vocab()[token]] for tokens in before for token in tokens}
    add_style_words(pipe, names)
    assert [pipe.tokenizer.tokenize(prompt) for prompt in prompts] == before
    assert ["chair</w>"] == before[0][-1:] and ["tennis</w>", "racket</w>"] == pipe.tokenizer.tokenize("tennis racket")
    vocab, new_table = pipe.tokenizer.get_vocab(), pipe.text_encoder.get_input_embeddings().weight
    assert all(torch.equal(new_table[vocab[token]], row) for token, row in rows.items())
