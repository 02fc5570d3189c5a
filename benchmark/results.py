"""The results table: method -> mean +- std over seeds, printed and written as CSV and Markdown."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

def summarise(results: list[dict], columns: list[tuple[str, str]]) -> pd.DataFrame:
    df = pd.DataFrame(results)
    COLUMNS = [*columns, ("wall_s", "wall time (s)")]
    cols = [c for c, _ in COLUMNS if c in df.columns]
    order = list(dict.fromkeys(df["method"]))
    g = df.groupby("method", sort=False)[cols]
    out = pd.DataFrame({"method": order, "seeds": g.size().reindex(order).values})
    mean, std = g.mean().reindex(order), g.std(ddof=1).reindex(order).fillna(0.0)
    for c, label in COLUMNS:
        if c in cols:
            out[label] = [f"{m:.2f} ± {s:.2f}" if pd.notna(m) else "n/a" for m, s in zip(mean[c], std[c])]
    return out


def write_table(results: list[dict], out_dir: Path, columns: list[tuple[str, str]]) -> pd.DataFrame:
    table = summarise(results, columns)
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(results).to_csv(out_dir / "runs.csv", index=False)
    table.to_csv(out_dir / "results.csv", index=False)
    (out_dir / "results.md").write_text(table.to_markdown(index=False) + "\n")
    return table
