"""model.normalize (ImageNet mean/std inside the model) and train.augment (flip-crop on training batches)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import ModelConfig
from warmfed_flwr.learning.models import IMAGENET_MEAN, IMAGENET_STD, seeded_model
from warmfed_flwr.learning.training import get_weights, train_epochs

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_imagenet_normalisation_is_the_models_first_layer(name):
    plain_cfg = ModelConfig(name=name, small_stem=False)
    plain = seeded_model(plain_cfg, 5, seed=0).eval()
    normed = seeded_model(plain_cfg.model_copy(update={"normalize": "imagenet"}), 5, seed=0).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert not torch.allclose(normed(x), plain(x))
        torch.testing.assert_close(normed(x), plain((x - mean) / std))
    assert len(normed.state_dict()) == len(plain.state_dict())


def test_normalize_and_augment_are_off_by_default():
    cfg = resolve({})
    assert (cfg.model.normalize, cfg.train.augment) == ("none", "none")


class Recorder(nn.Module):
    """A linear classifier that keeps every input batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def batches(augment: str, seed: int = 0) -> tuple[torch.Tensor, list]:
    model = Recorder()
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    dataset = TensorDataset(images, torch.arange(16) % 2)
    train_epochs(model, dataset, epochs=1, lr=0.1, batch_size=16, device=CPU, seed=seed, augment=augment)
    return torch.cat(model.seen), get_weights(model)


def test_flip_crop_changes_training_batches_reproducibly():
    plain, _ = batches("none")
    augmented, _ = batches("flip-crop")
    again, _ = batches("flip-crop")
    assert plain.shape == augmented.shape
    assert not torch.equal(plain, augmented)
    assert torch.equal(augmented, again)
    assert not torch.equal(augmented, batches("flip-crop", seed=1)[0])


def test_no_augmentation_sees_the_dataset_as_is():
    seen, _ = batches("none")
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert sorted(map(tuple, seen.flatten(1).tolist())) == sorted(map(tuple, images.flatten(1).tolist()))
