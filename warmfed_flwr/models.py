"""Classifier factory: a small CNN for the CPU default and torchvision's ResNet-18."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

from warmfed_flwr.config import ModelConfig
from warmfed_flwr.errors import ConfigError


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


def seeded_model(cfg: ModelConfig, num_classes: int, seed: int) -> nn.Module:
    """:func:`build_model` with initial weights drawn from ``seed`` alone, whatever drew from torch's RNG before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg, num_classes)


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the configured classifier, loading ``cfg.pretrained_path`` when set."""
    if cfg.name == "cnn":
        model: nn.Module = SmallCNN(num_classes)
    else:
        model = resnet18(num_classes=num_classes)
        if cfg.small_stem:
            model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
    if cfg.pretrained_path:
        try:
            state = torch.load(cfg.pretrained_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(
                f"config key 'model.pretrained-path' = '{cfg.pretrained_path}' cannot be read ({exc}); "
                "give a torch state_dict file saved with torch.save"
            ) from exc
        model.load_state_dict(state)
    return model
