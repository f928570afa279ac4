"""Figures: one seaborn theme; each function takes a tidy DataFrame, returns the figure, and saves
the PNG and the CSV behind it under runs/<profile>/figures/."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from gendiv import runs
from gendiv.config import Config

SPLIT_ORDER = ["id", "ood_near", "ood_far"]
SPLIT_LABELS = {"id": "ID", "ood_near": "OOD-near", "ood_far": "OOD-far"}


def set_theme() -> None:
    """The book's one theme."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 130, "savefig.bbox": "tight"})


def save(fig: plt.Figure, frame: pd.DataFrame, name: str, cfg: Config) -> Path:
    """Save ``fig`` as figures/<name>.png and ``frame`` as figures/<name>.csv."""
    out = runs.figures_dir(cfg)
    runs.write_csv(out / f"{name}.csv", frame)
    with runs.atomic_path(out / f"{name}.png") as tmp:
        fig.savefig(tmp, format="png")
    return out / f"{name}.png"


def grouped_bars(frame: pd.DataFrame, x: str, y: str, hue: str, *, name: str, cfg: Config,
                 xlabel: str, ylabel: str, title: str, ylim: tuple[float, float] | None = None,
                 order: list[str] | None = None, hue_order: list[str] | None = None) -> plt.Figure:
    """Bars of ``y`` by ``x`` and ``hue`` (one value per bar), with the value printed on top."""
    set_theme()
    n_x = len(order) if order is not None else frame[x].nunique()
    fig, ax = plt.subplots(figsize=(max(7.5, 1.1 * n_x + 1), 3.8))  # room for each group's labels
    sns.barplot(frame, x=x, y=y, hue=hue, order=order, hue_order=hue_order, ax=ax, errorbar=None)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=7 if n_x > 6 else 8, padding=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(title=hue.replace("_", " "), fontsize=8, title_fontsize=9, loc="lower right")
    fig.tight_layout()
    save(fig, frame, name, cfg)
    return fig


def judge_checks_figure(frame: pd.DataFrame, cfg: Config) -> plt.Figure:
    """Reference-preferred rate per variant (corrupted references, then extractive baselines) and
    split (results/judge_checks.csv)."""
    frame = frame.assign(split=frame["split"].map(SPLIT_LABELS).fillna(frame["split"]))
    return grouped_bars(frame, "variant", "reference_preferred_rate", "split", name="judge_checks",
                        cfg=cfg, xlabel="corrupted reference, or extractive baseline from the post",
                        ylabel="reference preferred (share of posts)",
                        title="The gold judge against corrupted references and copies of the post",
                        ylim=(0, 1.08))


def shift_figure(frame: pd.DataFrame, cfg: Config) -> plt.Figure:
    """Shift measures of each test split against the ID training data (results/splits.csv)."""
    measures = ["vocab_overlap_with_id", "type_overlap_with_id", "predicate_overlap_with_id",
                "embedding_distance_from_id"]
    tests = frame[frame["role"] == "test"]
    long = tests.melt(id_vars=["split"], value_vars=[m for m in measures if m in tests], var_name="measure",
                      value_name="value").dropna()
    long["split"] = long["split"].map(SPLIT_LABELS).fillna(long["split"])
    long["measure"] = long["measure"].str.replace("_", " ")
    return grouped_bars(long, "measure", "value", "split", name="split_shift", cfg=cfg,
                        xlabel="", ylabel="value (share, or cosine distance)",
                        title="How far each test split is from the ID training data", ylim=(0, 1.1))


def curves(frame: pd.DataFrame, x: str, y: str, *, name: str, cfg: Config, xlabel: str, ylabel: str,
           title: str, hue: str | None = None, logy: bool = False) -> plt.Figure:
    """Training curves: ``y`` against ``x`` (one line per ``hue``), NaN rows dropped."""
    set_theme()
    frame = frame.dropna(subset=[x, y]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    sns.lineplot(frame, x=x, y=y, hue=hue, ax=ax, marker="o" if len(frame) < 40 else None)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    fig.tight_layout()
    save(fig, frame, name, cfg)
    return fig


def bars_with_intervals(frame: pd.DataFrame, x: str, y: str, hue: str, *, name: str, cfg: Config,
                        xlabel: str, ylabel: str, title: str, low: str = "ci_low", high: str = "ci_high",
                        order: list[str] | None = None, hue_order: list[str] | None = None,
                        chance: float | None = None) -> plt.Figure:
    """Bars of ``y`` by ``x`` and ``hue`` with their (precomputed) confidence intervals."""
    set_theme()
    order = order or list(dict.fromkeys(frame[x]))
    hue_order = hue_order or list(dict.fromkeys(frame[hue]))
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(hue_order)
    palette = sns.color_palette(n_colors=len(hue_order))
    for j, h in enumerate(hue_order):
        sub = frame[frame[hue] == h].set_index(x).reindex(order)
        pos = [i - 0.4 + width * (j + 0.5) for i in range(len(order))]
        err = [(sub[y] - sub[low]).clip(lower=0).fillna(0), (sub[high] - sub[y]).clip(lower=0).fillna(0)]
        ax.bar(pos, sub[y], width=width * 0.95, color=palette[j], label=str(h), yerr=err, capsize=3)
    ax.set_xticks(range(len(order)), [SPLIT_LABELS.get(o, o) for o in order])
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8, loc="best")
    why = empty_bars_reason(frame, y, ylabel)
    if why:  # bars of height zero draw nothing: say so on the figure rather than show an empty frame
        ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", wrap=True, fontsize=10,
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "grey"})
    fig.tight_layout()
    save(fig, frame, name, cfg)
    return fig


def empty_bars_reason(frame: pd.DataFrame, y: str, ylabel: str) -> str:
    """A sentence for a bar chart with nothing to show (every value 0 or missing), from its
    numbers; empty when some bar has a height."""
    values = pd.to_numeric(frame[y], errors="coerce")
    if values.notna().any() and (values.fillna(0) != 0).any():
        return ""
    what = ylabel.split(" (")[0]
    if values.isna().all():
        return f"No {what} could be measured: every value is missing."
    return f"Every bar is 0: the {what} is 0 for every group ({len(values)} of them), so there is nothing to draw."


def scatter(frame: pd.DataFrame, x: str, y: str, hue: str, *, name: str, cfg: Config, xlabel: str,
            ylabel: str, title: str) -> plt.Figure:
    """A scatter of ``y`` against ``x`` coloured by ``hue``."""
    set_theme()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sns.scatterplot(frame, x=x, y=y, hue=hue, ax=ax, s=14, alpha=0.6)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()
    save(fig, frame, name, cfg)
    return fig


def panels(frame: pd.DataFrame, x: str, measures: dict[str, str], *, name: str, cfg: Config, xlabel: str,
           title: str, hue: str | None = None, ncols: int = 3, markers: bool = False) -> plt.Figure:
    """Small multiples: one line panel per measure (``measures`` maps column to axis label);
    ``markers`` marks each point (when each is a run of its own)."""
    set_theme()
    measures = {k: v for k, v in measures.items() if k in frame}
    nrows = -(-len(measures) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax, (col, label) in zip(axes.flat, measures.items()):
        sns.lineplot(frame, x=x, y=col, hue=hue, ax=ax, legend=ax is axes.flat[0] and hue is not None,
                     marker="o" if markers else None)
        ax.set(xlabel=xlabel, ylabel="", title=label)
        ax.title.set_size(10)
    for ax in list(axes.flat)[len(measures):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    cols = [x] + ([hue] if hue else []) + list(measures)
    save(fig, frame[cols], name, cfg)
    return fig


def tradeoff(frame: pd.DataFrame, x: str, y: str, *, hue: str, size: str, col: str, name: str, cfg: Config,
             xlabel: str, ylabel: str, title: str) -> plt.Figure:
    """One scatter panel per ``col`` value: ``y`` against ``x``, points coloured by ``hue`` and
    sized by ``size`` (the KL sweep: performance against diversity, one point per coefficient)."""
    set_theme()
    grid = sns.relplot(frame, x=x, y=y, hue=hue, size=size, col=col, kind="scatter", height=3.2, aspect=1.0,
                       sizes=(30, 200), facet_kws={"sharex": False})
    grid.set_axis_labels(xlabel, ylabel)
    grid.figure.suptitle(title, y=1.03)
    save(grid.figure, frame, name, cfg)
    return grid.figure
