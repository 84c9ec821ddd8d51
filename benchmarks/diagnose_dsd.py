"""Why does DSD end below pFedSD? The last two rounds of the personalization replayed from finished DSD runs.

For each run (a WarmFed + DSD run directory with its checkpoints), each client and each of the last two rounds r (the
newest checkpoints and client snapshots a run keeps), the student starts from the global model the client received in
round r (server checkpoint of round r-1) and distills for ``personalization.epochs`` on its train split from the
client's own logit pool as of round r-1 (its state snapshot): the same starting point for every teacher rule, so that
only the rule differs. Each rule runs ``--trials`` times with different training seeds (trial 0 uses the run's own
seed) to measure how much a round's result moves by chance. The replay runs on the CPU (trial 0 matches a CPU run up
to floating-point summation order). Accuracies are on each client's test split, the split the personalized tables
report; this diagnostic explains those tables and chooses no default.

Usage (from the repository root; run directories keep ``checkpoints/`` until pruned):

    python -m benchmarks.diagnose_dsd RUN_DIR [RUN_DIR ...] --trials 3 --out results/diagnose_dsd.md
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from clients.base import POOL
from clients.state import ClientStateStore, client_state_dir
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.data import load_benchmark
from warmfed_flwr.learning.models import build_model
from warmfed_flwr.learning.training import evaluate, resolve_device, set_weights, train_epochs
from warmfed_flwr.methods.self_distillation import LogitPool, distillation_objective, gumbel_tau, select_teachers
from warmfed_flwr.records.checkpoint import checkpoint_dir, read_checkpoint
from warmfed_flwr.runtime import cache_dir

Rule = Callable[[LogitPool, torch.Tensor, int, int, ExperimentConfig, int], tuple[torch.Tensor | None, float]]
"""(pool, train labels, round, total rounds, config, seed) -> (teacher logits or None, share of round t-2)."""


def selector(tau_end: float, sees_label: bool) -> Rule:
    """DSD's learned per-sample choice, annealed to ``tau_end`` in the last round."""

    def rule(pool: LogitPool, labels: torch.Tensor, round_idx: int, total: int, cfg: ExperimentConfig,
             seed: int) -> tuple[torch.Tensor | None, float]:
        p = cfg.personalization
        tau = gumbel_tau(round_idx, total, p.tau_start, tau_end)
        candidates = torch.stack([torch.from_numpy(e) for e in pool.entries])
        teacher, choice = select_teachers(candidates, labels, tau, p.selector_steps, p.selector_lr, seed, sees_label)
        return teacher, float((choice == 1).float().mean())

    return rule


def fixed(slot: int | None) -> Rule:
    """One teacher for every sample: round t-1 (slot 0, pFedSD), round t-2 (slot 1), or none (cross-entropy)."""

    def rule(pool: LogitPool, labels: torch.Tensor, round_idx: int, total: int, cfg: ExperimentConfig,
             seed: int) -> tuple[torch.Tensor | None, float]:
        if slot is None:
            return None, 0.0
        return torch.from_numpy(pool.entries[slot]), float(slot == 1)

    return rule


RULES: dict[str, Rule] = {
    "pFedSD: teacher t-1": fixed(0),
    "DSD (defaults: selector sees the label, tau-end 0.1)": selector(0.1, True),
    "DSD, tau-end 1.0": selector(1.0, True),
    "DSD, selector without the label": selector(0.1, False),
    "teacher t-2 only": fixed(1),
    "no teacher (cross-entropy only)": fixed(None),
}


def client_pool(run_dir: Path, client: str, algo_round: int) -> LogitPool:
    """The client's DSD logit pool after ``algo_round`` (its state snapshot; CheckpointError when there is none)."""
    return LogitPool.from_arrays(ClientStateStore(client_state_dir(run_dir, client)).load(algo_round).get(POOL, {}))


def global_received(run_dir: Path, algo_round: int) -> list[np.ndarray]:
    """The global model the clients received in ``algo_round`` (the server checkpoint of the round before)."""
    for path in checkpoint_dir(run_dir).glob("round-*.npz"):
        checkpoint = read_checkpoint(path)
        if checkpoint.algorithm_round == algo_round - 1:
            return checkpoint.weights
    raise FileNotFoundError(f"{run_dir} keeps no server checkpoint of algorithm round {algo_round - 1}")


def replay_run(run_dir: Path, trials: int) -> dict[tuple[str, int], dict[str, list]]:
    """(rule, round) -> one entry per client and trial in each list: 'acc' (test), 'teacher_acc' (train),
    't2_share', 'client' and 'trial'."""
    flat = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg = resolve({k: v for k, v in flat.items() if k not in ("output-dir", "run-name")})
    if cfg.train.rounds < 3:
        raise SystemExit(f"{run_dir}: train.rounds = {cfg.train.rounds}; the replay needs at least 3 rounds")
    device = resolve_device("cpu")
    benchmark = load_benchmark(cfg.data, cfg.seed, cache_dir(cfg))
    results: dict[tuple[str, int], dict[str, list]] = {}
    for round_idx in (cfg.train.rounds - 1, cfg.train.rounds):
        weights = global_received(run_dir, round_idx)
        for partition_id, client in enumerate(benchmark.clients):
            pool = client_pool(run_dir, client.name, round_idx - 1)
            labels = torch.as_tensor([int(client.train[i][1]) for i in range(len(client.train))])
            for name, rule in RULES.items():
                cell = results.setdefault((name, round_idx), {"acc": [], "teacher_acc": [], "t2_share": [],
                                                             "client": [], "trial": []})
                for trial in range(trials):
                    seed = cfg.seed * 1000 + partition_id + round_idx + 100_000 * trial
                    teacher, share = rule(pool, labels, round_idx, cfg.train.rounds, cfg, seed)
                    student = build_model(cfg.model, len(benchmark.class_names))
                    set_weights(student, weights)
                    p = cfg.personalization
                    train_epochs(student, client.train, epochs=p.epochs, lr=cfg.train.lr,
                                 batch_size=cfg.train.batch_size, device=device, seed=seed,
                                 objective=distillation_objective(teacher, p.dsd_lambda, p.dsd_temperature))
                    cell["acc"].append(evaluate(student, client.test, device)[1])
                    cell["teacher_acc"].append(float("nan") if teacher is None
                                               else float((teacher.argmax(1) == labels).float().mean()))
                    cell["t2_share"].append(share)
                    cell["client"].append(client.name)
                    cell["trial"].append(trial)
        print(f"{run_dir.name}: round {round_idx} replayed", flush=True)
    return results


def summarize(per_run: list[dict[tuple[str, int], dict[str, list]]], trials: int) -> list[str]:
    """Table rows: per rule and round, the personalized mean over clients (mean ± std over runs x trials), the
    spread between trials of one run, the digits client, the teacher's train accuracy and the share of round t-2."""
    rows = []
    for name, round_idx in per_run[0]:
        means, spreads, digits, teacher, share = [], [], [], [], []
        for results in per_run:
            cell = results[(name, round_idx)]
            by_trial = [statistics.mean(a for a, t in zip(cell["acc"], cell["trial"], strict=True) if t == k)
                        for k in range(trials)]
            means += by_trial
            spreads.append(max(by_trial) - min(by_trial))
            digits += [a for a, c in zip(cell["acc"], cell["client"], strict=True) if c == "digits"]
            teacher += [a for a in cell["teacher_acc"] if not np.isnan(a)]
            share += cell["t2_share"]
        rows.append(f"| {name} | {round_idx} | {pct(means)} | {100 * statistics.mean(spreads):.1f} | {pct(digits)} | "
                    + f"{pct(teacher)} | " + f"{100 * statistics.mean(share):.0f} % |")
    return rows


def pct(values: list[float]) -> str:
    """'mean ± population std' in %, '-' for no values."""
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.pstdev(values):.1f}" if values else "-"


def main() -> None:
    """Replay every run and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="WarmFed + DSD run directories with checkpoints/")
    parser.add_argument("--trials", type=int, default=3, help="training seeds per rule, client and round")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    per_run = [replay_run(run, args.trials) for run in args.runs]
    lines = [
        "# DSD diagnostic: the teacher rule, replayed", "",
        f"Command: `python -m benchmarks.diagnose_dsd {' '.join(str(r) for r in args.runs)} --trials {args.trials} "
        f"--out {args.out}`", "",
        __doc__.split("\n\n")[1].replace("\n", " "), "",
        "Personalized mean = mean over clients of test accuracy (%), mean ± std over runs x trials; trial spread = "
        "max - min over the trials of one run, mean over runs; teacher train acc = the chosen teacher's accuracy on "
        "the train labels; t-2 share = the samples taught by round t-2.", "",
        "| teacher rule | round | personalized mean | trial spread | digits | teacher train acc | t-2 share |",
        "|---|---|---|---|---|---|---|",
        *summarize(per_run, args.trials),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
