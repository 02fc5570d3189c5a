"""Rebuild the paper's tables and figures from MLflow runs alone: paper numbers beside ours, traceable."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from reports.specs import AMBIGUITY_PARAMS, TABLES, TableSpec

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PAPER_DIR = Path(__file__).parent / "paper_tables"


def load_runs(tracking_uri: str, experiment: str | None) -> pd.DataFrame:
    """Finished training runs (one per method x seed x config) of the harness, as a flat DataFrame."""
    import mlflow
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    exps = [e for e in client.search_experiments() if (e.name == experiment if experiment else e.name.startswith("xkd-"))]
    if not exps:
        return pd.DataFrame()
    df = mlflow.search_runs(experiment_ids=[e.experiment_id for e in exps], output_format="pandas",
                            filter_string="tags.`xkd.kind` = 'train' and attributes.status = 'FINISHED'")
    if df.empty:
        return df
    for col in ("tags.xkd.study", "tags.xkd.paper_table"):
        if col not in df:
            df[col] = None
    return df


class Footnotes:
    def __init__(self):
        self.notes: list[str] = []

    def add(self, run_ids: list[str]) -> str:
        self.notes.append("runs: " + ", ".join(f"`{r}`" for r in run_ids))
        return f"[^{len(self.notes)}]"

    def render(self) -> str:
        return "\n".join(f"[^{i + 1}]: {n}" for i, n in enumerate(self.notes))


def fmt_cell(values: pd.Series, run_ids: list[str], notes: Footnotes) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return "not run"
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.2f} ± {sd:.2f} (n={len(v)}){notes.add(run_ids)}"


def paired_diff(runs: pd.DataFrame, base: pd.DataFrame, metric: str) -> str:
    """Mean paired difference (method - baseline) over matched seeds with a t-based 95% CI."""
    col = f"metrics.{metric}"
    if runs.empty or base.empty or col not in runs:
        return "—"
    a = runs.groupby("params.seed")[col].mean()
    b = base.groupby("params.seed")[col].mean()
    d = (a - b).dropna()
    if d.empty:
        return "no matched seeds"
    if len(d) < 2:
        return f"{d.iloc[0]:+.2f} (n=1, no CI)"
    from scipy import stats
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] (n={len(d)})"


def _match(series: pd.Series, value, scale: float) -> pd.Series:
    try:
        target = float(value) * scale
    except ValueError:
        return series.astype(str) == value
    return pd.to_numeric(series, errors="coerce").sub(target).abs() < 1e-9


def table_section(spec: TableSpec, runs: pd.DataFrame, notes: Footnotes) -> str:
    paper = pd.read_csv(PAPER_DIR / spec.csv, dtype=str, keep_default_na=False)  # values exactly as printed
    ablation = spec.id in ("table05", "table06", "table10", "table11", "table12")
    pool = runs[runs["params.task"] == spec.task] if not runs.empty else runs
    if not pool.empty:
        if ablation:
            pool = pool[pool["tags.xkd.paper_table"] == spec.id]
        else:
            pool = pool[pool["tags.xkd.study"].isna() | (pool["tags.xkd.study"] == "")]
            if spec.id != "table02":
                pool = pool[pd.to_numeric(pool["params.data_fraction"]) == 1.0]
    groups = sorted(pool.groupby(["params.student", "params.profile"]).groups) if not pool.empty else []
    header = list(paper.columns)
    for student, profile in groups:
        header += [f"ours {label} [{student}, {profile}]" for label, _ in spec.ours]
        if spec.paired:
            header.append(f"Δ {spec.paired} vs baseline, 95% CI [{student}, {profile}]")
    lines = [f"## {spec.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in paper.iterrows():
        method = spec.method_alias.get(row["method"], row["method"])
        cells = [str(row[c]) for c in paper.columns]
        for student, profile in groups:
            sel = pool[(pool["params.student"] == student) & (pool["params.profile"] == profile)]
            base = sel[sel["params.method"] == "baseline"]
            sel = sel[sel["params.method"] == method]
            for col, (param, scale) in spec.row_params.items():
                if row[col] == "":  # e.g. Table 2's baseline rows name no teacher: no restriction
                    continue
                if f"params.{param}" not in sel:
                    sel = sel.iloc[0:0]
                else:
                    sel = sel[_match(sel[f"params.{param}"], row[col], scale)]
            for _, metric in spec.ours:
                col = f"metrics.{metric}"
                cells.append(fmt_cell(sel[col], list(sel["run_id"]), notes) if col in sel and not sel.empty else "not run")
            if spec.paired:
                cells.append("—" if method == "baseline" else paired_diff(sel, base, spec.paired))
        lines.append("| " + " | ".join(cells) + " |")
    if not groups:
        lines.append("")
        lines.append("Ours: not run (no finished runs of this task" + (" in this ablation study" if ablation else "") + ").")
    return "\n".join(lines) + "\n"


def header_section(runs: pd.DataFrame) -> str:
    if runs.empty:
        return "No finished runs were found: every 'ours' cell below reads 'not run'.\n"
    out = ["| what | values in the runs shown |", "|---|---|"]
    for label, col in [("tasks", "params.task"), ("profiles", "params.profile"), ("students", "params.student"),
                       ("teachers", "params.teacher_id"), ("data layout", "params.data_layout"),
                       ("train/val/test sizes", None), ("split rule", "params.split_rule"),
                       ("selection rule", "params.selection_rule"), ("device", "params.device_resolved")]:
        if col is None:
            vals = sorted({f"{a}/{b}/{c}" for a, b, c in zip(runs.get("params.n_train", []), runs.get("params.n_val", []),
                                                              runs.get("params.n_test", []))})
        else:
            vals = sorted(runs[col].dropna().astype(str).unique()) if col in runs else []
        out.append(f"| {label} | {', '.join(vals)} |")
    for p in AMBIGUITY_PARAMS:
        col = f"params.{p}"
        if col in runs:
            out.append(f"| {p} | {', '.join(sorted(runs[col].dropna().astype(str).unique()))} |")
    return "\n".join(out) + "\n"


def fig_training_curves(runs: pd.DataFrame, uri: str, out: Path) -> Path | None:
    import mlflow
    client = mlflow.MlflowClient(uri)
    sel = runs[runs["params.method"].isin(["baseline", "ours_feature", "ours_classifier"]) &
               (runs["tags.xkd.study"].isna() | (runs["tags.xkd.study"] == ""))] if not runs.empty else runs
    if sel.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, g in sel.groupby("params.method"):
        rid = g.sort_values("params.seed")["run_id"].iloc[0]
        for ax, metric in zip(axes, ("train_top1", "val_top1")):
            hist = client.get_metric_history(rid, metric)
            ax.plot([h.step for h in hist], [h.value for h in hist], marker="o", label=method)
    for ax, title in zip(axes, ("train top-1 (%)", "validation top-1 (%)")):
        ax.set_xlabel("epoch"), ax.set_title(title), ax.legend()
    return _save(fig, out / "fig6_training_curves.png")


def fig_data_fraction(runs: pd.DataFrame, out: Path) -> Path | None:
    if runs.empty:
        return None
    sel = runs[(runs["tags.xkd.study"].isna() | (runs["tags.xkd.study"] == "")) & (runs["params.task"] == "cifar100")]
    fr = pd.to_numeric(sel["params.data_fraction"])
    if fr.nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    for method, g in sel.assign(fr=fr).groupby("params.method"):
        m = g.groupby("fr")["metrics.test_top1"].mean()
        ax.plot(m.index * 100, m.values, marker="o", label=method)
    ax.set_xlabel("training data (%)"), ax.set_ylabel("test top-1 (%)"), ax.legend(fontsize=7)
    ax.set_title("Fig. 9 analogue: accuracy vs data volume")
    return _save(fig, out / "fig9_data_fraction.png")


def fig_ablations(runs: pd.DataFrame, out: Path) -> list[Path]:
    paths = []
    for spec in TABLES:
        if not spec.row_params or spec.id == "table02":
            continue
        col, (param, scale) = next(iter(spec.row_params.items()))
        paper = pd.read_csv(PAPER_DIR / spec.csv)
        pool = runs[runs["tags.xkd.paper_table"] == spec.id] if not runs.empty else runs
        metric = f"metrics.{spec.ours[0][1]}"
        fig, ax = plt.subplots(figsize=(5, 4))
        ax2 = ax.twinx()
        for pc in spec.paper_cols[:2]:
            if "mindcf" in pc:
                continue
            ax2.plot(pd.to_numeric(paper[col]).fillna(0) * scale, pd.to_numeric(paper[pc]), "s--", alpha=0.7,
                     label=f"paper {pc}")
        if not pool.empty and metric in pool and f"params.{param}" in pool:
            for student, g in pool.groupby("params.student"):
                m = g.assign(x=pd.to_numeric(g[f"params.{param}"])).groupby("x")[metric].agg(["mean", "std"]).fillna(0)
                ax.errorbar(m.index, m["mean"], yerr=m["std"], marker="o", capsize=3, label=f"ours [{student}]")
        ax.set_xlabel(param.replace("hp.", "")), ax.set_ylabel(f"ours: {spec.ours[0][1]}"), ax2.set_ylabel("paper")
        ax.set_title(spec.title.split(":")[0] + " ablation")
        for a, where in ((ax, "lower left"), (ax2, "lower right")):
            if a.get_legend_handles_labels()[0]:
                a.legend(loc=where, fontsize=7)
        paths.append(_save(fig, out / f"{spec.id}_ablation.png"))
    return paths


def fig_tsne(runs: pd.DataFrame, uri: str, out: Path) -> Path | None:
    """Teacher embeddings, projection-head outputs and student embeddings of 200 test samples, jointly."""
    import mlflow
    from sklearn.manifold import TSNE
    if runs.empty:
        return None
    sel = runs[runs["params.method"].str.startswith("ours_feature")].sort_values("start_time", ascending=False)
    for rid in sel["run_id"]:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="features.npz", tracking_uri=uri)
        except Exception:
            continue
        z = np.load(path)
        if "teacher_common" not in z:  # written by an older version of the harness
            continue
        sets = [("teacher E_T", z["teacher_common"], "red"), ("projection head F_T", z["projected_teacher"], "green"),
                ("student F_S", z["student_embedding"], "blue")]
        x = np.concatenate([s[1] / np.linalg.norm(s[1], axis=1, keepdims=True).clip(1e-12) for s in sets])
        emb = TSNE(n_components=2, perplexity=30, init="pca", random_state=0).fit_transform(x)
        group = z["group"]
        shade = 0.35 + 0.65 * (group - group.min()) / max(1, group.max() - group.min())
        fig, ax = plt.subplots(figsize=(6, 5))
        n = len(group)
        for i, (label, _, colour) in enumerate(sets):
            pts = emb[i * n:(i + 1) * n]
            ax.scatter(pts[:, 0], pts[:, 1], s=8, c=colour, alpha=shade, label=label)
        ax.legend(fontsize=8), ax.set_title(f"Fig. 8 analogue: t-SNE of {n} test samples (run {rid[:8]})")
        return _save(fig, out / "fig8_tsne.png")
    return None


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(tracking_uri: str, out: Path, experiment: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(tracking_uri, experiment)
    notes = Footnotes()
    parts = ["# Cross-modal distillation benchmark: report", "",
             f"Rebuilt from the MLflow runs at `{tracking_uri}`" + (f", experiment `{experiment}`" if experiment else "")
             + ". Paper values are copied from the paper; ours are mean ± sample std over seeds (n), each cell's "
             "MLflow run ids in its footnote. Δ: paired difference against the baseline over matched seeds, "
             "with a t-based 95% confidence interval.", "", "## Runs shown", "", header_section(runs)]
    for spec in TABLES:
        parts.append(table_section(spec, runs, notes))
    figs = [("Training curves (Fig. 6 analogue)", fig_training_curves(runs, tracking_uri, out) if not runs.empty else None),
            ("Accuracy against data fraction (Fig. 9 analogue)", fig_data_fraction(runs, out)),
            ("t-SNE of teacher, projected teacher and student features (Fig. 8 analogue)", fig_tsne(runs, tracking_uri, out))]
    figs += [(f"Ablation curve {p.stem.split('_')[0]} (ours, paper points on the right axis)", p) for p in fig_ablations(runs, out)]
    parts.append("## Figures\n")
    for title, path in figs:
        parts.append(f"### {title}\n\n" + (f"![{title}]({path.name})\n" if path else "not run (no runs with the data it needs)\n"))
    parts.append(notes.render())
    report = out / "report.md"
    report.write_text("\n".join(parts) + "\n")
    return report
