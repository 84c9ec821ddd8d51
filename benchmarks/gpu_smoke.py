"""GPU smoke test: one paper-style WarmFed config end to end at reduced size, without Flower.

Two clients with random images (a few classes, a few images per class) run round 0 (LoRA fine-tune and class
embeddings: ``client_upload``); the server synthesizes their sets, releases its generator and trains the warm start;
then one globalization round (client fine-tunes, FedAvg, server fine-tune). Every stage prints its wall time and, on
CUDA, the peak GPU memory allocated in it (``torch.cuda.max_memory_allocated``, reset per stage, summed over
devices) and the memory the caching allocator still reserves after it; on CPU the peak RSS of the stage.

    python benchmarks/gpu_smoke.py --base stabilityai/stable-diffusion-2-1-base --device cuda
    python benchmarks/gpu_smoke.py --base /abs/sd-2-1-base --device cuda --set synthesis.devices=cuda:0,cuda:1
"""

from __future__ import annotations

import argparse
import copy
import gc
import resource
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import TensorDataset

from warmfed_flwr.config import ExperimentConfig, load_yaml, resolve
from warmfed_flwr.data import ClientSplit
from warmfed_flwr.training import evaluate, get_weights, seed_everything, set_weights
from warmfed_flwr.warmstart import SyntheticWarmStart, client_upload, default_domain_phrase, globalize_client

GIB = 2**30
REDUCED = {"data.num-clients": 2, "data.source": "digits", "data.partition": "domain", "lora.steps": 20,
           "lora.batch-size": 4, "synthesis.images-per-class": 4, "synthesis.batch-size": 8,
           "synthesis.subset-ratio": 0.5, "synthesis.quality-check": False, "warmfed.warm-epochs": 1, "train.rounds": 1,
           "train.min-fit-clients": 1}
"""What shrinks a paper config to a smoke test (the generator, sampler and classifier stay the paper's)."""


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


class StageMeter:
    """Prints each stage's time and peak memory (GPU memory on CUDA, RSS on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.rows: list[tuple[str, float, int]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the block as stage ``name``."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            for index in range(torch.cuda.device_count()):
                torch.cuda.synchronize(index)
                torch.cuda.reset_peak_memory_stats(index)
        else:
            _reset_peak_rss()
        started = time.perf_counter()
        yield
        if self.cuda:
            count = torch.cuda.device_count()
            for index in range(count):
                torch.cuda.synchronize(index)
            peak = sum(torch.cuda.max_memory_allocated(i) for i in range(count))
            reserved = sum(torch.cuda.memory_reserved(i) for i in range(count))
            memory = f"peak GPU memory {peak / GIB:6.2f} GiB, reserved after {reserved / GIB:6.2f} GiB"
        else:
            peak = _peak_rss()
            memory = f"peak RSS {peak / GIB:6.2f} GiB"
        seconds = time.perf_counter() - started
        self.rows.append((name, seconds, peak))
        print(f"stage {name:<28} {seconds:8.1f} s   {memory}", flush=True)


def random_split(name: str, classes: int, per_class: int, size: int, seed: int) -> ClientSplit:
    """A client with ``per_class`` random train images per class and half as many test images."""
    generator = torch.Generator().manual_seed(seed)
    n_train, n_test = classes * per_class, classes * max(1, per_class // 2)
    images = torch.rand(n_train + n_test, 3, size, size, generator=generator)
    labels = torch.arange(n_train + n_test) % classes
    return ClientSplit(name, name, TensorDataset(images[:n_train], labels[:n_train]),
                       TensorDataset(images[n_train:], labels[n_train:]))


def smoke_config(experiment: str, base: str, device: str, overrides: dict[str, Any]) -> ExperimentConfig:
    """The experiment's config reduced to a smoke test, with ``overrides`` last."""
    flat = {"experiment": experiment, **REDUCED, "generator.base": base, "device": device, **overrides}
    domains = str(load_yaml(experiment).get("data.domains", ExperimentConfig().data.domains)).split(",")
    flat.setdefault("data.domains", ",".join(d.strip() for d in domains[:2]))
    return resolve(flat)


def run(cfg: ExperimentConfig, classes: int, per_class: int, cache_dir: Path, output_dir: Path) -> StageMeter:
    """Round 0 and one globalization round on two random clients, stage by stage."""
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    meter = StageMeter(device)
    class_names = [f"class{i}" for i in range(classes)]
    clients = [random_split(domain, classes, per_class, cfg.data.image_size, cfg.seed + i)
               for i, domain in enumerate(cfg.data.domain_list())]
    print(f"generator {cfg.generator.base} on {device}, {len(clients)} clients x {classes} classes x {per_class} "
          f"images at {cfg.data.image_size} px, model {cfg.model.name}", flush=True)
    uploads = []
    for client in clients:
        with meter.stage(f"client_upload[{client.name}]"):
            named, _ = client_upload(cfg, client, class_names, device, cache_dir / client.name,
                                     default_domain_phrase(cfg.generator, client.domain))
        uploads.append((client.name, named))
    with meter.stage("server_load"):
        warm_start = SyntheticWarmStart(cfg, class_names, device, cache_dir / "server", output_dir)
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
    return meter


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the smoke test."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="stabilityai/stable-diffusion-2-1-base",
                        help="generator: hub id or local diffusers directory")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--experiment", default="paper/pacs", help="the paper config to shrink")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=8, help="train images per class and client")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary directory")
    parser.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.sets)}
    cfg = smoke_config(args.experiment, args.base, args.device, overrides)
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as scratch:
        cache = args.cache_dir or Path(scratch) / "cache"
        meter = run(cfg, args.classes, args.per_class, cache, Path(scratch) / "run")
    print(f"total {sum(seconds for _, seconds, _ in meter.rows):.1f} s", flush=True)


if __name__ == "__main__":
    main()
