"""GPU smoke test: one paper-style WarmFed config end to end at reduced size, without Flower.

Clients with random images (a few classes, a few images per class) run round 0 (LoRA fine-tune and class
embeddings: ``client_upload``), one after the other or, with ``--concurrent``, at once in processes of their own on
the same device (as Ray runs two client actors at 0.5 GPU each); the server synthesizes their sets at
``data.image-size``, releases its generator and trains the warm start; then one globalization round (client
fine-tunes, FedAvg, server fine-tune). Every stage prints its wall time and, on CUDA, the peak GPU memory allocated
and reserved in it (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, reset per stage, summed over
devices) and the memory the caching allocator still reserves after it; on CPU the peak RSS of the stage. Then LoRA
seconds per step, synthesis images per second, and what ``warmfed-plan`` says for the same config and clients:
upload bytes and synthetic images (must agree) and its memory estimates against the measured peaks.

    python benchmarks/gpu_smoke.py --base stabilityai/stable-diffusion-2-1-base --device cuda
    warmfed-build-random-sd --arch sd21base --out /tmp/sd21base-random   # no download: random weights, real shapes
    python benchmarks/gpu_smoke.py --base /tmp/sd21base-random --device cuda --clients 2 --concurrent
    python benchmarks/gpu_smoke.py --base /abs/sd-2-1-base --device cuda --set synthesis.devices=cuda:0,cuda:1
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import multiprocessing
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import TensorDataset

from warmfed_flwr.config.loading import load_yaml, resolve
from warmfed_flwr.config.schema import ExperimentConfig, flatten
from warmfed_flwr.data import ClientSplit
from warmfed_flwr.generative.random_sd import random_card
from warmfed_flwr.learning.training import evaluate, get_weights, seed_everything, set_weights
from warmfed_flwr.methods.round0_upload import client_upload, default_domain_phrase
from warmfed_flwr.methods.warmstart import SyntheticWarmStart, globalize_client
from warmfed_flwr.plan.data_facts import DataFacts
from warmfed_flwr.plan.estimate import Plan, make_plan
from warmfed_flwr.wire import payload

GIB = 2**30
REDUCED = {"data.source": "digits", "data.partition": "domain", "lora.steps": 20, "lora.batch-size": 4,
           "synthesis.images-per-class": 4, "synthesis.batch-size": 8, "synthesis.subset-ratio": 0.5,
           "synthesis.quality-check": False, "warmfed.warm-epochs": 1, "train.rounds": 1, "train.min-fit-clients": 1}
"""What shrinks a paper config to a smoke test (the generator, sampler, LoRA batch and classifier stay the paper's)."""
SIZING_KEYS = ("experiment", "data.image-size", "model.name", "generator.dtype", "lora.rank", "lora.steps",
               "lora.batch-size", "synthesis.steps", "synthesis.guidance", "synthesis.images-per-class",
               "synthesis.batch-size", "synthesis.upload-dtype")
"""Config keys the smoke's summary (``SmokeResult.config``) records."""
PLAN_TOLERANCE = 0.25
"""A plan memory estimate within this share of the measured peak counts as right."""


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: /proc/self/clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """Peak RSS in bytes since the last reset (Linux VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Row:
    """One stage: wall time and peak memory (CUDA: allocated and reserved, summed over devices; CPU: RSS)."""

    name: str
    seconds: float
    peak: int
    cuda: bool
    peak_reserved: int = 0
    reserved_after: int = 0

    def text(self) -> str:
        """The line the smoke prints for this stage."""
        if self.cuda:
            memory = (f"peak GPU memory {self.peak / GIB:6.2f} GiB allocated, {self.peak_reserved / GIB:6.2f} GiB "
                      f"reserved; reserved after {self.reserved_after / GIB:6.2f} GiB")
        else:
            memory = f"peak RSS {self.peak / GIB:6.2f} GiB"
        return f"stage {self.name:<28} {self.seconds:8.1f} s   {memory}"


class StageMeter:
    """Measures stages (GPU memory on CUDA, RSS on CPU) and, when ``echo``, prints each one."""

    def __init__(self, device: torch.device, echo: bool = True) -> None:
        self.cuda = device.type == "cuda"
        self.echo = echo
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        """Record (and print) a stage measured here or in another process."""
        self.rows.append(row)
        if self.echo:
            print(row.text(), flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the block as stage ``name``."""
        gc.collect()
        count = torch.cuda.device_count() if self.cuda else 0
        if self.cuda:
            torch.cuda.empty_cache()
            for index in range(count):
                torch.cuda.synchronize(index)
                torch.cuda.reset_peak_memory_stats(index)
        else:
            _reset_peak_rss()
        started = time.perf_counter()
        yield
        for index in range(count):
            torch.cuda.synchronize(index)
        seconds = time.perf_counter() - started
        if self.cuda:
            self.add(Row(name, seconds, sum(torch.cuda.max_memory_allocated(i) for i in range(count)), True,
                         sum(torch.cuda.max_memory_reserved(i) for i in range(count)),
                         sum(torch.cuda.memory_reserved(i) for i in range(count))))
        else:
            self.add(Row(name, seconds, _peak_rss(), False))


def gpu_memory() -> tuple[int, int]:
    """(in use, total) bytes of every visible GPU together, all processes included, as the driver counts them."""
    info = [torch.cuda.mem_get_info(index) for index in range(torch.cuda.device_count())]
    return sum(total - free for free, total in info), sum(total for _, total in info)


@contextmanager
def device_memory_peak(cuda: bool) -> Iterator[list[int]]:
    """Yields a one-item list that ends as the peak of ``gpu_memory()[0]``, sampled every 50 ms; stays 0 when not
    ``cuda``."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], gpu_memory()[0])
            if stop.wait(0.05):
                return

    thread = threading.Thread(target=sample, daemon=True) if cuda else None
    if thread is not None:
        thread.start()
    try:
        yield peak
    finally:
        stop.set()
        if thread is not None:
            thread.join()


def random_split(name: str, classes: int, per_class: int, size: int, seed: int) -> ClientSplit:
    """A client with ``per_class`` random train images per class and half as many test images."""
    generator = torch.Generator().manual_seed(seed)
    n_train, n_test = classes * per_class, classes * max(1, per_class // 2)
    images = torch.rand(n_train + n_test, 3, size, size, generator=generator)
    labels = torch.arange(n_train + n_test) % classes
    return ClientSplit(name, name, TensorDataset(images[:n_train], labels[:n_train]),
                       TensorDataset(images[n_train:], labels[n_train:]))


def smoke_config(experiment: str, base: str, device: str, overrides: dict[str, Any], clients: int = 2
                 ) -> ExperimentConfig:
    """The experiment's config reduced to a smoke test with ``clients`` clients (its first domains), ``overrides``
    last."""
    flat = {"experiment": experiment, **REDUCED, "data.num-clients": clients, "generator.base": base,
            "device": device, **overrides}
    domains = str(load_yaml(experiment).get("data.domains", ExperimentConfig().data.domains)).split(",")
    flat.setdefault("data.domains", ",".join(d.strip() for d in domains[:clients]))
    return resolve(flat)


def client_round0(cfg: ExperimentConfig, split_args: tuple[str, int, int, int, int], class_names: list[str],
                  cache_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, float]]:
    """One client's round 0 (``client_upload`` on ``random_split(*split_args)``) as one measured stage: its row (as
    a dict, so it crosses processes), upload and timings. ``--concurrent`` runs it in a process of its own."""
    client = random_split(*split_args)
    meter = StageMeter(torch.device(cfg.device), echo=False)
    with meter.stage(f"client_upload[{client.name}]"):
        named, timings = client_upload(cfg, client, class_names, torch.device(cfg.device), cache_dir,
                                       default_domain_phrase(cfg.generator, client.domain))
    return asdict(meter.rows[0]), named, timings


def concurrent_round0(cfg: ExperimentConfig, splits: list[tuple[str, int, int, int, int]], class_names: list[str],
                      cache_dir: Path) -> list[tuple[dict[str, Any], dict[str, np.ndarray], dict[str, float]]]:
    """Every client's round 0 at once, each in a spawned process of its own on ``cfg.device``."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(splits), mp_context=context) as pool:
        futures = [pool.submit(client_round0, cfg, split, class_names, cache_dir / split[0]) for split in splits]
        return [future.result() for future in futures]


@dataclass
class PlanCheck:
    """One figure both ``warmfed-plan`` and the smoke know: the plan's value, the measured one, and the verdict."""

    what: str
    planned: float
    measured: float
    unit: str
    exact: bool

    @property
    def ok(self) -> bool:
        """Exact figures must be equal; estimates within PLAN_TOLERANCE of the measured value."""
        if self.exact:
            return self.planned == self.measured
        return abs(self.planned - self.measured) <= PLAN_TOLERANCE * self.measured

    def text(self) -> str:
        """The line the smoke prints for this check."""
        if self.exact:
            verdict = "agree" if self.ok else "DIFFER"
            return (f"plan check {self.what}: plan {self.planned:,.0f} {self.unit}, measured {self.measured:,.0f}: "
                    f"{verdict}")
        ratio = self.planned / self.measured if self.measured else float("inf")
        verdict = "within" if self.ok else "NOT within"
        return (f"plan check {self.what}: plan {self.planned / GIB:.2f} GiB, measured {self.measured / GIB:.2f} GiB "
                f"(x{ratio:.2f}): {verdict} {PLAN_TOLERANCE:.0%}")


@dataclass
class SmokeResult:
    """Everything the smoke measured, as ``--json`` writes it."""

    base: str
    device: str
    random_weights: dict[str, Any] | None
    clients: int
    concurrent: bool
    config: dict[str, Any]
    """The config keys that size the work (see :data:`SIZING_KEYS`), classes and images per class and client."""
    generator_size: int
    rows: list[Row]
    lora_seconds: list[float]
    synthetic_images: int
    synthesis_seconds: float
    round0_seconds: float
    round0_device_peak: int
    device_memory: int
    """Memory of every visible GPU together (0 on CPU)."""
    checks: list[PlanCheck] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.synthetic_images / self.synthesis_seconds if self.synthesis_seconds else 0.0

    @property
    def total_seconds(self) -> float:
        """Wall time of the run: round 0 (its clients in turn or at once), then the server's and later stages."""
        return self.round0_seconds + sum(r.seconds for r in self.rows if not r.name.startswith("client_upload["))


def smoke_plan(cfg: ExperimentConfig, clients: list[ClientSplit], classes: int) -> Plan:
    """``warmfed-plan`` for the smoke's config and its random clients (counted as they are)."""
    data = DataFacts(classes, {c.domain: len(c.train) + len(c.test) for c in clients},  # type: ignore[arg-type]
                     {c.domain: len(c.train) for c in clients}, "the smoke's random clients")  # type: ignore[arg-type]
    return make_plan(cfg, {"num-supernodes": len(clients)}, data)


def plan_checks(plan: Plan, result: SmokeResult, uploads: list[dict[str, np.ndarray]]) -> list[PlanCheck]:
    """The plan's upload bytes (the largest client's, as sent) and synthetic images against the smoke's and, on CUDA,
    its GPU memory estimates against the measured peaks (a client's round 0; the server's load and synthesis)."""
    wire = [payload.nbytes(list(payload.cast_floats(named, plan.cfg.synthesis.upload_dtype).values()))
            for named in uploads]
    checks = [PlanCheck("upload bytes per client", plan.upload_bytes, max(wire), "B", exact=True),
              PlanCheck("synthetic images", plan.synthetic_images, result.synthetic_images, "images", exact=True)]
    if not result.device_memory:
        return checks
    client_peak = max(row.peak for row in result.rows if row.name.startswith("client_upload["))
    server_peak = max(row.peak for row in result.rows if row.name in ("server_load", "synthesis"))
    return checks + [
        PlanCheck("client GPU memory (round 0)", sum(n for at, _, n in plan.client_memory if at == "GPU"),
                  client_peak, "B", exact=False),
        PlanCheck("server GPU memory (load + synthesis)", sum(n for at, _, n in plan.server_memory if at == "GPU"),
                  server_peak, "B", exact=False),
    ]


def run(cfg: ExperimentConfig, classes: int, per_class: int, cache_dir: Path, output_dir: Path,
        concurrent: bool = False) -> SmokeResult:
    """Round 0 and one globalization round on random clients, stage by stage, checked against the plan."""
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    meter = StageMeter(device)
    class_names = [f"class{i}" for i in range(classes)]
    splits = [(domain, classes, per_class, cfg.data.image_size, cfg.seed + i)
              for i, domain in enumerate(cfg.data.domain_list())]
    clients = [random_split(*split) for split in splits]
    card = random_card(Path(cfg.generator.base))
    print(f"generator {cfg.generator.base} on {device}"
          + (f" (random weights {card}: timing only)" if card else "")
          + f", {len(clients)} clients x {classes} classes x {per_class} images at {cfg.data.image_size} px, "
          f"model {cfg.model.name}, round 0 " + ("at once, one process per client" if concurrent else "in turn"),
          flush=True)
    started = time.perf_counter()
    with device_memory_peak(meter.cuda and concurrent) as round0_peak:
        if concurrent:
            done = concurrent_round0(cfg, splits, class_names, cache_dir)
        else:
            done = [client_round0(cfg, split, class_names, cache_dir / split[0]) for split in splits]
    round0_seconds = time.perf_counter() - started
    for row, _, _ in done:
        meter.add(Row(**row))
    uploads = [(client.name, named) for client, (_, named, _) in zip(clients, done, strict=True)]
    with meter.stage("server_load"):
        warm_start = SyntheticWarmStart(cfg, class_names, device, cache_dir / "server", output_dir)
    generator_size = warm_start.generator().unet.config.sample_size * warm_start.generator().vae_scale_factor
    with meter.stage("synthesis"):
        synthetic = warm_start.build_synthetic(uploads)
    with meter.stage("release_generator"):
        warm_start.release_generator()
    with meter.stage("warm_start"):
        warm = warm_start.train_warm_start()
    with meter.stage("globalization_round"):
        model = copy.deepcopy(warm_start.model)
        updates = []
        for index, client in enumerate(clients):
            set_weights(model, warm)
            globalize_client(model, warm_start.subset, client, cfg, device, cfg.seed * 1000 + index + 1)
            updates.append(([w.copy() for w in get_weights(model)], len(client.train)))
        total = sum(n for _, n in updates)
        averaged = [sum(w[i] * (n / total) for w, n in updates) for i in range(len(warm))]
        final = warm_start.finetune(averaged, 1, [w for w, _ in updates])
    set_weights(model, final)
    accuracy = [evaluate(model, client.test, device)[1] for client in clients]
    print(f"synthetic images {len(synthetic.labels)}, subset {len(warm_start.subset)}, global accuracy on random "
          f"test images {', '.join(f'{a:.2f}' for a in accuracy)}", flush=True)
    flat = flatten(cfg.model_dump())
    sizing = {key: flat[key] for key in SIZING_KEYS} | {"classes": classes, "per-class": per_class}
    result = SmokeResult(
        cfg.generator.base, str(device), card, len(clients), concurrent, sizing, generator_size, meter.rows,
        [t.get("lora_seconds", 0.0) for _, _, t in done], len(synthetic.labels),
        next(r.seconds for r in meter.rows if r.name == "synthesis"), round0_seconds, round0_peak[0],
        gpu_memory()[1] if meter.cuda else 0)
    result.checks = plan_checks(smoke_plan(cfg, clients, classes), result, [named for _, named in uploads])
    return result


def report(result: SmokeResult) -> list[str]:
    """The summary lines printed after the stages."""
    lines = []
    for seconds in result.lora_seconds:
        if seconds:
            steps = result.config["lora.steps"]
            lines.append(f"LoRA {steps} steps x batch {result.config['lora.batch-size']} at {result.generator_size} "
                         f"px: {seconds:.1f} s, {seconds / steps:.3f} s/step")
    if result.concurrent:
        lines.append(f"round 0 of {result.clients} clients at once: {result.round0_seconds:.1f} s wall"
                     + (f", GPU memory in use at peak (all processes) {result.round0_device_peak / GIB:.2f} of "
                        f"{result.device_memory / GIB:.2f} GiB" if result.device_memory else ""))
    lines.append(f"synthesis {result.synthetic_images} images at {result.config['data.image-size']} px in "
                 f"{result.synthesis_seconds:.1f} s: {result.images_per_second:.2f} images/s")
    lines += [check.text() for check in result.checks]
    lines.append(f"total {result.total_seconds:.1f} s")
    return lines


def result_json(result: SmokeResult) -> dict[str, Any]:
    """``result`` as plain JSON values, with images per second, each check's verdict and text, and the lines of
    :func:`report`."""
    return {**asdict(result), "images_per_second": result.images_per_second, "total_seconds": result.total_seconds,
            "checks": [{**asdict(check), "ok": check.ok, "text": check.text()} for check in result.checks],
            "report": report(result)}


def main(argv: list[str] | None = None) -> SmokeResult:
    """Parse arguments, run the smoke test, print its summary and (``--json``) write it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="stabilityai/stable-diffusion-2-1-base",
                        help="generator: hub id or local diffusers directory (e.g. from warmfed-build-random-sd)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--experiment", default="paper/pacs", help="the paper config to shrink")
    parser.add_argument("--clients", type=int, default=2, help="clients (the experiment's first domains)")
    parser.add_argument("--concurrent", action="store_true",
                        help="run the clients' round 0 at once, one process each, on the same device")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=8, help="train images per class and client")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    parser.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.sets)}
    cfg = smoke_config(args.experiment, args.base, args.device, overrides, args.clients)
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as scratch:
        cache = args.cache_dir or Path(scratch) / "cache"
        result = run(cfg, args.classes, args.per_class, cache, Path(scratch) / "run", args.concurrent)
    for line in report(result):
        print(line, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result_json(result), indent=1))
    return result


if __name__ == "__main__":
    main()
