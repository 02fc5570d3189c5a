"""The names of the harness's own registry entries, read from its source without importing it.

Importing the methods and tasks imports torch, torchvision and scikit-learn (seconds). The command line's
parser needs only their names (choices, help), so `--help` and a mistyped option are answered from the
registrations as written in the source: `@register("kd", ...)` in methods/, `@TASKS.register(...)`,
`STUDENTS.add(...)`, `TEACHERS.add(...)`, `FIXTURES.add(...)` and `@register_dataset(...)`. A test checks these
names against the registries once the modules are imported. Plugins from outside are imported before the
parser is built, as before (their names cannot be read without them)."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_KINDS = {
    "METHODS": "method",
    "TASKS": "task",
    "STUDENTS": "student",
    "TEACHERS": "teacher",
    "FIXTURES": "fixture",
    "DATASETS": "dataset",
}


def _kind(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return {"register": "method", "register_dataset": "dataset"}.get(func.id)
    if isinstance(func, ast.Attribute) and func.attr in ("register", "add") and isinstance(func.value, ast.Name):
        return _KINDS.get(func.value.id)
    return None


@lru_cache(maxsize=1)
def builtin_names() -> dict[str, list[str]]:
    """kind -> the names the harness's own modules register, in source order."""
    out: dict[str, list[str]] = {k: [] for k in _KINDS.values()}
    files = [
        *sorted((ROOT / "methods").rglob("*.py")),
        *sorted((ROOT / "tasks").rglob("*.py")),
        ROOT / "benchmark" / "nets.py",
        *sorted((ROOT / "benchmark" / "teachers").rglob("*.py")),
    ]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and (kind := _kind(node.func))
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                out[kind].append(node.args[0].value)
    return out


def known(registry) -> list[str]:
    """A registry's names for the parser: the registry's own once the harness's modules are imported, else the
    names their source registers (and any entry registered already)."""
    from benchmark import plugins

    if plugins.builtin_loaded():
        return registry.names()
    return list(dict.fromkeys([*builtin_names()[registry.kind], *registry.names()]))


def _text(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@lru_cache(maxsize=1)
def builtin_listing() -> dict[str, list[tuple[str, str]]] | None:
    """kind -> (name, description) of the harness's own entries, and "profile" -> (task:profile, note), read
    from the source (for a `list` without importing torch); None when a description is not a plain string
    there (then `list` imports the modules)."""
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in (*_KINDS.values(), "profile")}
    files = [
        *sorted((ROOT / "methods").rglob("*.py")),
        *sorted((ROOT / "tasks").rglob("*.py")),
        ROOT / "benchmark" / "nets.py",
        *sorted((ROOT / "benchmark" / "teachers").rglob("*.py")),
    ]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (kind := _kind(node.func)) and node.args and (name := _text(node.args[0])):
                at = (
                    1
                    if kind in ("method", "task") and not (isinstance(node.func, ast.Attribute) and node.func.attr == "add")
                    else 2
                )
                desc = (
                    _text(node.args[at])
                    if len(node.args) > at
                    else _text(next((k.value for k in node.keywords if k.arg == "description"), None))
                )
                if desc is None:
                    return None
                out[kind].append((name, desc))
            if isinstance(node, ast.ClassDef):
                task = next(
                    (
                        _text(d.args[0])
                        for d in node.decorator_list
                        if isinstance(d, ast.Call) and _kind(d.func) == "task" and d.args
                    ),
                    None,
                )
                notes = next(
                    (
                        a.value
                        for a in node.body
                        if isinstance(a, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "profile_notes" for t in a.targets)
                    ),
                    None,
                )
                if task and notes is not None:
                    try:
                        value = ast.literal_eval(notes)
                    except ValueError:
                        return None
                    out["profile"] += [(f"{task}:{k}", v) for k, v in value.items()]
    return out
