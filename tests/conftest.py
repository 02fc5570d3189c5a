import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XKD_SHARED_DATA", ROOT.parent / "shared" / "data"))
# One teacher-embedding cache for the whole test session (and across sessions): the text teacher
# is encoded once per cache key, which is itself one of the behaviours under test.
os.environ.setdefault("XKD_CACHE_DIR", str(ROOT / ".cache" / "test-teachers"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests run as one process per core (pytest -n auto): one thread each, so they never oversubscribe the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    d = SHARED_DATA / "cifar100"
    if not (d / "cifar100_uint8.npz").exists():
        pytest.fail(f"real CIFAR-100 not found at {d}: the tests read ../shared/data (set XKD_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def vox_dir(tmp_path_factory):
    """The small real speaker fixture (FSDD speech, ORL faces, sonic-pi noise), built once per session."""
    from tasks.voxceleb.fixture import build_fixture
    return build_fixture(SHARED_DATA, tmp_path_factory.mktemp("vox") / "fixture")


@pytest.fixture(scope="session", autouse=True)
def plugins():
    from benchmark.plugins import load_plugins
    load_plugins()


def run_cli(args, tmp_path, extra_env=None):
    """Run `python -m benchmark ...` in a subprocess; returns CompletedProcess."""
    import subprocess
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server a test starts."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
