"""The round-0 class check of prompt embeddings (synthesis.check-embedding-classes): real rows, with or without a
client's domain phrase, match their own class; swapped or identical rows are refused in one line."""

import numpy as np
import pytest
import torch

from tests.test_warmfed_strategy import CLASSES, config, uploads  # noqa: F401 - uploads is a fixture
from tests.test_warmfed_strategy import fit_res as round0_res
from tests.test_warmfed_strategy import strategy as round0_strategy
from warmfed_flwr.data.digits import CLASS_NAMES as DIGITS
from warmfed_flwr.errors import PayloadError
from warmfed_flwr.generative.pipeline import load_pipeline
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE, class_prompts, prompt_embeddings
from warmfed_flwr.trust.embedding_classes import class_similarity, mismatched_rows, validate_embedding_classes
from warmfed_flwr.wire import protocol

PHRASES = ["", "mnist", "digits", "fonts", "mnistm", "handwritten digit on a dark background"]


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"))


def embed(pipe, classes: list[str], phrase: str = "") -> np.ndarray:
    return prompt_embeddings(pipe, class_prompts(DEFAULT_TEMPLATE, classes, phrase)).numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("phrase", PHRASES)
def test_real_rows_with_or_without_a_domain_phrase_match_their_own_class(pipe, phrase, dtype):
    reference = embed(pipe, DIGITS)
    uploaded = embed(pipe, DIGITS, phrase).astype(dtype).astype(np.float32)
    similarity = class_similarity(uploaded, reference)
    others = similarity - np.diag(np.full(len(DIGITS), np.inf))
    assert (np.diag(similarity) - others.max(axis=1)).min() > 0.1, "a clear margin, not a near tie"
    assert mismatched_rows(uploaded, reference) == []
    validate_embedding_classes(uploaded, reference, DIGITS, "embeddings", "mnist")


@pytest.mark.parametrize("phrase", ["", "fonts"])
def test_swapped_rows_are_refused_naming_the_rows_and_the_fix(pipe, phrase):
    reference = embed(pipe, DIGITS)
    swapped = embed(pipe, DIGITS, phrase)[[0, 1, 2, 7, 4, 5, 6, 3, 8, 9]]
    assert mismatched_rows(swapped, reference) == [(3, 7), (7, 3)]
    with pytest.raises(PayloadError) as error:
        validate_embedding_classes(swapped, reference, DIGITS, "embeddings", "fonts")
    message = str(error.value)
    assert ("upload from fonts: 'embeddings' rows 3, 7 match the server's prompts of classes 'seven', 'three' best, "
            "not their own ('three', 'seven')") in message
    assert "synthesis.check-embedding-classes = false" in message and "\n" not in message


def test_rows_that_are_all_alike_match_no_class():
    reference = np.random.default_rng(0).normal(size=(3, 4, 8))
    alike = np.repeat(reference[:1], 3, axis=0)
    assert [row for row, _ in mismatched_rows(alike, reference)] == [0, 1, 2]


def test_a_shared_offset_cancels_out_and_one_class_is_not_checked():
    reference = np.random.default_rng(1).normal(size=(4, 3, 8))
    shifted = reference + 50.0 + np.random.default_rng(2).normal(scale=0.1, size=reference.shape)
    assert mismatched_rows(shifted, reference) == []
    assert mismatched_rows(shifted[[1, 0, 2, 3]], reference) == [(0, 1), (1, 0)]
    assert mismatched_rows(reference[:1] * -1, reference[:1]) == []


def test_round_zero_accepts_domain_phrased_rows_and_refuses_swapped_ones(uploads, tiny_pipeline_dir,  # noqa: F811
                                                                         tmp_path):
    strat, recorder = round0_strategy(config(tiny_pipeline_dir, tmp_path), tmp_path, domains=["a", "b"])
    strat.round_zero_schema()
    phrased = {**uploads["a"], protocol.EMBEDDINGS: embed(strat.warm_start.generator(), CLASSES, "mnist")}
    strat.check_upload(1, "a", round0_res(phrased, "a")[1])
    swapped = {**uploads["b"], protocol.EMBEDDINGS: uploads["b"][protocol.EMBEDDINGS][[1, 0, 2]]}
    strat.sampled = ["a", "b"]
    strat._fit_started = 0.0
    parameters, _ = strat.aggregate_fit(1, [round0_res(phrased, "a"), round0_res(swapped, "b")], [])
    assert parameters is not None and set(strat.warm_start.synthetic.sources) == {"a"}
    left_out = {e["domain"]: e["reason"] for e in recorder.events if e["kind"] == "domain_left_out"}
    assert list(left_out) == ["b"] and "rows 0, 1 match the server's prompts of classes 'one', 'zero'" in left_out["b"]


def test_round_zero_class_check_switched_off_accepts_swapped_rows(uploads, tiny_pipeline_dir, tmp_path):  # noqa: F811
    cfg = config(tiny_pipeline_dir, tmp_path, **{"synthesis.check-embedding-classes": False})
    strat, _ = round0_strategy(cfg, tmp_path)
    strat.round_zero_schema()
    swapped = {**uploads["b"], protocol.EMBEDDINGS: uploads["b"][protocol.EMBEDDINGS][[1, 0, 2]]}
    accepted = strat.check_upload(1, "b", round0_res(swapped, "b")[1])
    np.testing.assert_array_equal(accepted[protocol.EMBEDDINGS], swapped[protocol.EMBEDDINGS])
