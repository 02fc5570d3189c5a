"""One registry for every pluggable kind: methods, tasks, students, teachers (profiles belong to tasks).

This module imports nothing of the harness; benchmark.plugins imports the modules that register."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


class UsageError(ValueError):
    """Bad user input: the CLI prints the message and exits with code 2."""


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    description: str


def did_you_mean(name: str, known) -> str:
    """ "did you mean 'x' or 'y'? " for the closest known names (difflib), or "" when none is close."""
    import difflib

    near = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
    return ("did you mean " + " or ".join(f"'{x}'" for x in near) + "? ") if near else ""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            self.add(name, obj, description)
            return obj

        return deco

    def add(self, name: str, obj: Any, description: str) -> None:
        if name in self._entries:
            owner = getattr(self._entries[name].obj, "__module__", "?")
            raise UsageError(f"{self.kind} '{name}' is registered already (by {owner}); a plugin must choose another name")
        self._entries[name] = Entry(name, obj, description)

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise UsageError(f"unknown {self.kind} '{name}'; {did_you_mean(name, self.names())}known: {', '.join(self.names())}")
        return self._entries[name].obj

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        return name in self._entries


METHODS = Registry("method")
BASELINE = "baseline"  # the method every comparison is against: the task loss alone (methods/baseline.py)
TASKS = Registry("task")
STUDENTS = Registry("student")
TEACHERS = Registry("teacher")
FIXTURES = Registry("fixture")  # entries: build(sources folder, out folder, noise folder or None) -> folder
DATASETS = Registry("dataset")  # entries: (fetch(root) -> folder, folder name under the data root)


def register_dataset(name: str, folder: str, description: str):
    """Decorator for a task module's fetcher `fn(root) -> folder`: `data fetch <name>` runs it into root/folder."""

    def deco(fn):
        DATASETS.add(name, (fn, folder), description)
        return fn

    return deco
