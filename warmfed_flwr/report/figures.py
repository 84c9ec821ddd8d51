"""Paper-style figures of a set of runs (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.image
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from warmfed_flwr.report.collect import by_variant, finals_frame, is_personal, ok_records, over_seeds, rounds_frame
from warmfed_flwr.report.tables import bytes_cell, client_names

DPI = 120
GRID_DPI = 110
"""The synthetic-image grid at about the images' own resolution (it is the largest file)."""
SYNTHETIC_PREFIX = "synthetic_"
"""Run-directory PNGs of a warm-start method's synthetic images: synthetic_<domain>.png."""


def new_figure(width: float, height: float) -> Figure:
    """A figure drawn on the Agg canvas."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: Path, dpi: int = DPI) -> None:
    """Write ``figure`` as a PNG, trimmed to what is drawn."""
    figure.savefig(path, dpi=dpi, bbox_inches="tight")


def palette(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One colour per variant, the same in every figure."""
    variants = list(by_variant(records))
    colours = colormaps["tab10" if len(variants) <= 10 else "tab20"]
    return {variant: colours(index % colours.N) for index, variant in enumerate(variants)}


def bytes_label(size: float) -> str:
    """An axis tick in B / kB / MB / GB, one significant decimal."""
    return bytes_cell([size]).replace(".00 ", " ")


def accuracy_key(records: list[dict[str, Any]]) -> tuple[str, str]:
    """The headline metric and its axis label: personalized mean for personal runs, else pooled global."""
    if is_personal(records):
        return "personal_acc_mean", "personalized mean accuracy (%)"
    return "global_acc_pooled", "pooled global accuracy (%)"


def legend(axes: Axes, count: int) -> None:
    """A legend under the axes, in up to three columns."""
    axes.legend(fontsize=7, ncol=min(count, 3), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)


def accuracy_per_round(records: list[dict[str, Any]], path: Path) -> str | None:
    """Headline accuracy per round per method: mean over seeds, band from the lowest to the highest seed."""
    key, label = accuracy_key(records)
    stats = over_seeds(rounds_frame(records), key, by=("variant", "round"))
    if stats.empty:
        return None
    figure = new_figure(7, 4.2)
    axes = figure.add_subplot()
    colours = palette(records)
    for variant, rows in stats.groupby("variant", sort=False):
        rows = rows.sort_values("round")
        axes.plot(rows["round"], 100 * rows["mean"], "-o", markersize=3, color=colours[variant], label=variant)
        axes.fill_between(rows["round"], 100 * rows["min"], 100 * rows["max"], color=colours[variant], alpha=0.2,
                          linewidth=0)
    axes.set_xlabel("round")
    axes.set_ylabel(label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    legend(axes, stats["variant"].nunique())
    save(figure, path)
    return f"{label[0].upper()}{label[1:]} per round: mean over seeds, band from the lowest to the highest seed"


def accuracy_vs_upload(records: list[dict[str, Any]], path: Path) -> str | None:
    """Final headline accuracy against the upload per client over all rounds (one point per method)."""
    key, label = accuracy_key(records)
    finals = finals_frame(records)
    points = over_seeds(finals, key).merge(over_seeds(finals, "upload_per_client_total"), on="variant",
                                           suffixes=("_acc", "_up"))
    points = points[points["mean_up"] > 0]
    if points.empty:
        return None
    figure = new_figure(6.5, 4.2)
    axes = figure.add_subplot()
    colours = palette(records)
    for row in points.itertuples():
        below = min(row.std_up, 0.5 * row.mean_up)
        axes.errorbar(row.mean_up, 100 * row.mean_acc, xerr=[[below], [row.std_up]], yerr=100 * row.std_acc,
                      fmt="o", capsize=3, color=colours[row.variant], label=row.variant)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda size, _position: bytes_label(size)))
    axes.xaxis.set_minor_formatter(FuncFormatter(lambda size, _position: bytes_label(size)))
    axes.set_xlabel("upload per client, all rounds (log scale)")
    axes.set_ylabel(f"final {label}")
    axes.grid(alpha=0.3, which="both")
    legend(axes, len(points))
    save(figure, path)
    left_out = [v for v in by_variant(ok_records(records)) if v not in set(points["variant"])]
    caption = f"Final {label} against upload per client over all rounds (mean ± std over seeds)"
    return caption + (f"; no uploads: {', '.join(left_out)}" if left_out else "")


def per_domain(records: list[dict[str, Any]], path: Path) -> str | None:
    """Final accuracy per client domain, one bar per method (mean ± std over seeds)."""
    personal = is_personal(records)
    prefix = "personal_acc_" if personal else "global_acc_"
    domains = client_names(ok_records(records), prefix)
    finals = finals_frame(records)
    variants = list(by_variant(ok_records(records)))
    if not domains or not variants:
        return None
    figure = new_figure(max(6.0, 1.4 * len(domains) + 0.3 * len(variants)), 4.2)
    axes = figure.add_subplot()
    colours, width = palette(records), 0.8 / len(variants)
    for index, variant in enumerate(variants):
        offset, label = (index - (len(variants) - 1) / 2) * width, variant
        for position, domain in enumerate(domains):
            stats = over_seeds(finals[finals["variant"] == variant], f"{prefix}{domain}")
            if stats.empty:
                continue
            axes.bar(position + offset, 100 * stats["mean"].iloc[0], width, yerr=100 * stats["std"].iloc[0],
                     capsize=2, color=colours[variant], label=label)
            label = None
    axes.set_xticks(range(len(domains)), domains)
    what = "personalized model on its own test split" if personal else "global model"
    axes.set_ylabel("final accuracy (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3, axis="y")
    legend(axes, len(variants))
    save(figure, path)
    return f"Final accuracy per client domain ({what}; mean ± std over seeds)"


def domain_order(records: list[dict[str, Any]], names: set[str]) -> list[str]:
    """``names`` in data.domains order, then the rest sorted."""
    order = [d.strip() for r in records for d in str(r.get("domains", "")).split(",") if d.strip()]
    ranked = [name for name in dict.fromkeys(order) if name in names]
    return ranked + sorted(names - set(ranked))


def first_seed_images(group: list[dict[str, Any]]) -> tuple[Any, dict[str, Path]]:
    """The seed and the synthetic_<domain>.png files of the variant's first seed's run directory."""
    first = min(group, key=lambda r: math.inf if r.get("seed") is None else r["seed"])
    files = Path(first["run_dir"]).glob(f"{SYNTHETIC_PREFIX}*.png")
    return first.get("seed"), {f.stem.removeprefix(SYNTHETIC_PREFIX): f for f in sorted(files)}


def synthetic_grid(records: list[dict[str, Any]], path: Path) -> str | None:
    """The synthetic images of every method that wrote them: one row per method, one column per domain."""
    rows = [(variant, *first_seed_images(group)) for variant, group in by_variant(records).items()]
    rows = [row for row in rows if row[2]]
    if not rows:
        return None
    domains = domain_order(records, {domain for _variant, _seed, images in rows for domain in images})
    figure = new_figure(1.9 * len(domains) + 0.6, 2.4 * len(rows) + 0.3)
    grid = figure.subplots(len(rows), len(domains), squeeze=False, gridspec_kw={"wspace": 0.04, "hspace": 0.1})
    for row, (variant, seed, images) in enumerate(rows):
        for column, domain in enumerate(domains):
            axes = grid[row][column]
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_visible(False)
            if domain in images:
                axes.imshow(matplotlib.image.imread(images[domain]))
            if row == 0:
                axes.set_title(domain, fontsize=9)
            if column == 0:
                axes.set_ylabel(f"{textwrap.fill(variant, 20)}\n(seed {seed})", fontsize=8)
    save(figure, path, dpi=GRID_DPI)
    return "Synthetic images per client domain (the first seed's run of each method; one row per class)"


def dsd_shares(records: list[dict[str, Any]], path: Path) -> str | None:
    """DSD teacher shares (round t-1 and t-2) per round, mean over seeds."""
    frame = rounds_frame(records)
    shares = {key: over_seeds(frame, key, by=("variant", "round")) for key in ("dsd_share_t1", "dsd_share_t2")}
    if all(stats.empty for stats in shares.values()):
        return None
    figure = new_figure(7, 4.2)
    axes = figure.add_subplot()
    colours = palette(records)
    for variant in colours:
        for (key, stats), style in zip(shares.items(), ("-o", "--s"), strict=True):
            rows = stats[stats["variant"] == variant].sort_values("round")
            if not rows.empty:
                axes.plot(rows["round"], 100 * rows["mean"], style, markersize=3, color=colours[variant],
                          label=f"{variant}, teacher t-{key[-1]}")
    axes.set_xlabel("round")
    axes.set_ylabel("share of samples (%)")
    axes.set_ylim(0, 100)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    legend(axes, 2)
    save(figure, path)
    return "DSD teacher shares per round: samples taught by the round t-1 / t-2 model (mean over seeds)"


FIGURES: dict[str, Callable[[list[dict[str, Any]], Path], str | None]] = {
    "accuracy_per_round": accuracy_per_round,
    "accuracy_vs_upload": accuracy_vs_upload,
    "final_accuracy_per_domain": per_domain,
    "synthetic_images": synthetic_grid,
    "dsd_shares": dsd_shares,
}
"""File stem -> drawing function (returns the caption, or None when the runs hold nothing to draw)."""


def write_figures(records: list[dict[str, Any]], directory: Path) -> list[tuple[str, Path]]:
    """Draw every figure the runs call for into ``directory`` (removing stale ones); (caption, path) each."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, draw in FIGURES.items():
        path = directory / f"{stem}.png"
        caption = draw(records, path)
        if caption:
            written.append((caption, path))
        else:
            path.unlink(missing_ok=True)
    if not written and not any(directory.iterdir()):
        directory.rmdir()
    return written
