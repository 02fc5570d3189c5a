"""Figures: one style per method configuration (colour and marker, enough for 14+ methods), curves as the
mean over seeds with a band, integer epoch ticks, titles naming the task, student, profile and every
deviation from the profile, a forest plot of Δ vs the baseline, and the t-SNE coloured by class."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MARKERS = "osD^vP*Xh<>p"
# 24 colours chosen greedily for distance from each other (CIE76 ΔE >= 30 between any two, computed once from
# matplotlib's named colours; no grey: the baseline is drawn grey) with a lightness that shows on white
# (25 < L* < 68); a method keeps its slot
_COLOURS = [
    "#1f77b4",
    "#fe0002",
    "#5cb200",
    "#0804f9",
    "#fe01b1",
    "#653700",
    "#42b395",
    "#d5869d",
    "#1d5dec",
    "#cb9d06",
    "#751973",
    "#044a05",
    "#be013c",
    "#00555a",
    "#fc824a",
    "#cb00f5",
    "#b2996e",
    "#6f7c00",
    "#bf77f6",
    "#85a3b2",
    "#01a049",
    "#a87dc2",
    "#5d21d0",
    "#ff69af",
]
# a metric's name as an axis reads it
AXIS_LABELS = {
    "val_top1": "validation top-1 (%)",
    "test_top1": "test top-1 (%)",
    "val_eer": "validation EER (%)",
    "term_ce": "task cross-entropy (train)",
    "train_loss": "training loss",
}


def axis_label(metric: str) -> str:
    return AXIS_LABELS.get(metric, metric.replace("_", " "))


def styles(labels: list[str]) -> dict[str, dict]:
    """A distinct (colour, marker) pair per label (24 colours x 12 markers, the two cycling out of step),
    fixed by the method's place in the registry, so a method looks the same in every figure; further
    configurations of a method (`kd (temperature=1)`) and methods from outside the registry (plugins) take
    the next free slots after the registry's."""
    from benchmark.registry import METHODS

    order = {m: i for i, m in enumerate(METHODS.names())}
    taken: set[int] = set()
    out = {}
    for lab in sorted(labels, key=lambda lab: (order.get(lab.split(" ")[0], len(order)), lab)):
        i = order.get(lab.split(" ")[0])
        if i is None or i in taken:  # a plugin method, or another configuration: the next free slot after the registry
            i = len(order)
            while i in taken:
                i += 1
        taken.add(i)
        out[lab] = {"color": _COLOURS[i % len(_COLOURS)], "marker": MARKERS[i % len(MARKERS)]}
    return out


def title(fig, text: str) -> None:
    """The figure's title, wrapped to the figure's width (about 14 characters an inch at this size), so that a
    one-panel figure's long title is not cut at both sides; its top 6 points below the figure's edge, whatever
    the figure's height (tight_layout reserves the title's height from the top edge: at matplotlib's default
    y = 0.98, a tall figure's title sat lower than that and ran across the top row's panel titles)."""
    fig.suptitle(
        "\n".join(textwrap.wrap(text, max(40, min(110, int(fig.get_figwidth() * 14))))),
        fontsize=9,
        y=1 - 6 / 72 / fig.get_figheight(),
        va="top",
    )


def save(fig, path: Path, outside_legend: bool = False) -> Path:
    """tight layout, 110 dpi; `outside_legend`: the saved area grows to hold a legend beside the axes."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, **({"bbox_inches": "tight"} if outside_legend else {}))
    plt.close(fig)
    return path


def _band(ax, per: list[pd.Series], **style):
    runs = [s for s in per if not s.empty]
    if not runs:
        return
    frame = pd.concat(runs, axis=1)
    mean = frame.mean(axis=1)
    ax.plot(mean.index, mean.values, lw=1.4, ms=3, **style)
    if frame.shape[1] > 1:
        ax.fill_between(mean.index, frame.min(axis=1), frame.max(axis=1), color=style["color"], alpha=0.15)


def curves(
    series: dict[str, dict[str, list[pd.Series]]],
    panels: list[tuple[str, str]],
    heading: str,
    path: Path,
    baseline: str = "baseline",
    ncols: int = 4,
) -> Path:
    """Small multiples: series[label][metric] holds one per-epoch Series per seed; one panel per configuration
    and metric, the configuration in its colour (mean over seeds, band: lowest to highest seed) over the
    baseline in grey, on a shared y axis per metric, so that no line hides another."""
    st = styles(list(series))
    labels = [lab for lab in series if lab != baseline] or list(series)
    ncols = min(ncols, len(labels))
    nrows = -(-len(labels) // ncols)
    fig, axes = plt.subplots(
        nrows * len(panels), ncols, figsize=(3.2 * ncols, 2.5 * nrows * len(panels)), squeeze=False, sharex=True
    )
    for p, (metric, ylabel) in enumerate(panels):
        block = axes[p * nrows : (p + 1) * nrows].ravel()
        for ax in block[1:]:
            ax.sharey(block[0])
        for ax, label in zip(block, labels):
            if baseline in series and label != baseline:
                _band(ax, series[baseline].get(metric, []), color="0.55", marker="", label=baseline)
            per = series[label].get(metric, [])
            n = sum(not s.empty for s in per)
            _band(ax, per, label=f"{label} (n={n})", **st[label])
            ax.set_title(f"{label} (n={n})", fontsize=8, color=st[label]["color"])
            ax.set_ylabel(ylabel, fontsize=7), ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        for ax in block[len(labels) :]:
            ax.axis("off")
        for ax in block[-ncols:]:
            ax.set_xlabel("epoch", fontsize=7)
    title(fig, heading + (f"; grey: {baseline}" if baseline in series else ""))
    return save(fig, path)


def forest(rows: list[tuple[str, object]], xlabel: str, heading: str, path: Path) -> Path:
    """Δ vs the baseline with its 95% CI per configuration (rows: (label, Paired)); filled: Holm-adjusted
    p < 0.05, open: not significant after the correction; n = 1 shows the point alone."""
    rows = [(lab, p) for lab, p in rows if p is not None]
    st = styles([lab for lab, _ in rows])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.6))
    for y, (lab, p) in enumerate(rows):
        err = [[p.mean - p.lo], [p.hi - p.mean]] if p.n > 1 and not np.isnan(p.lo) else None
        ax.errorbar(
            [p.mean],
            [y],
            xerr=err,
            color=st[lab]["color"],
            marker=st[lab]["marker"],
            capsize=3,
            ms=7,
            mfc=st[lab]["color"] if p.significant else "white",
        )
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{lab} (n={p.n})" for lab, p in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        xlabel + " (percentage points, 95% CI)\nfilled: p_Holm < 0.05 (a confirmatory comparison: p < its "
        "declared α, tested alone)",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    title(fig, heading)
    return save(fig, path, outside_legend=True)  # the saved area holds long row labels and the two-line unit


def values_plot(
    x: list, panels: list[tuple[str, list[dict]]], xlabel: str, heading: str, path: Path, best: int | None = None
) -> Path:
    """A study's swept values: per panel (y label, one summary dict per x: mean, ci_low, ci_high), points with
    their 95% CI over seeds; categorical x when the values are not all numbers; a star on the value chosen on
    validation (`best`)."""
    numeric = all(isinstance(v, (int, float)) for v in x)
    pos = list(x) if numeric else list(range(len(x)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (ylabel, stats) in zip(axes[0], panels):
        mean = np.array([s["mean"] for s in stats], dtype=float)
        lo = np.array([s["ci_low"] for s in stats], dtype=float)
        hi = np.array([s["ci_high"] for s in stats], dtype=float)
        err = np.nan_to_num(np.vstack([mean - lo, hi - mean]))
        ax.errorbar(pos, mean, yerr=err, marker="o", capsize=4)
        if best is not None:
            ax.plot([pos[best]], [mean[best]], marker="*", ms=16, color="tab:red", ls="", label="best on validation")
            ax.legend(fontsize=7)
        ax.set_xlabel(xlabel), ax.set_ylabel(f"{ylabel} (mean, 95% CI over seeds)", fontsize=8), ax.grid(alpha=0.3)
        if not numeric:
            ax.set_xticks(pos, [str(v) for v in x], rotation=30, fontsize=7)
    title(fig, heading)
    return save(fig, path)


def tsne(z: dict[str, np.ndarray], class_names: list[str] | None, heading: str, path: Path, max_classes: int = 10) -> Path:
    """Teacher E_T, projection-head F_T and student F_S of the same test samples, embedded jointly; colour:
    class (the `max_classes` most frequent among the samples, others grey), marker: modality / space."""
    from sklearn.manifold import TSNE

    sets = [
        ("teacher E_T", z["teacher_common"], "s"),
        ("projection head F_T", z["projected_teacher"], "^"),
        ("student F_S", z["student_embedding"], "o"),
    ]
    x = np.concatenate([s[1] / np.linalg.norm(s[1], axis=1, keepdims=True).clip(1e-12) for s in sets])
    emb = TSNE(n_components=2, perplexity=min(30, len(x) // 4), init="pca", random_state=0).fit_transform(x)
    label = np.asarray(z["label"])
    n = len(label)
    classes, counts = np.unique(label, return_counts=True)
    shown = classes[np.argsort(-counts, kind="stable")[:max_classes]]
    fig, ax = plt.subplots(figsize=(7.5, 6))
    rest = ~np.isin(label, shown)
    # drawn largest first, each hollow or translucent enough to show what lies under it: teacher E_T as large
    # open squares, projection head F_T as mid-size open triangles, student F_S as small filled dots
    look = {
        "s": dict(s=46, facecolors="none", linewidths=0.9),
        "^": dict(s=30, facecolors="none", linewidths=0.9),
        "o": dict(s=10, linewidths=0, alpha=0.8),
    }
    for i, (name, _, marker) in enumerate(sets):
        pts = emb[i * n : (i + 1) * n]
        kw = look[marker]
        grey = {**kw, **({"edgecolors": "0.75"} if "facecolors" in kw else {"color": "0.75"})}
        ax.scatter(pts[rest, 0], pts[rest, 1], marker=marker, **grey)
        for k, c in enumerate(shown):
            sel = label == c
            colour = _COLOURS[k % len(_COLOURS)]
            ax.scatter(
                pts[sel, 0],
                pts[sel, 1],
                marker=marker,
                **{**kw, **({"edgecolors": colour} if "facecolors" in kw else {"color": colour})},
            )
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker=m, color="black", markerfacecolor="none" if m != "o" else "black", label=name)
        for name, _, m in sets
    ]
    handles += [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            color=_COLOURS[k % len(_COLOURS)],
            label=class_names[c] if class_names and c < len(class_names) else f"class {c}",
        )
        for k, c in enumerate(shown)
    ]
    if rest.any():
        handles.append(Line2D([], [], ls="", marker="o", color="0.75", label=f"{len(classes) - len(shown)} other classes (grey)"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    title(fig, heading)
    return save(fig, path, outside_legend=True)
