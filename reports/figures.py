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
_COLOURS = [plt.get_cmap("tab20")(i) for i in (0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19)]


def styles(labels: list[str]) -> dict[str, dict]:
    """A distinct (colour, marker) pair per label (20 colours x 12 markers, the two cycling out of step),
    fixed by the method's place in the registry, so a method looks the same in every figure; further
    configurations of a method (`kd (temperature=1)`) take the next free slots, methods from outside the
    registry the slots after those."""
    from benchmark.registry import METHODS
    order = {m: i for i, m in enumerate(METHODS.names())}
    taken: set[int] = set()
    out = {}
    for lab in sorted(labels, key=lambda lab: (order.get(lab.split(" ")[0], len(order)), lab)):
        i = order.get(lab.split(" ")[0], len(order))
        while i in taken:
            i += len(order) or 1
        taken.add(i)
        out[lab] = {"color": _COLOURS[i % len(_COLOURS)], "marker": MARKERS[i % len(MARKERS)]}
    return out


def title(fig, text: str) -> None:
    fig.suptitle("\n".join(textwrap.wrap(text, 110)), fontsize=9)


def save(fig, path: Path, outside_legend: bool = False) -> Path:
    """tight layout, 110 dpi; `outside_legend`: the saved area grows to hold a legend beside the axes."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, **({"bbox_inches": "tight"} if outside_legend else {}))
    plt.close(fig)
    return path


def curves(series: dict[str, dict[str, list[pd.Series]]], panels: list[tuple[str, str]], heading: str, path: Path) -> Path:
    """series[label][metric]: one per-epoch Series per seed; each panel (metric, y label) shows every label's
    mean over seeds with a band from the lowest to the highest seed."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    st = styles(list(series))
    for ax, (metric, ylabel) in zip(axes[0], panels):
        for label, per in series.items():
            runs = [s for s in per.get(metric, []) if not s.empty]
            if not runs:
                continue
            frame = pd.concat(runs, axis=1)
            mean = frame.mean(axis=1)
            ax.plot(mean.index, mean.values, label=f"{label} (n={frame.shape[1]})", lw=1.4, ms=4, **st[label])
            if frame.shape[1] > 1:
                ax.fill_between(mean.index, frame.min(axis=1), frame.max(axis=1), color=st[label]["color"], alpha=0.15)
        ax.set_xlabel("epoch"), ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    title(fig, heading)
    return save(fig, path, outside_legend=True)


def forest(rows: list[tuple[str, object]], xlabel: str, heading: str, path: Path) -> Path:
    """Δ vs the baseline with its 95% CI per configuration (rows: (label, Paired)); filled: Holm-adjusted
    p < 0.05, open: not significant after the correction; n = 1 shows the point alone."""
    rows = [(lab, p) for lab, p in rows if p is not None]
    st = styles([lab for lab, _ in rows])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.6))
    for y, (lab, p) in enumerate(rows):
        err = [[p.mean - p.lo], [p.hi - p.mean]] if p.n > 1 and not np.isnan(p.lo) else None
        ax.errorbar([p.mean], [y], xerr=err, color=st[lab]["color"], marker=st[lab]["marker"], capsize=3, ms=7,
                    mfc=st[lab]["color"] if p.significant else "white")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{lab} (n={p.n})" for lab, p in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel + ", percentage points (95% CI; filled: p_Holm < 0.05, or p < 0.05 for the primary)")
    ax.grid(axis="x", alpha=0.3)
    title(fig, heading)
    return save(fig, path)


def values_plot(x: list, panels: list[tuple[str, list[dict]]], xlabel: str, heading: str, path: Path,
                best: int | None = None) -> Path:
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
    sets = [("teacher E_T", z["teacher_common"], "s"), ("projection head F_T", z["projected_teacher"], "^"),
            ("student F_S", z["student_embedding"], "o")]
    x = np.concatenate([s[1] / np.linalg.norm(s[1], axis=1, keepdims=True).clip(1e-12) for s in sets])
    emb = TSNE(n_components=2, perplexity=min(30, len(x) // 4), init="pca", random_state=0).fit_transform(x)
    label = np.asarray(z["label"])
    n = len(label)
    classes, counts = np.unique(label, return_counts=True)
    shown = classes[np.argsort(-counts, kind="stable")[:max_classes]]
    fig, ax = plt.subplots(figsize=(7.5, 6))
    for i, (name, _, marker) in enumerate(sets):
        pts = emb[i * n:(i + 1) * n]
        rest = ~np.isin(label, shown)
        ax.scatter(pts[rest, 0], pts[rest, 1], s=6, c="lightgrey", marker=marker)
        for k, c in enumerate(shown):
            sel = label == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=18, color=_COLOURS[k % len(_COLOURS)], marker=marker,
                       edgecolors="black" if name.startswith("teacher") else "none", linewidths=0.3)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls="", marker=m, color="black", label=name) for name, _, m in sets]
    handles += [Line2D([], [], ls="", marker="o", color=_COLOURS[k % len(_COLOURS)],
                       label=class_names[c] if class_names and c < len(class_names) else f"class {c}")
                for k, c in enumerate(shown)]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    title(fig, heading)
    return save(fig, path, outside_legend=True)
