"""Import every module that registers an entry (each registers itself once, on import): the harness's own
methods and tasks, the packages that declare the `xkd_bench.plugins` entry point group, and modules named
with `--plugin` (or `plugins = [...]` in an experiment file). Only the command-line entry point (and tests)
call this: the rest of the harness imports no plugin package."""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from benchmark.registry import UsageError

GROUP = "xkd_bench.plugins"
_external: list[str] = []
_builtin_loaded = False


def builtin_loaded() -> bool:
    return _builtin_loaded


def has_entry_points() -> bool:
    return bool(entry_points(group=GROUP))


def load_plugins(extra: list[str] | tuple[str, ...] = (), how: str = "--plugin") -> None:
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        import methods
        import methods.baseline  # noqa: F401  (first: the reference of every table and the first colour)
        import tasks

        for module in ("benchmark.nets", "benchmark.teachers"):
            importlib.import_module(module)
        for pkg in (methods, tasks):
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{pkg.__name__}.{info.name}")
        for ep in entry_points(group=GROUP):  # installed packages: [project.entry-points."xkd_bench.plugins"]
            _import(ep.value.split(":")[0], f"entry point '{ep.name}' of group {GROUP}")
    for name in extra:
        _import(name, how)


def load_recorded(names, whose: str) -> None:
    """The plugins that runs recorded (experiment.toml's `plugins`, the param `plugins`), loaded as --plugin
    would load them; one that cannot be imported here is refused in one line naming it."""
    for name in sorted({n for n in names if n}):
        _import(name, f"{whose} recorded plugin")


def _import(name: str, how: str) -> None:
    if name in _external:
        return
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise UsageError(f"{how} {name}: cannot import it ({e}); is its package installed or on PYTHONPATH?") from None
        raise UsageError(f"{how} {name}: importing it failed: {e} (a module it imports is missing)") from None
    except SyntaxError as e:
        raise UsageError(f"{how} {name}: syntax error in {e.filename}, line {e.lineno}: {e.msg}") from None
    except UsageError as e:
        raise UsageError(f"{how} {name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - whatever the plugin's own code raised while being imported
        import traceback

        where = traceback.extract_tb(e.__traceback__)[-1]
        raise UsageError(
            f"{how} {name}: importing it raised {type(e).__name__}: {e} ({where.filename}, line "
            f"{where.lineno}); run with --debug for the traceback"
        ) from e
    _external.append(name)


def external_plugins() -> list[str]:
    """Modules loaded from outside the harness (entry points and --plugin), in load order: every run records
    them so that its experiment file loads them again."""
    return list(_external)
