"""The embedded "tiny" foundation generator: a StableDiffusionPipeline built from configs and pretrained on CPU.

No hub download is needed: the tokenizer vocabulary, the VAE, the UNet and the text encoder are created here,
pretrained on a public image pool (MNIST digits by default), saved in diffusers format under the cache directory
and loaded afterwards through the same code path as any hub id or local pipeline directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from filelock import FileLock, Timeout
from tokenizers import pre_tokenizers
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from warmfed_flwr.config import GeneratorConfig, ModelConfig
from warmfed_flwr.data import default_cache_dir, load_public_pool
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import synthesize
from warmfed_flwr.models import build_model
from warmfed_flwr.training import evaluate, resolve_device, train_epochs

logger = logging.getLogger(__name__)

ARCHITECTURE = "tiny-sd-v1"
"""Bumped whenever the tiny architecture or its training recipe changes, so stale caches are not reused."""
DEFAULT_TEMPLATE = GeneratorConfig().prompt_template
MAX_TOKENS = 32
VOCABULARY = (
    "a an the of in on with and or by at to from this that is photo photograph picture image drawing sketch "
    "painting handwritten written printed digit number letter style styled font rendered render blurry clean "
    "black white gray grey red green blue yellow color colored colorful background dark light small large "
    "zero one two three four five six seven eight nine "
    "real clipart infograph quickdraw product art cartoon photorealistic realistic pencil ink watercolor "
    "backpack bike bicycle calculator headphones keyboard laptop monitor mouse mug projector "
    "dog elephant giraffe guitar horse house person cat car bird airplane truck ship "
    "tumor normal tissue patch histology slide stained cell cells"
).split()
"""Words that become single tokens; any other word is spelled out in byte-level tokens (never unknown)."""


@dataclass(frozen=True)
class FoundationSpec:
    """Every knob of the tiny foundation build; its hash names the cache directory."""

    steps: int = GeneratorConfig().foundation_steps
    source: str = "digits"
    image_size: int = 32
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 32
    vae_steps: int = 400
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    uncond_prob: float = 0.1
    warmup_steps: int = 50
    holdout_fraction: float = 0.2
    quality_images_per_class: int = 50
    quality_steps: int = 10
    quality_guidance: float = 3.0


def foundation_key(spec: FoundationSpec, template: str = DEFAULT_TEMPLATE) -> str:
    """A short sha256 of the architecture version, the spec and the prompt template the text encoder learns."""
    payload = json.dumps({"arch": ARCHITECTURE, "spec": dataclasses.asdict(spec), "template": template}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Deterministic BPE training: merge the most frequent adjacent pair (ties: smallest pair) until words are whole."""
    pieces = [[*word[:-1], word[-1] + "</w>"] for word in sorted(set(words)) if word]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in pieces:
            for pair in zip(symbols, symbols[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for index, symbols in enumerate(pieces):
            merged, position = [], 0
            while position < len(symbols):
                if tuple(symbols[position:position + 2]) == best:
                    merged.append(best[0] + best[1])
                    position += 2
                else:
                    merged.append(symbols[position])
                    position += 1
            pieces[index] = merged


def build_tokenizer(words: list[str] | None = None, max_length: int = MAX_TOKENS) -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer whose merges make each of ``words`` (lower-case ASCII) one token.

    Its vocab.json + merges.txt are written here (deterministically) and loaded as a CLIPTokenizer. Every other
    word is spelled out in byte-level pieces, all in the vocabulary, so no text maps to the unknown token. It
    round-trips through ``save_pretrained``/``from_pretrained``.
    """
    words = [w.lower() for w in (words or VOCABULARY) if w.isascii() and w.isalpha()]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(char + "</w>" for char in alphabet)]
    merges = _bpe_merges(words)
    tokens += [left + right for left, right in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    with tempfile.TemporaryDirectory(prefix="warmfed-tokenizer-") as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = "\n".join(f"{left} {right}" for left, right in merges)
        (Path(folder) / "merges.txt").write_text(f"#version: 0.2\n{lines}\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)


def build_tiny_pipeline(seed: int, image_size: int = 32) -> StableDiffusionPipeline:
    """An untrained StableDiffusionPipeline for ``image_size`` RGB images, built from configs alone (seeded)."""
    if image_size % 2:
        raise GeneratorError(f"tiny foundation image_size = {image_size} must be even; use 32 or 64")
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=image_size,
            mid_block_add_attention=False,
        )
        unet = UNet2DConditionModel(
            sample_size=image_size // 2,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dataset_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float [N,3,H,W] in [0,1], labels int64 [N]) of a TensorDataset or any (x, y) dataset."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors[0], dataset.tensors[1]
    else:
        pairs = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        images = torch.stack([x for x, _ in pairs])
        labels = torch.as_tensor([int(y) for _, y in pairs])
    if len(images) == 0:
        raise GeneratorError("the training image set is empty; give the generator at least one image per class")
    return images.float(), labels.long()


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [N,3,H,W] images to size x size (no-op when already that size)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp(0.0, 1.0)


@torch.no_grad()
def encode_latent_stats(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, ...]:
    """Posterior mean and std of every image (images in [0,1] on any device; returned on the VAE's device)."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(vae.device, vae.dtype) * 2.0 - 1.0
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def _train_vae(vae: AutoencoderKL, images: torch.Tensor, spec: FoundationSpec, device: torch.device) -> dict[str, Any]:
    """Reconstruction training, then scaling_factor = 1 / std of the latents."""
    generator = torch.Generator().manual_seed(spec.seed)
    vae.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec.vae_lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(spec.warmup_steps, spec.vae_steps), spec.vae_steps)
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(spec.vae_steps), desc="foundation VAE", unit="step")
    for _ in bar:
        index = torch.randint(len(images), (spec.batch_size,), generator=generator)
        x = images[index].to(device) * 2.0 - 1.0
        posterior = vae.encode(x).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(device)
        recon = vae.decode(latents).sample
        mse = F.mse_loss(recon, x)
        loss = mse + spec.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(mse.item() / 4.0)
        bar.set_postfix(mse=f"{losses[-1]:.4f}")
    vae.eval().requires_grad_(False)
    mean, std = encode_latent_stats(vae, images)
    sampled = mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)
    scaling = 1.0 / sampled.std().item()
    vae.register_to_config(scaling_factor=scaling)
    window = max(1, min(50, len(losses) // 5))
    return {
        "vae_seconds": time.perf_counter() - start,
        "vae_mse_first": sum(losses[:window]) / window,
        "vae_mse_final": sum(losses[-window:]) / window,
        "vae_scaling_factor": scaling,
    }


def _train_denoiser(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    spec: FoundationSpec,
    template: str,
    device: torch.device,
) -> dict[str, Any]:
    """UNet + text encoder trained jointly on the noise-prediction loss, with ``uncond_prob`` empty prompts."""
    generator = torch.Generator().manual_seed(spec.seed + 1)
    mean, std = encode_latent_stats(pipe.vae, images)
    scaling = pipe.vae.config.scaling_factor
    tokens = pipe.tokenizer(
        class_prompts(template, class_names) + [""],
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    unet, text_encoder = pipe.unet.to(device).train(), pipe.text_encoder.to(device).train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=spec.lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(spec.warmup_steps, spec.steps), spec.steps)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    timesteps_total = noise_scheduler.config.num_train_timesteps
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(spec.steps), desc="foundation UNet+text", unit="step")
    for _ in bar:
        index = torch.randint(len(images), (spec.batch_size,), generator=generator)
        eps = torch.randn((len(index), *mean.shape[1:]), generator=generator).to(device)
        latents = (mean[index.to(device)] + std[index.to(device)] * eps) * scaling
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(timesteps_total, (len(index),), generator=generator).to(device)
        prompt_index = labels[index].clone()
        prompt_index[torch.rand(len(index), generator=generator) < spec.uncond_prob] = len(class_names)
        encoded = text_encoder(tokens)[0][prompt_index.to(device)]
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=encoded).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    window = max(1, min(100, len(losses) // 5))
    return {
        "unet_seconds": time.perf_counter() - start,
        "unet_loss_first": sum(losses[:window]) / window,
        "unet_loss_final": sum(losses[-window:]) / window,
    }


def pretrain_foundation(
    pipe: StableDiffusionPipeline,
    dataset: Dataset,
    class_names: list[str],
    spec: FoundationSpec,
    template: str = DEFAULT_TEMPLATE,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train the VAE (reconstruction), then the UNet and text encoder (noise prediction) on ``dataset``."""
    device = device or resolve_device("auto")
    images, labels = dataset_tensors(dataset)
    if int(labels.max()) >= len(class_names) or int(labels.min()) < 0:
        raise GeneratorError(
            f"foundation labels span {int(labels.min())}..{int(labels.max())} but {len(class_names)} class names "
            "were given; give one name per label"
        )
    images = resize_to(images, pipe.unet.config.sample_size * pipe.vae_scale_factor)
    stats = {"images": len(images), "steps": spec.steps, "vae_steps": spec.vae_steps, "device": str(device)}
    stats.update(_train_vae(pipe.vae, images, spec, device))
    stats.update(_train_denoiser(pipe, images, labels, class_names, spec, template, device))
    logger.info(
        "foundation pretrained: VAE %.0f s (recon MSE %.4f -> %.4f), UNet+text %.0f s (loss %.4f -> %.4f)",
        stats["vae_seconds"], stats["vae_mse_first"], stats["vae_mse_final"],
        stats["unet_seconds"], stats["unet_loss_first"], stats["unet_loss_final"],
    )
    return stats


def split_holdout(dataset: Dataset, fraction: float, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """A seeded (train, test) split of ``dataset`` with ``fraction`` of it held out."""
    images, labels = dataset_tensors(dataset)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    held = max(1, int(round(len(images) * fraction)))
    test, train = order[:held], order[held:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[test], labels[test])


def foundation_quality(
    pipe: StableDiffusionPipeline,
    real: Dataset,
    class_names: list[str],
    template: str = DEFAULT_TEMPLATE,
    holdout: Dataset | None = None,
    images_per_class: int = 50,
    steps: int = 10,
    guidance: float = 3.0,
    seed: int = 0,
    device: torch.device | None = None,
    classifier_epochs: int = 10,
) -> dict[str, Any]:
    """Class fidelity and train-on-synthetic/test-on-real accuracy of the generator on real images.

    A classifier trained on ``real`` scores the generated images per class (fidelity); a classifier trained on the
    generated images is tested on ``holdout`` (default: a seeded fifth of ``real``, the rest training the judge).
    Pass as ``holdout`` real images the generator never saw, or the figures include memorisation.
    """
    device = device or resolve_device("auto")
    start = time.perf_counter()
    if holdout is None:
        real_train, real_test = split_holdout(real, 0.2, seed)
    else:
        real_train, real_test = TensorDataset(*dataset_tensors(real)), TensorDataset(*dataset_tensors(holdout))
    size = int(real_train.tensors[0].shape[-1])
    embeddings = prompt_embeddings(pipe, class_prompts(template, class_names))
    images, labels = synthesize(pipe, embeddings, images_per_class, steps, guidance, batch_size=64, seed=seed,
                                size=size)
    synthetic = TensorDataset(images, labels)
    num_classes = len(class_names)
    train_kwargs = {"epochs": classifier_epochs, "lr": 0.01, "batch_size": 32, "device": device, "seed": seed}
    judge = build_model(ModelConfig(), num_classes)
    train_epochs(judge, real_train, **train_kwargs)
    _, real_accuracy = evaluate(judge, real_test, device)
    judge.eval()
    with torch.no_grad():
        predicted = torch.cat([judge(images[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, len(images), 256)])
    per_class = {
        name: float((predicted[labels == c] == c).float().mean()) for c, name in enumerate(class_names)
    }
    student = build_model(ModelConfig(), num_classes)
    train_epochs(student, synthetic, **train_kwargs)
    _, tstr_accuracy = evaluate(student, real_test, device)
    quality = {
        "class_fidelity": per_class,
        "class_fidelity_mean": sum(per_class.values()) / num_classes,
        "train_synthetic_test_real_acc": tstr_accuracy,
        "train_real_test_real_acc": real_accuracy,
        "synthetic_images": len(images),
        "real_train_images": len(real_train),
        "real_test_images": len(real_test),
        "quality_seconds": time.perf_counter() - start,
    }
    logger.info(
        "foundation quality: class fidelity %.1f%%, train-on-synthetic/test-on-real %.1f%% (real/real %.1f%%)",
        100 * quality["class_fidelity_mean"], 100 * tstr_accuracy, 100 * real_accuracy,
    )
    return quality


def _is_complete(directory: Path) -> bool:
    return (directory / "model_index.json").is_file() and (directory / "quality.json").is_file()


def _build_into(spec: FoundationSpec, cache_dir: Path, template: str, target: Path) -> None:
    """Build, pretrain, score and save the foundation atomically at ``target``."""
    started = time.perf_counter()
    pool, class_names = load_public_pool(spec.source, spec.image_size, cache_dir)
    train, holdout = split_holdout(pool, spec.holdout_fraction, spec.seed)
    device = resolve_device("auto")
    pipe = build_tiny_pipeline(spec.seed, spec.image_size)
    stats = pretrain_foundation(pipe, train, class_names, spec, template, device)
    quality = foundation_quality(
        pipe, train, class_names, template, holdout, spec.quality_images_per_class, spec.quality_steps,
        spec.quality_guidance, spec.seed, device,
    )
    pipe.to("cpu")
    build_seconds = time.perf_counter() - started
    record = {
        "key": target.name, "architecture": ARCHITECTURE, "spec": dataclasses.asdict(spec), "template": template,
        "class_names": class_names, "build_seconds": build_seconds, "training": stats, "quality": quality,
    }
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "quality.json").write_text(json.dumps(record, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info(
        "foundation built in %.0f s at %s: class fidelity %.1f%%, train-on-synthetic/test-on-real %.1f%%",
        build_seconds, target, 100 * quality["class_fidelity_mean"], 100 * quality["train_synthetic_test_real_acc"],
    )


def ensure_foundation(spec: FoundationSpec, cache_dir: Path, template: str = DEFAULT_TEMPLATE) -> Path:
    """The diffusers directory of the tiny foundation for ``spec``, built once under a file lock and cached."""
    root = Path(cache_dir) / "foundation"
    target = root / foundation_key(spec, template)
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f"{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("another process is building the foundation %s; waiting for it", target)
        lock.acquire()
    try:
        if not _is_complete(target):
            logger.info("building the tiny foundation %s (%d steps on '%s'); this runs once", target, spec.steps,
                        spec.source)
            _build_into(spec, Path(cache_dir), template, target)
    finally:
        lock.release()
    return target


def main(argv: list[str] | None = None) -> None:
    """Console script ``warmfed-build-foundation``: build the tiny foundation ahead of a run and print its quality."""
    defaults = FoundationSpec()
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="UNet + text encoder training steps")
    parser.add_argument("--source", default=defaults.source, help="'digits' or an ImageFolder path")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: the project cache)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template with {label}")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cache_dir is None:
        args.cache_dir = default_cache_dir()
    spec = dataclasses.replace(defaults, steps=args.steps, source=args.source, image_size=args.image_size,
                               seed=args.seed)
    path = ensure_foundation(spec, args.cache_dir, args.template)
    record = json.loads((path / "quality.json").read_text())
    quality = record["quality"]
    print(f"foundation: {path}")
    print(f"build seconds: {record['build_seconds']:.0f}")
    print(f"class fidelity (mean): {100 * quality['class_fidelity_mean']:.1f}%")
    for name, accuracy in quality["class_fidelity"].items():
        print(f"  {name}: {100 * accuracy:.1f}%")
    print(f"train-on-synthetic / test-on-real: {100 * quality['train_synthetic_test_real_acc']:.1f}%")
    print(f"train-on-real / test-on-real: {100 * quality['train_real_test_real_acc']:.1f}%")


if __name__ == "__main__":
    main()
