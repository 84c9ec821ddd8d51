"""Classifier training: BatchNorm statistics frozen or updated while the weights train."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from warmfed_flwr.learning.models import SmallCNN
from warmfed_flwr.learning.training import train_epochs

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    # shifted and scaled away from the BatchNorm defaults (mean 0, var 1), so updated statistics visibly move
    images = 0.5 + 2.0 * torch.rand(16, 3, 32, 32, generator=generator)
    return TensorDataset(images, torch.arange(16) % 3)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _trained(freeze: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], nn.Module]:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3)
    before = _snapshot(model)
    loss = train_epochs(model, _data(), epochs=2, lr=0.05, batch_size=8, device=torch.device("cpu"), seed=0,
                        freeze_bn_stats=freeze)
    assert loss == loss  # not NaN: it trained
    return before, _snapshot(model), model


def _bn_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if k.rsplit(".", 1)[-1] in BN_BUFFERS]


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_stats_keeps_running_statistics_and_trains_the_rest(freeze):
    before, after, model = _trained(freeze)
    bn_keys = _bn_keys(before)
    assert len(bn_keys) == 2 * len(BN_BUFFERS)  # SmallCNN has two BatchNorm2d layers
    unchanged = {k for k in bn_keys if torch.equal(before[k], after[k])}
    if freeze:
        assert unchanged == set(bn_keys)
    else:
        assert not unchanged
        assert all(int(after[k]) == 4 for k in bn_keys if k.endswith("num_batches_tracked"))  # 2 epochs x 2 batches
    conv = [k for k, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert conv and all(not torch.equal(before[f"{k}.weight"], after[f"{k}.weight"]) for k in conv)
    bn = [k for k, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # the affine BatchNorm parameters train in both modes
    assert all(not torch.equal(before[f"{k}.weight"], after[f"{k}.weight"]) for k in bn)
    assert all(not torch.equal(before[f"{k}.bias"], after[f"{k}.bias"]) for k in bn)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_layers_normalise_with_the_statistics_the_model_arrived_with(freeze):
    """Frozen: the training forward pass uses the running statistics (eval mode), not the batch's."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.fill_(0.7)
                module.running_var.fill_(3.0)
    reference = SmallCNN(num_classes=3)
    reference.load_state_dict(model.state_dict())
    data = _data()
    # lr 0 and one full batch: the returned loss is the loss of the forward pass the weights arrived with
    loss = train_epochs(model, data, epochs=1, lr=0.0, momentum=0.0, weight_decay=0.0, batch_size=len(data),
                        device=torch.device("cpu"), seed=0, freeze_bn_stats=freeze)
    with torch.no_grad():
        eval_loss = F.cross_entropy(reference.eval()(data.tensors[0]), data.tensors[1]).item()
    assert (loss == pytest.approx(eval_loss, rel=1e-5)) == freeze
