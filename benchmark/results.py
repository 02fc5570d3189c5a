"""The results table of one `run` command: per method, mean ± std over distinct seeds and the paired
95% CI against the baseline on the task's primary metric; printed and written as CSV and Markdown."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from benchmark.stats import describe, holm, paired_difference, per_seed


def summarise(results: list[dict], columns: list[tuple[str, str]]) -> pd.DataFrame:
    """Failed runs (a 'failure' entry) count in no statistic; they are named in a 'failed' column."""
    everything = pd.DataFrame(results)
    failures = everything[everything["failure"].notna()] if "failure" in everything else everything.iloc[:0]
    df = everything[everything["failure"].isna()] if "failure" in everything else everything
    cols = [*columns, ("wall_s", "wall time (s)")]
    order = list(dict.fromkeys(everything["method"]))
    primary, primary_label = columns[0]
    base = per_seed(df.loc[df["method"] == "baseline", primary], df.loc[df["method"] == "baseline", "seed"]) \
        if "baseline" in order and primary in df else None
    rows, family = [], []
    delta = f"Δ {primary_label} vs baseline, 95% CI"
    for m in order:
        g = df[df["method"] == m]
        row = {"method": m, "seeds": g["seed"].nunique()}
        for c, label in cols:
            row[label] = describe(per_seed(g[c], g["seed"])) if c in g and len(g) else "n/a"
        if base is not None:
            p = None if m == "baseline" else paired_difference(per_seed(g[primary], g["seed"]), base)
            row[delta] = "—" if m == "baseline" else (p or "no matched seed")
            family.append(p)
        if len(failures):
            row["failed"] = "; ".join(f"seed {f.seed}: {f.failure.split(': ', 1)[-1]}"
                                      for f in failures[failures["method"] == m].itertuples()) or "—"
        rows.append(row)
    holm(family)  # the methods of this table are one family: stars only where Holm's adjusted p < 0.05
    for row in rows:
        if delta in row:
            row[delta] = str(row[delta])
    return pd.DataFrame(rows)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_table(results: list[dict], out_dir: Path, columns: list[tuple[str, str]]) -> pd.DataFrame:
    table = summarise(results, columns)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "runs.csv", pd.DataFrame(results).to_csv(index=False))
    _write_atomic(out_dir / "results.csv", table.to_csv(index=False))
    note = ("\nΔ: paired difference (same seeds) with its raw t-based 95% interval; p_Holm: the paired t-test's "
            "p-value adjusted with Holm's method across the methods of this table; `*`: p_Holm < 0.05. "
            "With one seed no spread or interval exists (`n/a`).\n")
    _write_atomic(out_dir / "results.md", table.to_markdown(index=False) + "\n" + note)
    return table
