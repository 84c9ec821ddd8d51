"""The Flower ServerApp: read the config, build one strategy, run the rounds."""

from __future__ import annotations

from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import ServerApp

from strategies.base import RecordingFedAvg
from strategies.baselines import CentralizedStrategy, FedAvgStrategy, FedProxStrategy, LocalOnlyStrategy
from strategies.checkpointing import with_checkpoints
from warmfed_flwr import actor_recovery
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.data import Benchmark, load_clients
from warmfed_flwr.learning.models import seeded_model
from warmfed_flwr.learning.training import get_weights, resolve_device, seed_everything
from warmfed_flwr.methods.centralized import CentralizedTrainer
from warmfed_flwr.records.results import RunRecorder
from warmfed_flwr.runtime import cache_dir, one_line_errors, run_dir, show_logs_in_flower_output
from warmfed_flwr.trust import dp

WARM_START = ("warmfed", "fgl")
"""Algorithms run by WarmFedStrategy. FGL has no strategy of its own: it is WarmFed with the settings in
config.loading.FGL_DIFFERENCES, which resolve() applies for algorithm = fgl."""
PLAIN = {"fedavg": FedAvgStrategy, "fedprox": FedProxStrategy, "local": LocalOnlyStrategy}


def build_strategy(cfg: ExperimentConfig, benchmark: Benchmark, recorder: RunRecorder) -> RecordingFedAvg:
    """The configured algorithm's strategy, with the initial global model.

    The generative stack is imported only by the algorithms that use it.
    """
    device = resolve_device(cfg.device)
    initial = ndarrays_to_parameters(get_weights(seeded_model(cfg.model, len(benchmark.class_names), cfg.seed)))
    common = {"cfg": cfg, "recorder": recorder, "num_rounds": num_server_rounds(cfg), "initial_parameters": initial}
    if cfg.algorithm in WARM_START:
        from strategies.warmfed import WarmFedStrategy
        from warmfed_flwr.methods.warmstart import SyntheticWarmStart

        warm_start = SyntheticWarmStart(cfg, benchmark.class_names, device, cache_dir(cfg), recorder.directory)
        tests = {client.name: client.test for client in benchmark.clients} if cfg.synthesis.quality_check else {}
        return WarmFedStrategy(**common, warm_start=warm_start, domains=[client.name for client in benchmark.clients],
                               quality_tests=tests)
    if cfg.algorithm == "centralized":
        return CentralizedStrategy(**common, trainer=CentralizedTrainer(cfg, benchmark, device))
    return PLAIN[cfg.algorithm](**common)


def num_server_rounds(cfg: ExperimentConfig) -> int:
    """Flower rounds: the warm-start algorithms spend one extra round (round 0) on uploads."""
    return cfg.train.rounds + (1 if cfg.algorithm in WARM_START else 0)


def round_timeout(cfg: ExperimentConfig) -> float | None:
    """Seconds a round waits for client replies (None: forever); a late client counts as failed."""
    return cfg.train.round_timeout or None


@one_line_errors
def server_fn(context: Context) -> ServerAppComponents:
    """Validate the config, load class names, build the strategy.

    The clients' splits come memory-mapped from the partition cache (built here on first use): only what the strategy
    reads (test splits for the synthetic-quality check, train splits for centralized training) is read from disk.
    """
    show_logs_in_flower_output()
    cfg = resolve(dict(context.run_config))
    actor_recovery.install()
    seed_everything(cfg.seed)
    benchmark = load_clients(cfg.data, cfg.seed, cache_dir(cfg))
    budget = dp.privacy_budget(cfg, len(benchmark.class_names))
    recorder = RunRecorder(run_dir(cfg), cfg.to_flat(), privacy_budget=budget)
    strategy = with_checkpoints(build_strategy(cfg, benchmark, recorder), cfg.resume)
    config = ServerConfig(num_rounds=num_server_rounds(cfg), round_timeout=round_timeout(cfg))
    return ServerAppComponents(strategy=strategy, config=config)


app = ServerApp(server_fn=server_fn)
