"""What a round's client replies become in the run record: errors as one line, bytes, compute times, the fit metrics
and the evaluation metrics of every client pooled (per domain with several clients per domain)."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.common import EvaluateRes, FitRes, Parameters
from flwr.server.client_proxy import ClientProxy

from warmfed_flwr.data.domain_clients import client_domain
from warmfed_flwr.trust import dp
from warmfed_flwr.wire import protocol

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def parameters_bytes(parameters: Parameters) -> int:
    """The bytes of ``parameters`` as they travel."""
    return int(sum(len(t) for t in parameters.tensors))


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error message as one line of at most ``limit`` characters: its start and its end, where a wrapped
    exception (a client's, inside Ray's and Flower's wrappers) keeps its own message."""
    text = " ".join(_ANSI_ESCAPE.sub("", str(error)).split())
    if len(text) <= limit:
        return text
    head = limit // 3
    return f"{text[:head]} ... {text[-(limit - head - 5):]}"


def finite_number(value: Any) -> float | None:
    """A client-reported metric as a float, or None when it is not a finite number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def client_compute_record(results: Sequence[tuple[ClientProxy, FitRes | EvaluateRes]],
                          prefix: str = "client_compute_seconds") -> dict[str, float]:
    """Sum and maximum of the clients' reported ``compute_seconds`` (finite, >= 0) as ``<prefix>_sum`` and
    ``<prefix>_max``; empty when none reports it."""
    seconds = [v for _, res in results
               if (v := finite_number(res.metrics.get(protocol.COMPUTE_SECONDS))) is not None and v >= 0]
    if not seconds:
        return {}
    return {f"{prefix}_sum": sum(seconds), f"{prefix}_max": max(seconds)}


def fit_record(accepted: Sequence[FitRes], results: Sequence[tuple[ClientProxy, FitRes]],
               failed: int) -> dict[str, Any]:
    """A round's fit record: client counts, bytes up and fit metrics (compute time over every client that answered,
    accepted or refused; the train loss, DSD teacher shares and the share of DP-clipped uploads averaged over the
    ``accepted`` ones)."""
    up = [parameters_bytes(res.parameters) for res in accepted]
    losses = [v for res in accepted if (v := finite_number(res.metrics.get("train_loss"))) is not None]
    shares = {key: statistics.fmean(values) for key in ("dsd_share_t1", "dsd_share_t2", dp.CLIPPED_METRIC)
              if (values := [v for res in accepted if (v := finite_number(res.metrics.get(key))) is not None])}
    return {
        **shares,
        "clients_ok": len(accepted),
        "clients_refused": len(results) - len(accepted),
        "clients_failed": failed,
        "bytes_up": sum(up),
        "bytes_up_per_client": max(up, default=0),
        **({"train_loss": float(np.mean(losses))} if losses else {}),
        **client_compute_record(results),
    }


def evaluation_record(results: list[tuple[ClientProxy, EvaluateRes]], clients_per_domain: int = 1) -> dict[str, Any]:
    """Turn every client's evaluation metrics into one round record; with several clients per domain also each
    domain's global accuracy over its clients' test splits (``global_domain_acc_<domain>``, weighted by test size)."""
    record: dict[str, Any] = {}
    total = sum(res.num_examples for _, res in results)
    global_rows = [(res.metrics, res.num_examples) for _, res in results if "global_acc" in res.metrics]
    if global_rows and total:
        record["global_acc_pooled"] = sum(float(m["global_acc"]) * n for m, n in global_rows) / total
        record["global_loss_pooled"] = sum(float(m["global_loss"]) * n for m, n in global_rows) / total
        for metrics, _n in global_rows:
            record[f"global_acc_{metrics[protocol.CLIENT_NAME]}"] = float(metrics["global_acc"])
        if clients_per_domain > 1:
            by_domain: dict[str, list[tuple[float, int]]] = {}
            for metrics, n in global_rows:
                domain = client_domain(str(metrics[protocol.CLIENT_NAME]))
                by_domain.setdefault(domain, []).append((float(metrics["global_acc"]), n))
            record.update({f"global_domain_acc_{domain}": sum(acc * n for acc, n in rows) / tested
                           for domain, rows in by_domain.items() if (tested := sum(n for _, n in rows))})
    personal = {str(res.metrics[protocol.CLIENT_NAME]): float(res.metrics["personal_acc"])
                for _, res in results if "personal_acc" in res.metrics}
    if personal:
        values = list(personal.values())
        record["personal_acc_mean"] = statistics.fmean(values)
        record["personal_acc_std"] = statistics.pstdev(values)
        record.update({f"personal_acc_{name}": acc for name, acc in personal.items()})
    return record
