"""Classifier factory: pretrained checkpoints with another head."""

import pytest
import torch
from torchvision.models import resnet18

from warmfed_flwr.config.schema import ModelConfig
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.learning.models import build_model


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory):
    """A ResNet-18 state_dict with ImageNet's 1000-class head and 7x7 stem (random weights, nothing downloaded)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18-imagenet.pt"
    torch.save(resnet18(num_classes=1000).state_dict(), path)
    return path


def test_imagenet_resnet_starts_a_ten_class_model_with_a_fresh_head(imagenet_checkpoint):
    model = build_model(ModelConfig(name="resnet18", small_stem=False, pretrained_path=str(imagenet_checkpoint)), 10)
    saved = torch.load(imagenet_checkpoint, weights_only=True)
    own = model.state_dict()
    assert own["fc.weight"].shape == (10, 512)
    assert all(torch.equal(own[key], saved[key]) for key in own if not key.startswith("fc."))


def test_a_stem_mismatch_is_one_line_naming_the_fix(imagenet_checkpoint):
    with pytest.raises(ConfigError, match="conv1.weight.*small-stem=false"):
        build_model(ModelConfig(name="resnet18", small_stem=True, pretrained_path=str(imagenet_checkpoint)), 10)


def test_another_architecture_is_refused(imagenet_checkpoint):
    with pytest.raises(ConfigError, match="lacks 'features.0.weight'"):
        build_model(ModelConfig(name="cnn", pretrained_path=str(imagenet_checkpoint)), 10)
