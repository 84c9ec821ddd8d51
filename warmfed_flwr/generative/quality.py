"""Quality figures of a generator on real images: class fidelity and train-on-synthetic/test-on-real accuracy."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from torch.utils.data import Dataset, TensorDataset

from warmfed_flwr.config.schema import ModelConfig
from warmfed_flwr.generative.images import dataset_tensors
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE, class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import synthesize
from warmfed_flwr.learning.models import seeded_model
from warmfed_flwr.learning.training import evaluate, predict_logits, resolve_device, train_epochs

logger = logging.getLogger(__name__)


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
    domain_phrase: str = "",
) -> dict[str, Any]:
    """Class fidelity and train-on-synthetic/test-on-real accuracy of the generator on real images.

    A classifier trained on ``real`` scores the generated images per class (fidelity); a classifier trained on the
    generated images is tested on ``holdout`` (default: a seeded fifth of ``real``, the rest training the judge).
    Pass as ``holdout`` real images the generator never saw, or the figures include memorisation. The prompts carry
    ``domain_phrase`` when given (the style phrase of ``real``, for a foundation trained on restyled images).
    """
    device = device or resolve_device("auto")
    start = time.perf_counter()
    if holdout is None:
        real_train, real_test = split_holdout(real, 0.2, seed)
    else:
        real_train, real_test = TensorDataset(*dataset_tensors(real)), TensorDataset(*dataset_tensors(holdout))
    size = int(real_train.tensors[0].shape[-1])
    embeddings = prompt_embeddings(pipe, class_prompts(template, class_names, domain_phrase))
    images, labels = synthesize(pipe, embeddings, images_per_class, steps, guidance, batch_size=64, seed=seed,
                                size=size)
    synthetic = TensorDataset(images, labels)
    num_classes = len(class_names)
    train_kwargs = {"epochs": classifier_epochs, "lr": 0.01, "batch_size": 32, "device": device, "seed": seed}
    judge = seeded_model(ModelConfig(), num_classes, seed)
    train_epochs(judge, real_train, **train_kwargs)
    _, real_accuracy = evaluate(judge, real_test, device)
    predicted = predict_logits(judge, synthetic, device).argmax(1)
    per_class = {
        name: float((predicted[labels == c] == c).float().mean()) for c, name in enumerate(class_names)
    }
    student = seeded_model(ModelConfig(), num_classes, seed + 1)
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
        "domain_phrase": domain_phrase,
        "quality_seconds": time.perf_counter() - start,
    }
    logger.info(
        "foundation quality: class fidelity %.1f%%, train-on-synthetic/test-on-real %.1f%% (real/real %.1f%%)",
        100 * quality["class_fidelity_mean"], 100 * tstr_accuracy, 100 * real_accuracy,
    )
    return quality
