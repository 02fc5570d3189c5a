"""The results table of one `run` command: per method, mean / std / n over distinct seeds of each summary
metric and the paired 95% CI against the baseline on the task's primary metric, as numbers
(results.csv, results.json) and, formatted from those numbers, as Markdown (results.md); and the folder it goes
to (this invocation's own, or --out held against a second command)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd

from benchmark.registry import BASELINE, UsageError
from benchmark.stats import Paired, comparison_record, fmt_mean_std, holm, paired_difference, per_seed, summary

NOTE = (
    "\nΔ: paired difference (same seeds) with its raw t-based 95% interval; p_Holm: the paired t-test's "
    "p-value adjusted with Holm's method across the methods of this table; `*`: p_Holm < 0.05. "
    "With one seed no spread or interval exists (`n/a`). The same numbers, one column each: results.csv / "
    "results.json.\n"
)


def summarise(results: list[dict], columns: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per method, numeric columns `<metric>_mean/_std/_n`, `wall_s_mean`, and for the primary metric
    `delta`, `delta_ci_low`, `delta_ci_high`, `delta_n`, `p`, `p_holm`, `significant` (Holm over the methods
    of this table). Failed runs (a 'failure' entry) count in no statistic; they are named in `failed`."""
    everything = pd.DataFrame(results)
    failures = everything[everything["failure"].notna()] if "failure" in everything else everything.iloc[:0]
    df = everything[everything["failure"].isna()] if "failure" in everything else everything
    order = list(dict.fromkeys(everything["method"]))
    primary = columns[0][0]
    base = (
        per_seed(df.loc[df["method"] == BASELINE, primary], df.loc[df["method"] == BASELINE, "seed"])
        if "baseline" in order and primary in df
        else None
    )
    rows, family = [], []
    for m in order:
        g = df[df["method"] == m]
        row: dict = {"method": m, "seeds": int(g["seed"].nunique()) if len(g) else 0}
        for c, _ in [*columns, ("wall_s", "")]:
            s = summary(per_seed(g[c], g["seed"]) if c in g and len(g) else pd.Series(dtype=float))
            row.update({f"{c}_mean": s["mean"], f"{c}_std": s["std"], f"{c}_n": s["n"]})
        if base is not None and m != BASELINE:
            p = paired_difference(per_seed(g[primary], g["seed"]), base) if primary in g and len(g) else None
            family.append(p)
            row["_paired"] = p
        if len(failures):
            row["failed"] = "; ".join(
                f"seed {f.seed}: {f.failure.split(': ', 1)[-1]}" for f in failures[failures["method"] == m].itertuples()
            )
        rows.append(row)
    holm(family)  # the methods of this table are one family: stars only where Holm's adjusted p < 0.05
    for row in rows:
        row.update(comparison_record(row.pop("_paired", None)))
    return pd.DataFrame(rows)


def fmt_delta(row: pd.Series | dict) -> str:
    n = int(row.get("delta_n", 0) or 0)
    if not n:
        return "—"
    p = Paired(
        row["delta"], row["delta_ci_low"], row["delta_ci_high"], n, row["p"], None if pd.isna(row["p_holm"]) else row["p_holm"]
    )
    return str(p)


def to_markdown(table: pd.DataFrame, columns: list[tuple[str, str]]) -> str:
    """The numeric table formatted for reading: 'mean ± std (n=k)' per metric and the Δ column."""
    shown = pd.DataFrame({"method": table["method"], "seeds": table["seeds"]})
    for c, label in [*columns, ("wall_s", "wall time (s)")]:
        shown[label] = [fmt_mean_std(r[f"{c}_mean"], r[f"{c}_std"], r[f"{c}_n"]) for _, r in table.iterrows()]
    if "delta_n" in table and (table["method"] == BASELINE).any():
        shown[f"Δ {columns[0][1]} vs baseline, 95% CI"] = [
            "—" if r["method"] == BASELINE else (fmt_delta(r) if r["delta_n"] else "no matched seed") for _, r in table.iterrows()
        ]
    if "failed" in table:
        shown["failed"] = table["failed"].replace("", "—")
    return shown.to_markdown(index=False)


def write_atomic(path: Path, content) -> None:
    """Write a file whole or not at all: `content` (text, or a function writing to the path it is given) goes
    to a temporary name of this process's own beside it, then replaces the file; on any failure (a full disk)
    the temporary file is removed and the error goes on."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{os.urandom(3).hex()}")
    try:
        if callable(content):
            content(tmp)
        else:
            tmp.write_text(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(results: list[dict], out_dir: Path, columns: list[tuple[str, str]]) -> pd.DataFrame:
    table = summarise(results, columns)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "runs.csv", pd.DataFrame(results).to_csv(index=False))
    write_atomic(out_dir / "results.csv", table.to_csv(index=False))
    records = json.loads(table.to_json(orient="records"))  # NaN -> null
    write_atomic(out_dir / "results.json", json.dumps({"metrics": dict(columns), "methods": records}, indent=1))
    write_atomic(out_dir / "results.md", to_markdown(table, columns) + "\n" + NOTE)
    return table


def fresh_dir(base: Path) -> Path:
    """A folder of this invocation's own under `base` (UTC time and pid), and `base/latest` pointing at it
    (replaced atomically): two processes writing with the default folder never overwrite each other."""
    return claim(fresh_name(base))


def fresh_name(base: Path) -> Path:
    """The name of this invocation's own folder under `base` (UTC time and pid), not made yet."""
    import time

    return base / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}"


def claim(mine: Path) -> Path:
    """Make `mine` and point `latest` beside it at it (replaced atomically). A command that writes nothing never
    calls this: no empty folder is left, and `latest` keeps pointing at the last folder with tables."""
    mine.mkdir(parents=True, exist_ok=True)
    tmp = mine.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(mine.name)
    os.replace(tmp, mine.parent / "latest")
    return mine


def write_tables(results: list[dict], tables_dir: Path | None, columns: list[tuple[str, str]], ok_before: bool) -> bool:
    """Write the results tables; a full disk under them is said once, in one line, and the runs go on (the
    tables are tried again after the next run). Whether they were written."""
    assert tables_dir is not None, "a table's worker and another rank write no tables"
    import errno

    try:
        if not tables_dir.exists():  # this command's own folder, made by its first table
            claim(tables_dir)
        write_table(results, tables_dir, columns)
        return True
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        if ok_before:
            print(
                f"error: the results tables could not be written to {tables_dir} (no space left on its device); "
                "the other runs go on, the tables are tried again after each run",
                file=sys.stderr,
                flush=True,
            )
        return False


def output_dirs(out: str | None, cfg) -> tuple[Path, Path]:
    """(checkpoint folder, tables folder). With --out both are that folder. Without it, checkpoints go to
    runs/<task>-<profile>/checkpoints (stable, so --resume finds them) and the tables of this invocation to
    a folder of its own, runs/<task>-<profile>/<UTC time>-<pid>, with the link `latest` beside it: two
    processes never overwrite each other's results."""
    if out:
        _hold_tables_folder(Path(out))
        return Path(out), Path(out)
    base = Path(f"runs/{cfg.task}-{cfg.profile}")
    return base, fresh_name(base)  # made (and linked as latest) when its first table is written


_HELD: list[int] = []  # the --out folder's descriptor, locked while the command runs


def release_tables_folder() -> None:
    """Unlock the --out folder held by output_dirs (the process's end also releases it)."""
    while _HELD:
        os.close(_HELD.pop())


def _hold_tables_folder(out: Path) -> None:
    """One command writes its results tables into one --out folder at a time: a second command on the same
    folder (other methods or seeds; the same ones are refused by the run locks) would overwrite results.csv.
    An exclusive flock on the folder, released when the process ends (also by kill -9), refuses it in one line."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"--out {out} is in use: another command is writing its results tables there; give this "
            "one another --out (or none: each command then gets a folder of its own)"
        ) from None
    _HELD.append(fd)
