"""The options the training commands (run, perf, study, eval) share; what they resolve to: benchmark/resolve.py."""

from __future__ import annotations

import argparse

from benchmark.manifest import known
from benchmark.registry import METHODS, STUDENTS, TEACHERS
from benchmark.resolve import RUN_DEFAULTS, SHORTCUTS


def common_run_args(p: argparse.ArgumentParser, methods: bool = True) -> None:
    """Options of run, perf, study and eval. Defaults are applied after an experiment file is merged
    (benchmark/resolve.py: apply_config), so that a flag given on the command line always wins over the file."""
    from benchmark.registry import TASKS

    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help="experiment file: task, profile, methods, seeds, plugins, "
        "student, teacher, data_dir, device, [set] KEY = VALUE and [method.NAME] KEY = VALUE (every run logs "
        "its own as experiment.toml); "
        "flags given here override it",
    )
    p.add_argument("--task", choices=known(TASKS), help=f"the task (default {RUN_DEFAULTS['task']})")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress lines (per epoch, every 30 s of a long epoch, "
        "per run of a table); results, warnings and errors as always",
    )
    if methods:
        p.add_argument(
            "--methods", metavar="all|M1,M2,...", help="'all' or a comma list of: " + ", ".join(known(METHODS)) + " (default all)"
        )
    p.add_argument("--profile", help="the task's profile (smoke, quick, paper, ...; `list --profiles`; default quick)")
    p.add_argument("--seeds", type=int, help="number of seeds, from the config seed (default 0) up (default 1)")
    p.add_argument(
        "--student",
        metavar="STUDENT",
        help="student network (default: the task profile's): "
        + ", ".join(known(STUDENTS))
        + ", or tv:<torchvision model> or timm:<timm model> where the task takes images",
    )
    p.add_argument("--teacher", choices=known(TEACHERS), help="teacher (default: the task profile's)")
    p.add_argument(
        "--data-dir",
        dest="data_dir",
        help="the dataset's folder (default: its folder under the data "
        "root $XKD_DATA or ~/.cache/xkd-bench/data, fetched there when missing; speaker task: required)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: cuda when present")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run-config field (epochs=2), a hyperparameter of every selected method that has it "
        "(temperature=2) or of one method (kd.temperature=2); repeatable",
    )
    for name, typ in SHORTCUTS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"short_{name}",
            type=typ,
            metavar=name.upper(),
            help=f"short for --set {name}=...",
        )
    p.add_argument(
        "--cache-dir",
        dest="cache_dir",
        help="cache of teacher embeddings and decoded datasets (default ~/.cache/xkd-bench or $XKD_CACHE_DIR)",
    )
