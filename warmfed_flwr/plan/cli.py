"""``warmfed-plan``: what a run will send, synthesize and hold in memory, and whether it will be refused, before
anything heavy runs (the figures: :mod:`warmfed_flwr.plan.estimate`)."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from warmfed_flwr.config.loading import load_yaml, resolve
from warmfed_flwr.errors import ConfigError, WarmFedError
from warmfed_flwr.plan.estimate import Plan, fmt_bytes, make_plan
from warmfed_flwr.wire import payload

UNSET_PATH = "(not given)"
"""The data.path the plan resolves with when none is given (the known facts then stand in for the data)."""


def parse_pairs(texts: Sequence[str]) -> dict[str, Any]:
    """``k=v`` pairs as Flower reads them ('text' or "text", 3, 0.5, true/false); bare words stay strings."""
    pairs: dict[str, Any] = {}
    for text in texts:
        for item in shlex.split(text, posix=False):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"'{item}' is not key=value; write e.g. train.rounds=3")
            pairs[key.strip()] = _value(value.strip())
    return pairs


def _value(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def render(plan: Plan) -> str:
    """The plan as the lines ``warmfed-plan`` prints."""
    cfg, arch, data = plan.cfg, plan.arch, plan.data
    adapter = payload.schema_bytes(arch.adapter)
    domains = ", ".join(f"{d} {n:,}" for d, n in data.train.items())
    lines = [
        f"warmfed-plan: experiment {cfg.experiment}, algorithm {cfg.algorithm}, {cfg.data.num_clients} clients, "
        + ("round 0 + " if cfg.algorithm in ("warmfed", "fgl") else "") + f"{cfg.train.rounds} rounds",
        f"generator  {cfg.generator.base} = {arch.name}, built on 'meta' (nothing allocated or downloaded): UNet "
        f"{arch.unet_parameters / 1e6:.1f}M, VAE {arch.vae_parameters / 1e6:.1f}M, text encoder "
        f"{arch.text_parameters / 1e6:.1f}M parameters; {arch.image_size} px; embeddings {arch.tokens}x{arch.text_dim}",
        f"adapter    rank {cfg.lora.rank} on {cfg.lora.targets}: {len(arch.adapter)} tensors, {fmt_bytes(adapter)} "
        f"float32, {fmt_bytes(adapter // 2)} float16" if cfg.lora.enabled else "adapter    none (lora.enabled = false)",
        f"data       {cfg.data.source}: {data.classes} classes, {sum(data.images.values()):,} images "
        f"({data.source})",
        f"           train images per client: {domains}",
        f"devices    clients {'GPU' if plan.client_gpu else 'CPU'}, server {'GPU' if plan.server_gpu else 'CPU'} "
        f"(device = {cfg.device}); generator dtype {cfg.generator.dtype} -> {plan.dtype} on the server",
        "",
        f"{'stage':<20} {'each client sends':>18} {'each receives':>15}  what",
    ]
    lines += [f"{name:<20} {fmt_bytes(up):>18} {fmt_bytes(down):>15}  {what}" for name, up, down, what in plan.stages]
    lines += ["", "memory (estimates summed over the stages, not a measured peak; see warmfed_flwr/plan/estimate.py)"]
    for who, items in (("server", plan.server_memory), ("client", plan.client_memory)):
        sums = {where: sum(n for at, _, n in items if at == where) for where in ("GPU", "CPU")}
        lines.append(f"{who}: " + ", ".join(f"{where} {fmt_bytes(n)}" for where, n in sums.items() if n))
        lines += [f"  {where} {fmt_bytes(n):>11}  {what}" for where, what, n in items]
    lines.append("")
    lines += [f"note: {note}" for note in plan.notes]
    lines += [f"REFUSED: {reason}" for reason in plan.refusals]
    lines.append("verdict: " + (f"{len(plan.refusals)} refusal(s): fix them first" if plan.refusals
                                else "no refusal foreseen"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: print the plan of an experiment; exit 1 when a refusal is foreseen."""
    parser = argparse.ArgumentParser(prog="warmfed-plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="an experiment YAML (a path, or a name under conf/)")
    parser.add_argument("--run-config", action="append", default=[], help="'key=value ...' as for flwr run")
    parser.add_argument("--federation-config", action="append", default=[],
                        help="'num-supernodes=N client-resources-num-gpus=0.5 ...' as for flwr run")
    args = parser.parse_args(argv)
    try:
        overrides = {"experiment": args.config, **parse_pairs(args.run_config)}
        if "data.path" not in overrides and not load_yaml(str(overrides["experiment"])).get("data.path"):
            overrides["data.path"] = UNSET_PATH
        plan = make_plan(resolve(overrides), parse_pairs(args.federation_config))
    except WarmFedError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    with contextlib.suppress(BrokenPipeError):
        print(render(plan))
    raise SystemExit(1 if plan.refusals else 0)


if __name__ == "__main__":
    main()
