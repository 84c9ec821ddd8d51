"""DSD, pFedSD, Ditto, FedBN and fine-tuning personalization (methods/self_distillation.py, personalization.py)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, RecordDict
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import TensorDataset

from clients.base import PERSONAL, FederatedClient
from clients.state import load_arrays
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import PersonalizationConfig
from warmfed_flwr.data import ClientSplit
from warmfed_flwr.learning.models import SmallCNN
from warmfed_flwr.learning.training import cross_entropy, predict_logits, train_epochs
from warmfed_flwr.methods.personalization import fedbn_local_keys, merge_fedbn, train_ditto, train_finetune
from warmfed_flwr.methods.self_distillation import (
    LogitPool,
    TeacherSelector,
    distillation_objective,
    gumbel_tau,
    select_teachers,
    train_dsd,
    train_pfedsd,
)
from warmfed_flwr.wire import payload

CPU = torch.device("cpu")
NUM_CLASSES = 4


def _dataset(n: int = 48, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    images = torch.randn(n, 3, 32, 32, generator=gen) * 0.5
    images[:, 0] += labels.view(-1, 1, 1).float()  # learnable signal
    return TensorDataset(images, labels)


def _model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(NUM_CLASSES)


def _predicting(targets: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Random logits whose argmax is ``targets`` (all rows equally confident in distribution)."""
    logits = torch.randn(len(targets), num_classes, generator=gen)
    margin = 1.0 + torch.rand(len(targets), generator=gen)
    logits[torch.arange(len(targets)), targets] = logits.max(dim=1).values + margin
    return logits


# ---- teacher selection ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("right_first", [True, False])
def test_select_teachers_picks_the_right_teacher(right_first: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    n, c = 300, 5
    labels = torch.randint(0, c, (n,), generator=gen)
    wrong_labels = (labels + torch.randint(1, c, (n,), generator=gen)) % c
    right, wrong = _predicting(labels, c, gen), _predicting(wrong_labels, c, gen)
    candidates = torch.stack([right, wrong] if right_first else [wrong, right])
    cfg = PersonalizationConfig()
    teacher, choice = select_teachers(candidates, labels, cfg.tau_start, cfg.selector_steps, cfg.selector_lr, seed=0)
    right_index = 0 if right_first else 1
    assert (choice == right_index).float().mean() > 0.9
    assert (teacher.argmax(1) == labels).float().mean() > 0.9
    assert torch.equal(teacher, candidates[choice, torch.arange(n)])


def test_select_teachers_chooses_per_sample() -> None:
    # Teacher A is right on classes 0-2 only, teacher B on classes 3-4 only: no single teacher wins.
    gen = torch.Generator().manual_seed(2)
    n, c = 400, 5
    labels = torch.randint(0, c, (n,), generator=gen)
    low = labels < 3
    a_pred = torch.where(low, labels, torch.randint(3, 5, (n,), generator=gen))
    b_pred = torch.where(low, torch.randint(0, 3, (n,), generator=gen), labels)
    candidates = torch.stack([_predicting(a_pred, c, gen), _predicting(b_pred, c, gen)])
    _teacher, choice = select_teachers(candidates, labels, tau=1.0, steps=150, lr=0.05, seed=0)
    expected = torch.where(low, 0, 1)
    assert (choice == expected).float().mean() > 0.9


def test_select_teachers_is_deterministic_and_keeps_global_rng() -> None:
    gen = torch.Generator().manual_seed(3)
    candidates = torch.randn(2, 50, 3, generator=gen)
    labels = torch.randint(0, 3, (50,), generator=gen)
    torch.manual_seed(123)
    first = select_teachers(candidates, labels, tau=0.5, steps=20, lr=0.05, seed=7)
    draw_after_selection = torch.rand(1)
    second = select_teachers(candidates, labels, tau=0.5, steps=20, lr=0.05, seed=7)
    assert torch.equal(first[1], second[1]) and torch.equal(first[0], second[0])
    torch.manual_seed(123)
    assert torch.equal(draw_after_selection, torch.rand(1))  # the global RNG was left untouched


def test_selector_handles_one_candidate() -> None:
    selector = TeacherSelector(num_classes=3, num_candidates=1)
    assert selector(torch.randn(10, 1, 3)).shape == (10, 1)
    candidates = torch.randn(1, 10, 3)
    teacher, choice = select_teachers(candidates, torch.zeros(10, dtype=torch.long), tau=1.0, steps=5, lr=0.1, seed=0)
    assert torch.equal(choice, torch.zeros(10, dtype=torch.long))
    assert torch.equal(teacher, candidates[0])
    with pytest.raises(ValueError):
        selector(torch.randn(10, 2, 3))


# ---- objective -----------------------------------------------------------------------------------------------


def test_empty_pool_objective_is_plain_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(4)
    logits, labels = torch.randn(8, 5, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    objective = distillation_objective(None, lam=1.0, temperature=3.0)
    assert objective is cross_entropy
    assert torch.equal(objective(logits, labels, torch.arange(8)), F.cross_entropy(logits, labels))


def test_kl_term_zero_for_identical_teacher_and_scaled_by_lambda() -> None:
    gen = torch.Generator().manual_seed(5)
    logits, labels = torch.randn(3, 5, generator=gen), torch.randint(0, 5, (3,), generator=gen)
    indices = torch.tensor([7, 2, 4])
    table = torch.randn(10, 5, generator=gen)
    table[indices] = logits  # teacher rows are looked up by sample index
    ce = F.cross_entropy(logits, labels)
    same = distillation_objective(table, lam=1.0, temperature=3.0)(logits, labels, indices)
    assert torch.allclose(same, ce, atol=1e-6)
    other = torch.randn(10, 5, generator=gen)
    kl1 = distillation_objective(other, lam=1.0, temperature=3.0)(logits, labels, indices) - ce
    kl2 = distillation_objective(other, lam=2.0, temperature=3.0)(logits, labels, indices) - ce
    assert kl1 > 1e-4
    assert torch.allclose(kl2, 2 * kl1, rtol=1e-5)
    # by hand: T^2 * mean_i KL(p_t || p_s)
    t = 3.0
    p_t = F.softmax(other[indices] / t, dim=1)
    expected = t**2 * (p_t * (p_t.log() - F.log_softmax(logits / t, dim=1))).sum(1).mean()
    assert torch.allclose(kl1, expected, rtol=1e-4)


def test_kl_gradient_does_not_reach_teacher() -> None:
    teacher = torch.randn(4, 3, requires_grad=True)
    student = torch.randn(4, 3, requires_grad=True)
    loss = distillation_objective(teacher, 1.0, 2.0)(student, torch.zeros(4, dtype=torch.long), torch.arange(4))
    loss.backward()
    assert teacher.grad is None and student.grad is not None


# ---- pool and temperature ------------------------------------------------------------------------------------


def test_logit_pool_push_and_round_trip_through_flower_state() -> None:
    a, b, c = (np.full((5, 3), v, dtype=np.float32) for v in (1.0, 2.0, 3.0))
    pool = LogitPool().push(a).push(b).push(c)
    assert [float(e[0, 0]) for e in pool.entries] == [3.0, 2.0]
    arrays = pool.to_arrays()
    assert sorted(arrays) == ["pool.0", "pool.1"]
    record = ArrayRecord({key: Array(value) for key, value in arrays.items()})
    state = {key: value.numpy() for key, value in record.items()}
    state["other.key"] = np.zeros(2)
    restored = LogitPool.from_arrays(state)
    assert len(restored.entries) == 2
    for got, want in zip(restored.entries, pool.entries, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32
    assert LogitPool.from_arrays({}).entries == []
    assert len(LogitPool().push(a, keep=1).push(b, keep=1).entries) == 1
    with pytest.raises(ValueError):
        LogitPool([a, np.zeros((4, 3), np.float32)])


def test_gumbel_tau_anneals_monotonically() -> None:
    taus = [gumbel_tau(r, 5, 1.0, 0.1) for r in range(1, 6)]
    assert taus[0] == pytest.approx(1.0) and taus[-1] == pytest.approx(0.1)
    assert all(x > y for x, y in itertools.pairwise(taus))
    assert all(0.1 <= t <= 1.0 for t in taus)
    assert gumbel_tau(9, 5, 1.0, 0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        gumbel_tau(1, 5, 0.0, 0.1)


# ---- training loops ------------------------------------------------------------------------------------------

TRAIN = {"lr": 0.05, "batch_size": 16, "device": CPU, "seed": 3}


def test_train_dsd_with_empty_pool_equals_cross_entropy_training() -> None:
    data = _dataset()
    cfg = PersonalizationConfig(method="dsd", epochs=2)
    dsd_model, ce_model = _model(), _model()
    pool, metrics = train_dsd(dsd_model, data, LogitPool(), 1, 5, cfg, **TRAIN)
    ce_loss = train_epochs(ce_model, data, epochs=2, **TRAIN)
    for key, value in ce_model.state_dict().items():
        assert torch.equal(dsd_model.state_dict()[key], value), key
    assert metrics["train_loss"] == pytest.approx(ce_loss)
    assert "dsd_share_t1" not in metrics and "dsd_share_t2" not in metrics
    assert len(pool.entries) == 1


def test_train_dsd_over_three_rounds() -> None:
    data = _dataset()
    cfg = PersonalizationConfig(method="dsd", epochs=1, selector_steps=20)
    model, pool = _model(), LogitPool()
    history = []
    for round_idx in (1, 2, 3):
        pool, metrics = train_dsd(model, data, pool, round_idx, 3, cfg, **TRAIN)
        history.append((pool, metrics))
        assert len(pool.entries) == min(round_idx, 2)
        np.testing.assert_allclose(pool.entries[0], predict_logits(model, data, CPU).numpy(), rtol=1e-5, atol=1e-5)
        assert np.isfinite(metrics["train_loss"])
    (_, m1), (p2, m2), (p3, m3) = history
    assert "dsd_share_t1" not in m1
    assert m2["dsd_share_t1"] == 1.0 and m2["dsd_share_t2"] == 0.0
    assert m3["dsd_share_t1"] + m3["dsd_share_t2"] == pytest.approx(1.0)
    labels, samples = data.tensors[1], torch.arange(len(data))
    candidates = torch.stack([torch.from_numpy(e) for e in p2.entries])
    _, choice = select_teachers(candidates, labels, gumbel_tau(3, 3, cfg.tau_start, cfg.tau_end), cfg.selector_steps,
                                cfg.selector_lr, TRAIN["seed"], cfg.selector_sees_label)
    right = candidates.argmax(2) == labels  # [candidate, sample]
    assert m3["dsd_share_t1"] == pytest.approx((choice == 0).float().mean().item())
    assert m3["dsd_teacher_acc"] == pytest.approx(right[choice, samples].float().mean().item()), "chosen teachers' acc"
    np.testing.assert_array_equal(p3.entries[1], p2.entries[0])
    assert m1["dsd_tau"] > m2["dsd_tau"] > m3["dsd_tau"]
    with pytest.raises(ValueError):
        train_dsd(model, _dataset(n=20), pool, 4, 5, cfg, **TRAIN)


def test_dsd_teacher_accuracy_is_that_of_the_teacher_chosen_for_each_sample() -> None:
    """Each of two teachers is right on half of the samples: the selector, which sees the labels, picks the right one
    of each sample, so the chosen teachers are right everywhere while either teacher alone is right on half."""
    data = _dataset()
    labels = data.tensors[1]
    right = 5 * F.one_hot(labels, NUM_CLASSES).float()
    wrong = 5 * F.one_hot((labels + 1) % NUM_CLASSES, NUM_CLASSES).float()
    first_half = (torch.arange(len(labels)) < len(labels) // 2).view(-1, 1)
    pool = LogitPool([torch.where(first_half, right, wrong).numpy(), torch.where(first_half, wrong, right).numpy()])
    _, metrics = train_dsd(_model(), data, pool, 2, 3, PersonalizationConfig(method="dsd"), **TRAIN)
    assert metrics["dsd_teacher_acc"] == 1.0
    assert metrics["dsd_share_t1"] == metrics["dsd_share_t2"] == 0.5


def test_train_dsd_distillation_changes_training() -> None:
    data = _dataset()
    pool = LogitPool([np.random.default_rng(0).normal(size=(48, NUM_CLASSES)).astype(np.float32) * 5])
    plain, distilled = _model(), _model()
    train_dsd(plain, data, pool, 2, 5, PersonalizationConfig(dsd_lambda=0.0), **TRAIN)
    train_dsd(distilled, data, pool, 2, 5, PersonalizationConfig(dsd_lambda=5.0), **TRAIN)
    assert not torch.equal(plain.classifier[-1].weight, distilled.classifier[-1].weight)


def test_train_pfedsd_uses_last_round_only() -> None:
    data = _dataset()
    cfg = PersonalizationConfig(method="pfedsd", epochs=1)
    model = _model()
    pool, m1 = train_pfedsd(model, data, LogitPool(), cfg, **TRAIN)
    assert "dsd_share_t1" not in m1 and len(pool.entries) == 1
    pool, m2 = train_pfedsd(model, data, pool, cfg, **TRAIN)
    assert m2["dsd_share_t1"] == 1.0 and len(pool.entries) == 1
    np.testing.assert_allclose(pool.entries[0], predict_logits(model, data, CPU).numpy(), rtol=1e-5, atol=1e-5)


def _distance(model: torch.nn.Module, anchors: list[torch.Tensor]) -> float:
    return sum(float(((p - a) ** 2).sum()) for p, a in zip(model.parameters(), anchors, strict=True)) ** 0.5


def test_ditto_large_lambda_stays_close_to_global() -> None:
    data = _dataset()
    global_model = _model()
    anchors = [p.detach().clone() for p in global_model.parameters()]
    free, tied = copy.deepcopy(global_model), copy.deepcopy(global_model)
    m_free = train_ditto(free, anchors, data, PersonalizationConfig(epochs=2, ditto_lambda=0.0), **TRAIN)
    m_tied = train_ditto(tied, anchors, data, PersonalizationConfig(epochs=2, ditto_lambda=5.0), **TRAIN)
    assert _distance(tied, anchors) < 0.5 * _distance(free, anchors)
    assert m_tied["ditto_distance"] == pytest.approx(_distance(tied, anchors), rel=1e-4)
    assert m_free["ditto_distance"] > 0
    with pytest.raises(ValueError):
        train_ditto(free, anchors[:-1], data, PersonalizationConfig(), **TRAIN)


def test_finetune_is_plain_cross_entropy_training_of_the_global_model_for_the_configured_epochs() -> None:
    data = _dataset()
    tuned, reference = _model(), _model()
    metrics = train_finetune(tuned, data, PersonalizationConfig(epochs=2), **TRAIN)
    loss = train_epochs(reference, data, epochs=2, **TRAIN)
    assert metrics["train_loss"] == pytest.approx(loss)
    for got, want in zip(tuned.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want)
    untouched = _model()
    assert np.isnan(train_finetune(untouched, data, PersonalizationConfig(epochs=0), **TRAIN)["train_loss"])
    for got, want in zip(untouched.state_dict().values(), _model().state_dict().values(), strict=True):
        torch.testing.assert_close(got, want)


# ---- FedBN ---------------------------------------------------------------------------------------------------


def test_fedbn_local_keys_are_the_batchnorm_entries() -> None:
    entries = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = [f"features.{i}.{e}" for i in (1, 5) for e in entries]
    assert fedbn_local_keys(SmallCNN(NUM_CLASSES)) == expected


def test_merge_fedbn_keeps_local_batchnorm() -> None:
    global_state = {k: v.clone() for k, v in _model(seed=1).state_dict().items()}
    local_model = _model(seed=2)
    train_epochs(local_model, _dataset(), epochs=1, **TRAIN)  # moves BN statistics away from the defaults
    local_state = {k: v.detach().numpy().copy() for k, v in local_model.state_dict().items()}  # as in context.state
    local_keys = set(fedbn_local_keys(local_model))

    target = _model(seed=3)
    merge_fedbn(target, global_state, local_state)
    for key, value in target.state_dict().items():
        want = torch.as_tensor(local_state[key]) if key in local_keys else global_state[key]
        assert torch.equal(value, want), key
    local_mean = torch.as_tensor(local_state["features.1.running_mean"])
    assert not torch.equal(global_state["features.1.running_mean"], local_mean)  # the check above is not vacuous

    merge_fedbn(target, global_state, None)
    for key, value in target.state_dict().items():
        assert torch.equal(value, global_state[key]), key
    with pytest.raises(ValueError):
        merge_fedbn(target, global_state, {"features.1.weight": local_state["features.1.weight"]})


@pytest.mark.parametrize(("method", "start"), [("dsd", "global"), ("dsd", "personal"), ("pfedsd", "personal")])
def test_distillation_student_starts_where_personalization_student_start_says(method: str, start: str) -> None:
    cfg = resolve({"personalization.method": method, "personalization.student-start": start,
                   "personalization.epochs": 0})
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(8, 3, 32, 32, generator=generator), torch.arange(8) % 2
    split = ClientSplit("a", "a", TensorDataset(images, labels), TensorDataset(images[:4], labels[:4]))
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    client = FederatedClient(cfg, ["zero", "one"], split, 0, context, torch.device("cpu"), Path("/nonexistent"))
    global_weights = [np.full_like(w, 0.5) for w in client.get_parameters({})]
    earlier = [np.full_like(w, -0.25) for w in global_weights]
    client.save_personal(earlier)
    client.personalize(global_weights, algo_round=2, total_rounds=5)
    kept = payload.named_to_weights(load_arrays(context, PERSONAL))
    expected = earlier if start == "personal" else global_weights
    assert all(np.array_equal(k, e) for k, e in zip(kept, expected, strict=True))
