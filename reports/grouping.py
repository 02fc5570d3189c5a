"""Which runs belong together. A *setting* is everything in a run's configuration except the method, its
hyperparameters and the seed (profile, student, teacher, data fraction, every other run-config field, and
the facts that change what a run computes: resolved precision, world size, code version). A *configuration*
is a method with one set of hyperparameters. Runs of two settings never share a cell or a pair; two
configurations of one method are two rows, never one mean."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from benchmark.config import defining_fields
from benchmark.registry import BASELINE

SETTING_FACTS = ["params.precision_resolved", "params.world_size", "params.code_version"]


def key_of(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    cols = [c for c in cols if c in df]
    if not cols:
        return pd.Series([""] * len(df), index=df.index)
    return df[cols].fillna("").astype(str).agg("\x1f".join, axis=1)


def setting_columns(runs: pd.DataFrame, exclude: set[str] = frozenset()) -> list[str]:
    cols = [f"params.{f}" for f in defining_fields()] + [
        "params.teacher_id",
        "params.n_train",
        "params.n_val",
        "params.n_test",
        "params.data_layout",
        "params.data_subset",
        *SETTING_FACTS,
    ]
    return [c for c in dict.fromkeys(cols) if c in runs and c not in exclude and c != "params.task"]


def variant_columns(runs: pd.DataFrame, exclude: set[str] = frozenset()) -> list[str]:
    return sorted(c for c in runs if c.startswith("params.hp.") and c not in exclude)


def differing(df: pd.DataFrame, cols: list[str]) -> list[str]:
    return [c for c in cols if c in df and df[c].fillna("").astype(str).nunique() > 1]


def label_of(row: pd.Series, cols: list[str]) -> str:
    return ", ".join(f"{c.removeprefix('params.').removeprefix('hp.')}={row[c]}" for c in cols)


def off_profile(run: pd.Series, task) -> list[str]:
    """The run-config fields of a run that differ from its profile's values (e.g. `--set epochs=2`)."""
    from benchmark.config import RunConfig

    if task is None or run.get("params.profile") not in task.profiles:
        return []
    own = asdict(task.Fields()) if getattr(task, "Fields", None) else {}
    expected = {**asdict(RunConfig()), **own, **task.profiles[run["params.profile"]]}
    return [
        f"params.{k}"
        for k in defining_fields()
        if k in expected
        and f"params.{k}" in run
        and pd.notna(run[f"params.{k}"])
        and str(run[f"params.{k}"]) != str(expected[k])
        and k not in ("task", "profile")
    ]


def with_keys(pool: pd.DataFrame, exclude: set[str] = frozenset()) -> pd.DataFrame:
    """The runs with `_setting` and `_variant` keys."""
    return pool.assign(
        _setting=key_of(pool, setting_columns(pool, exclude)), _variant=key_of(pool, variant_columns(pool, exclude))
    )


def task_pools(runs: pd.DataFrame, exclude: set[str] = frozenset(), tasks=None):
    """Per task (sorted; only `tasks` when given): (task name, its task class or None, its non-study runs with
    `_setting` / `_variant` keys leaving out the columns `exclude`, and their setting labels)."""
    from reports.runs import task_info

    main = runs[runs["tags.xkd.study"] == ""] if not runs.empty else runs
    for task_name in sorted(main["params.task"].unique() if tasks is None else tasks) if not main.empty else []:
        task = task_info(task_name)
        pool = with_keys(main[main["params.task"] == task_name], exclude)
        yield task_name, task, pool, setting_labels(pool, task, exclude)


def setting_labels(pool: pd.DataFrame, task, exclude: set[str] = frozenset()) -> dict[str, str]:
    """A readable name per setting key of `pool` (which has `_setting`): student, profile, then the fields in
    which the settings differ and those off the profile's values (e.g. `epochs=2`)."""
    scols = setting_columns(pool, exclude)
    settings = pool.drop_duplicates("_setting").sort_values(["params.profile", "params.student"])
    named = differing(settings, scols)
    labels = {}
    for _, r in settings.iterrows():
        shown = [c for c in named if c not in ("params.student", "params.profile")]
        shown += [c for c in off_profile(r, task) if c not in shown]
        if "params.data_subset" in r and pd.notna(r["params.data_subset"]) and "params.data_subset" not in shown:
            shown.append("params.data_subset")  # e.g. 100 of the official 500 training images per class
        labels[r["_setting"]] = ", ".join(
            [str(r["params.student"]), str(r["params.profile"])]
            + [f"{c.removeprefix('params.')}={r[c]}" for c in shown if pd.notna(r[c])]
        )
    return labels


def configurations(
    pool: pd.DataFrame, exclude: set[str] = frozenset(), context: pd.DataFrame | None = None
) -> list[tuple[str, str, pd.DataFrame]]:
    """(row label, method, runs) per method configuration of `pool` (which has `_variant`): a method's label
    names the hyperparameters in which its configurations differ within `context` (default: `pool`; e.g.
    every run of the task, so that one table's KD says temperature=4 where another's ran at 1)."""
    out = []
    context = pool if context is None else context
    for method in sorted(pool["params.method"].unique()):
        mine = pool[pool["params.method"] == method]
        theirs = context[context["params.method"] == method].drop_duplicates("_variant")
        named = differing(theirs, variant_columns(theirs, exclude))
        for _, v in mine.drop_duplicates("_variant").iterrows():
            out.append((method + (f" ({label_of(v, named)})" if named else ""), method, mine[mine["_variant"] == v["_variant"]]))
    return out


def baseline_of(setting_runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """The baseline's runs of one setting: its configuration with the most seeds."""
    base = setting_runs[setting_runs["params.method"] == baseline]
    if base.empty:
        return base
    biggest = base.groupby("_variant")["params.seed"].nunique().idxmax()
    return base[base["_variant"] == biggest]


def reported_metrics(task, runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, label) of the task's summary metrics that these runs hold values of (test top-1 for a run of a
    task not registered here)."""
    ms = (
        list(task.summary_metrics)
        if task
        else [(c.removeprefix("metrics."), c.removeprefix("metrics.")) for c in ("metrics.test_top1",) if c in runs]
    )
    return [(m, lab) for m, lab in ms if f"metrics.{m}" in runs and runs[f"metrics.{m}"].notna().any()]
