"""Experiment files (TOML): everything a `run` command line holds, in one file that `run --config` reads.

    task = "synthetic"            # --task
    profile = "smoke"             # --profile
    methods = ["baseline", "kd"]  # --methods (a list, or "all")
    seeds = 2                     # --seeds
    plugins = ["mypkg.mymodule"]  # --plugin (modules that register methods, tasks, students, teachers)
    [set]                         # --set KEY=VALUE: run-config fields and hyperparameters of every method
    epochs = 2
    [method.kd]                   # --set kd.temperature=2: one method's hyperparameters
    temperature = 2.0

Optional top-level keys: student, teacher, data_dir, device, cache_dir, tracking_uri, experiment, out.
Flags on the command line override the file (`--set` entries are applied after the file's). Every run logs
its fully resolved file (`experiment.toml`: one method, one seed, every field and hyperparameter) as an
MLflow artifact; `run --config experiment.toml` reproduces that run."""
from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

from benchmark.registry import UsageError

KEYS = {"task", "profile", "methods", "seeds", "plugins", "set", "method", "student", "teacher", "data_dir", "device",
        "cache_dir", "tracking_uri", "experiment", "out"}
SCALAR = (str, int, float, bool)


def read(path: str | Path) -> dict[str, Any]:
    """The file's content, checked: known keys, scalar values; per-method tables become `method.key` sets."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        doc = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path}: not valid TOML ({e})") from None
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise UsageError(f"--config {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}")
    sets, method_sets = [], []
    for k, v in doc.get("set", {}).items():
        sets.append(f"{k}={_text(path, k, v)}")
    for method, table in doc.get("method", {}).items():
        if not isinstance(table, dict):
            raise UsageError(f"--config {path}: [method.{method}] must be a table of hyperparameters")
        method_sets += [f"{method}.{k}={_text(path, f'{method}.{k}', v)}" for k, v in table.items()]
    out = {k: v for k, v in doc.items() if k not in ("set", "method")}
    if isinstance(out.get("methods"), list):
        out["methods"] = ",".join(out["methods"])
    if "plugins" in out and not (isinstance(out["plugins"], list) and all(isinstance(x, str) for x in out["plugins"])):
        raise UsageError(f"--config {path}: plugins must be a list of module names")
    out["set"], out["method_sets"] = sets, method_sets  # a method's table applies when the method is selected
    return out


def _text(path, key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return v
    raise UsageError(f"--config {path}: {key} must be a string, number or boolean, not {type(v).__name__}")


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v) else repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def dump(cfg, method: str, hparams: dict[str, Any], plugins: list[str]) -> str:
    """The resolved experiment file of one run (one method, one seed)."""
    top = {"task": cfg.task, "profile": cfg.profile, "methods": [method], "seeds": 1, "student": cfg.student,
           "teacher": cfg.teacher, "data_dir": cfg.data_dir}
    lines = ["# the resolved experiment of one run: `python -m benchmark run --config <this file>` reproduces it"]
    for k, v in top.items():
        lines.append(f"{k} = " + ("[" + ", ".join(_toml(x) for x in v) + "]" if isinstance(v, list) else _toml(v)))
    if plugins:
        lines.append("plugins = [" + ", ".join(_toml(x) for x in plugins) + "]")
    lines += ["", "[set]"]
    lines += [f"{k} = {_toml(v)}" for k, v in cfg.as_params().items() if k not in top and k != "device"
              and isinstance(v, SCALAR)]
    lines += ["", f"[method.{method}]"] + [f"{k} = {_toml(v)}" for k, v in hparams.items() if isinstance(v, SCALAR)]
    return "\n".join(lines) + "\n"
