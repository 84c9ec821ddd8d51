"""Classifier factory: a small CNN for the CPU default and torchvision's ResNet-18, optionally behind a fixed
input normalisation (ImageNet's mean and std, what ImageNet-pretrained weights expect)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

from warmfed_flwr.config.schema import ModelConfig
from warmfed_flwr.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers, with BatchNorm (FedBN keeps those local)."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Normalized(nn.Module):
    """``model`` behind a fixed per-channel ``(x - mean) / std`` of its [0, 1] inputs, as its first layer.

    mean and std are non-persistent buffers: they move with the model but are neither saved nor sent.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def seeded_model(cfg: ModelConfig, num_classes: int, seed: int) -> nn.Module:
    """:func:`build_model` with initial weights drawn from ``seed`` alone, whatever drew from torch's RNG before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg, num_classes)


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the configured classifier, loading ``cfg.pretrained_path`` when set; ``cfg.normalize = imagenet``
    puts ImageNet's normalisation in front of it (the weights file is for the bare classifier)."""
    if cfg.name == "cnn":
        model: nn.Module = SmallCNN(num_classes)
    else:
        model = resnet18(num_classes=num_classes)
        if cfg.small_stem:
            model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
    if cfg.pretrained_path:
        load_pretrained(model, cfg)
    if cfg.normalize == "imagenet":
        model = Normalized(model, IMAGENET_MEAN, IMAGENET_STD)
    return model


def load_pretrained(model: nn.Module, cfg: ModelConfig) -> None:
    """Load ``cfg.pretrained_path`` into ``model``; a classification head of another class count stays fresh.

    The head is the model's last layer (its last two state entries: ResNet's ``fc``, the CNN's final Linear), so an
    ImageNet ResNet-18 checkpoint starts a 10-class model. Any other missing, extra or differently shaped entry is
    refused with one line naming it.
    """
    where = f"config key 'model.pretrained-path' = '{cfg.pretrained_path}'"
    try:
        state = torch.load(cfg.pretrained_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"{where} cannot be read ({exc}); give a state_dict file saved with torch.save") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{where} holds a {type(state).__name__}, not a state_dict; save model.state_dict()")
    own = model.state_dict()
    head = set(list(own)[-2:])
    stem_hint = "; set model.small-stem=false for an ImageNet checkpoint" if cfg.name == "resnet18" else ""
    for key, value in own.items():
        if key not in state and key not in head:
            raise ConfigError(f"{where} lacks '{key}'; it was saved from another architecture than model.name")
        if key in state and key not in head and tuple(state[key].shape) != tuple(value.shape):
            raise ConfigError(f"{where}: '{key}' has shape {tuple(state[key].shape)}, the model {tuple(value.shape)}"
                              + stem_hint)
    extra = [key for key in state if key not in own]
    if extra:
        raise ConfigError(f"{where} has {len(extra)} entries the model lacks, e.g. '{extra[0]}'; check model.name")
    kept = {k: v for k, v in state.items() if k not in head or tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(kept, strict=False)
