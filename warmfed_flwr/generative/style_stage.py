"""The tiny foundation's second stage: after it learned the classes, it learns style words on a restyled public pool.

The class stage (grey public digits under "a photo of a {label}") makes the class word reliable; this stage then adds
the style words to the tokenizer (every word keeps its trained embedding) and continues the UNet and text
encoder on :func:`~warmfed_flwr.generative.styles.stylise`'d copies of the same pool, each image under its class
prompt plus its style phrase ("a photo of a seven, red on blue, blurry"). A client's adapter then only has to shift
a style the text can already name. Trained from scratch on the styled pool, the class word does not hold (34 % class
fidelity against 97 % class first); see docs/generator.md.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel

from warmfed_flwr.generative.diffusion import TrainingLatents, noise_prediction_loss, train_unet_and_text
from warmfed_flwr.generative.foundation_spec import FoundationSpec
from warmfed_flwr.generative.prompts import class_prompts, prompt_tokens
from warmfed_flwr.generative.styles import WORDS, photo_crops, stylise
from warmfed_flwr.generative.tokenizer import VOCABULARY, build_tokenizer, class_words

logger = logging.getLogger(__name__)


def add_style_words(pipe: StableDiffusionPipeline, class_names: list[str]) -> None:
    """Give ``pipe`` a tokenizer that also holds every style word as one token, and a text encoder in which every
    token the old vocabulary shares with the new keeps its trained embedding (the vocabulary's and the class names'
    words: :func:`~warmfed_flwr.generative.tokenizer.class_words`; a few BPE pieces the new merges no longer produce
    are dropped) and new ones start at the old table's mean."""
    tokenizer = build_tokenizer([*VOCABULARY, *class_words(class_names), *WORDS])
    old = pipe.text_encoder
    text = CLIPTextModel(CLIPTextConfig(**{**old.config.to_dict(), "vocab_size": len(tokenizer)}))
    state = {key: value for key, value in old.state_dict().items() if "token_embedding" not in key}
    missing = text.load_state_dict(state, strict=False).missing_keys
    if any("token_embedding" not in key for key in missing):
        raise ValueError(f"text encoder weights missing for {missing}")
    old_table = old.get_input_embeddings().weight.detach().cpu()
    table = old_table.mean(0).repeat(len(tokenizer), 1)
    old_vocab = pipe.tokenizer.get_vocab()
    for token, row in tokenizer.get_vocab().items():
        if token in old_vocab:
            table[row] = old_table[old_vocab[token]]
    text.get_input_embeddings().weight.data.copy_(table)
    pipe.register_modules(tokenizer=tokenizer, text_encoder=text.to(old.device).eval())


def train_on_styles(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    spec: FoundationSpec,
    template: str,
    device: torch.device,
) -> dict[str, Any]:
    """Add the style words, then train the UNet and text encoder ``spec.style_steps`` steps on ``spec.style_copies``
    restyled copies of ``images`` [N, 3, S, S] in [0, 1], each under its class prompt + style phrase
    (``spec.style_plain_prob`` of them under the plain class prompt, ``spec.uncond_prob`` under the empty one)."""
    size = images.shape[-1]
    pool = stylise(images, labels, photo_crops(spec.style_photo_crops, size, spec.seed), spec.style_copies, spec.seed)
    add_style_words(pipe, class_names)
    generator = torch.Generator().manual_seed(spec.seed + 1)
    captions = sorted(set(pool.phrases))
    row_of = {phrase: row for row, phrase in enumerate(captions)}
    table = class_prompts(template, class_names) + [
        prompt for phrase in captions for prompt in class_prompts(template, class_names, phrase)] + [""]
    rows = torch.tensor([len(class_names) * (1 + row_of[phrase]) + int(label)
                         for phrase, label in zip(pool.phrases, pool.labels.tolist(), strict=True)])
    data = dataclasses.replace(TrainingLatents.encode(pipe.vae.to(device), pool.images, pool.labels), captions=rows)
    tokens = prompt_tokens(pipe, table, device)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    logger.info("foundation style stage: %d steps on %d restyled images, %d captions", spec.style_steps,
                len(pool.labels), len(table))
    losses, seconds = train_unet_and_text(
        pipe, device, spec.style_steps, spec.style_lr, spec.warmup_steps, "foundation styles",
        lambda unet, text: noise_prediction_loss(unet, scheduler, data, lambda index: text(tokens[index])[0],
                                                 spec.batch_size, spec.uncond_prob, generator,
                                                 plain_prob=spec.style_plain_prob, empty_prompt=len(table) - 1),
    )
    window = max(1, min(100, len(losses) // 5))
    return {"style_images": len(pool.labels), "style_captions": len(table),
            "style_seconds": seconds,
            "style_loss_final": sum(losses[-window:]) / window}
