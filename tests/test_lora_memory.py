"""Client LoRA reads its training set in bounded batches at the generator's native size, whatever the item sizes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from tests.sd_shaped import build_sd_shaped_pipeline
from warmfed_flwr.config.schema import LoraConfig
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative import images
from warmfed_flwr.generative.diffusion import TrainingLatents, encode_latent_stats
from warmfed_flwr.generative.images import training_batches, training_images
from warmfed_flwr.generative.lora import finetune_lora
from warmfed_flwr.generative.tiny_architecture import build_tiny_pipeline

NAMES = ["square", "bar"]
TEMPLATE = "a photo of a {label}"
SIZES = [(64, 64), (40, 40), (96, 96), (48, 80), (64, 64), (120, 72), (32, 32), (64, 64), (80, 80), (56, 104)]


class RecordingDataset(Dataset):
    """(image, label) items of per-item sizes, float in [0,1] or uint8; records every index read."""

    def __init__(self, items: list[tuple[torch.Tensor, int]]) -> None:
        self.items = items
        self.calls: list[int] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.calls.append(index)
        return self.items[index]


def mixed_dataset(labels: list[int] | None = None) -> RecordingDataset:
    """Ten images of ``SIZES``, every other one uint8 (0..255), the rest float in [0,1]."""
    generator = torch.Generator().manual_seed(0)
    items = []
    for i, (height, width) in enumerate(SIZES):
        image = torch.rand((3, height, width), generator=generator)
        if i % 2:
            image = (image * 255).round().to(torch.uint8)
        items.append((image, labels[i] if labels else i % len(NAMES)))
    return RecordingDataset(items)


@pytest.fixture(scope="module")
def sd_pipe():
    return build_sd_shaped_pipeline()


def test_finetune_lora_encodes_bounded_native_size_batches(sd_pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "IMAGE_BATCH", 3)
    seen: list[tuple[int, ...]] = []
    encode = sd_pipe.vae.encode

    def recording_encode(x: torch.Tensor, *args, **kwargs):
        seen.append(tuple(x.shape))
        return encode(x, *args, **kwargs)

    monkeypatch.setattr(sd_pipe.vae, "encode", recording_encode)
    dataset = mixed_dataset()
    state = finetune_lora(sd_pipe, dataset, NAMES, TEMPLATE, LoraConfig(rank=4, steps=3, batch_size=4), seed=0)
    assert state and all(bool(torch.isfinite(v).all()) for v in state.values())
    assert all(shape[1:] == (3, 64, 64) for shape in seen)
    assert max(shape[0] for shape in seen) <= 3 < len(dataset)
    assert sum(shape[0] for shape in seen) == len(dataset)
    assert sorted(dataset.calls) == list(range(len(dataset)))


def test_batches_resize_each_item_and_read_uint8(sd_pipe) -> None:
    dataset = mixed_dataset()
    data = TrainingLatents.encode_batches(sd_pipe.vae, training_batches(dataset, NAMES, 64, "LoRA"), len(dataset))
    assert data.mean.shape == (len(dataset), 4, 8, 8) and data.labels.tolist() == [i % 2 for i in range(10)]
    for i, (image, _) in enumerate(dataset.items):
        as_float = image.float() / 255 if image.dtype == torch.uint8 else image
        mean, std = encode_latent_stats(sd_pipe.vae, images.resize_to(as_float[None], 64))
        torch.testing.assert_close(data.mean[i:i + 1], mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(data.std[i:i + 1], std, rtol=1e-4, atol=1e-5)


def test_batch_limit_bounds_native_size_pixels() -> None:
    assert images.batch_limit(32) == images.IMAGE_BATCH == 256
    assert images.batch_limit(512) == 8 and images.batch_limit(768) == 3 and images.batch_limit(4096) == 1


def test_labels_are_checked_on_mixed_size_datasets(sd_pipe) -> None:
    bad = mixed_dataset(labels=[0, 1, 0, 1, 2, 0, 1, 0, 1, 0])
    with pytest.raises(GeneratorError, match=r"LoRA labels span 0\.\.2 but 2 class names"):
        finetune_lora(sd_pipe, bad, NAMES, TEMPLATE, LoraConfig(rank=4, steps=5, batch_size=2), seed=0)
    with pytest.raises(GeneratorError, match="empty"):
        finetune_lora(sd_pipe, RecordingDataset([]), NAMES, TEMPLATE, LoraConfig(rank=4, steps=1), seed=0)
    assert not any(sd_pipe.get_list_adapters().values())


def test_tiny_path_latents_unchanged() -> None:
    """At the tiny foundation's native 32 px the batched latents equal the whole-set encoding bit for bit."""
    pipe = build_tiny_pipeline(seed=0)
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.rand((300, 3, 32, 32), generator=generator), torch.arange(300) % 3)
    names = ["zero", "one", "two"]
    batched = TrainingLatents.encode_batches(pipe.vae, training_batches(dataset, names, 32, "LoRA"), len(dataset))
    whole = TrainingLatents.encode(pipe.vae, *training_images(dataset, names, 32, "LoRA"))
    assert torch.equal(batched.mean, whole.mean) and torch.equal(batched.std, whole.std)
    assert torch.equal(batched.labels, whole.labels) and batched.scaling == whole.scaling


def test_lora_encodes_at_most_steps_times_batch_images() -> None:
    """A client with more images than LoRA can draw encodes a seeded random steps x batch-size of them."""
    from torch.utils.data import TensorDataset

    from warmfed_flwr.generative.lora import lora_images

    dataset = TensorDataset(torch.zeros(100, 3, 4, 4), torch.arange(100) % 2)
    small = LoraConfig(steps=3, batch_size=4)
    chosen = lora_images(dataset, small, seed=0)
    assert len(chosen) == 12 and list(chosen.indices) == sorted(set(chosen.indices))
    assert list(chosen.indices) == list(lora_images(dataset, small, seed=0).indices)
    assert list(chosen.indices) != list(lora_images(dataset, small, seed=1).indices)
    assert lora_images(dataset, LoraConfig(steps=25, batch_size=4), seed=0) is dataset
