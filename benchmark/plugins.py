"""Import every module that registers an entry (each registers itself once, on import)."""
from __future__ import annotations

import importlib
import pkgutil


def load_plugins() -> None:
    import methods
    import tasks
    for module in ("benchmark.nets", "benchmark.teachers"):
        importlib.import_module(module)
    for pkg in (methods, tasks):
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
