"""Which code produced a run: the package version, the git commit of the source tree and whether that tree
had uncommitted changes. Runs of different code versions are different settings (never pooled or paired)."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_output(*args: str, folder: Path = ROOT) -> bytes | None:
    """A git command's output in `folder` (default: this checkout), or None when git fails or is absent."""
    try:
        out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git(*args: str) -> str | None:
    out = git_output(*args)
    return None if out is None else out.decode("utf-8", "replace").strip()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """'<version>+g<commit12>' from a git checkout ('.dirty' when tracked files differ from the commit), the
    bare package version otherwise (an installed wheel)."""
    try:
        version = metadata.version("xmodal-kd-bench")
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit = _git("rev-parse", "HEAD") if (ROOT / ".git").exists() else None
    if not commit:
        return version
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{version}+g{commit[:12]}" + (".dirty" if dirty else "")
