import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where tests look for real data, in order: $XKD_SHARED_DATA, ../shared/data beside the clone, the data root.
DATA_ROOTS = [
    Path(p)
    for p in (
        os.environ.get("XKD_SHARED_DATA"),
        ROOT.parent / "shared" / "data",
        os.environ.get("XKD_DATA", Path.home() / ".cache" / "xkd-bench" / "data"),
    )
    if p
]
# One teacher-embedding cache for the whole test session (and across sessions): the text teacher
# is encoded once per cache key, which is itself one of the behaviours under test.
os.environ.setdefault("XKD_CACHE_DIR", str(ROOT / ".cache" / "test-teachers"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests run as one process per core (pytest -n auto): one thread each, so they never oversubscribe the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(ROOT))


def shared_data(*rels: str, what: str, how: str) -> Path:
    """The first data root holding every rel path; else the test is skipped with how to get the data (failed
    instead when XKD_REQUIRE_DATA=1, as in CI, so that CI proves everything runs)."""
    for base in DATA_ROOTS:
        if all((base / r).exists() for r in rels):
            return base
    msg = (
        f"{what} not found ({', '.join(rels)} under {' or '.join(map(str, DATA_ROOTS))}); {how}. "
        "Set XKD_SHARED_DATA to the folder that holds it."
    )
    if os.environ.get("XKD_REQUIRE_DATA") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


CIFAR_HOW = (
    "the tests read the cifar100_uint8.npz (x_train [50000, 32, 32, 3] uint8, y_train, x_test, y_test) + "
    "meta.json (fine_label_names, coarse_label_names, fine_to_coarse) layout; the harness itself also reads "
    "torchvision's cifar-100-python/ and downloads it where a network exists"
)


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    return (
        shared_data("cifar100/meta.json", "cifar100/cifar100_uint8.npz", what="real CIFAR-100 (npz layout)", how=CIFAR_HOW)
        / "cifar100"
    )


def speaker_sources() -> Path:
    return shared_data(
        "fsdd/recordings",
        "faces-orl/orl_faces_uint8.npz",
        what="FSDD speech and ORL faces",
        how="FSDD: github.com/Jakobovski/free-spoken-digit-dataset (recordings/*.wav); ORL/AT&T faces "
        "as orl_faces_uint8.npz (images [400, 112, 92] uint8, labels [400])",
    )


@pytest.fixture(scope="session")
def vox_dir(tmp_path_factory):
    """The small real speaker fixture (FSDD speech, ORL faces, sonic-pi noise), built once per session."""
    from tasks.voxceleb.fixture import build_fixture

    return build_fixture(speaker_sources(), tmp_path_factory.mktemp("vox") / "fixture")


@pytest.fixture(scope="session", autouse=True)
def plugins():
    from benchmark.plugins import load_plugins

    load_plugins()


def run_cli(args, tmp_path, extra_env=None, launcher=None):
    """Run `python -m benchmark ...` (or `launcher + args`, e.g. torchrun) in a subprocess; returns CompletedProcess."""
    import subprocess

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **(extra_env or {})}
    return subprocess.run(
        [*(launcher or [sys.executable, "-m", "benchmark"]), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_cli_inprocess(args, tmp_path, extra_env=None):
    """`python -m benchmark ...` called in this process (benchmark.cli.main, the same code path as the
    subprocess): for refusals, which end before any training, without paying an interpreter start (~7 s)
    each. cwd, environment and the SIGTERM handler are restored afterwards."""
    import contextlib
    import io
    import signal
    import subprocess

    from benchmark.cli import main

    env, cwd, handler = dict(os.environ), os.getcwd(), signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **(extra_env or {})})
        os.chdir(tmp_path)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's own errors
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        signal.signal(signal.SIGTERM, handler)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vector_teacher_methods() -> list[str]:
    """Every registered method that runs against a teacher without stage maps (text, faces, vectors): what
    `--methods all` selects on such a task (the map-only ones, such as `at`, are left out with a line)."""
    from benchmark.registry import METHODS

    return [m for m in METHODS.names() if not METHODS.get(m).needs_teacher_maps(METHODS.get(m).Hparams())]


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 (Debian's postgresql package), stopped afterwards: the URL of its
    database `optuna` (a database `mlflow` beside it, for a tracking server's backend store)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
    bindir = bins[-1].parent
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="xkd-pg-"))  # outside pytest's 0700 tree: the postgres user must reach it
    data = root / "data"
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(root, "postgres")
    port = free_port()
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, capture_output=True
    )
    subprocess.run(
        [
            *as_pg,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {root}",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        for db in ("optuna", "mlflow"):  # one database each: both keep their schema version in alembic_version
            subprocess.run(
                [*as_pg, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db],
                check=True,
                capture_output=True,
            )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process runs (a zombie awaiting its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def child_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


@contextlib.contextmanager
def mlflow_service(args: list[str], cwd=None, timeout: float = 120):
    """`mlflow <args>` (ui or server) on 127.0.0.1 in its own process group: its URL once /health answers; stopped
    (the whole group) afterwards."""
    import signal
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=cwd,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail(f"mlflow {args[0]} did not start within {timeout:.0f} s")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.poll() is not None


# a seconds-long cifar100 run: 2% of the training set, 1% validation, 200 test images
SMOKE = ["--profile", "smoke", "--set", "data_fraction=0.02", "--set", "val_fraction=0.01", "--set", "test_limit=200"]


def start_cli(args, tmp_path):
    """`python -m benchmark ARGS` started in the background (stdout and stderr piped), its store tmp_path/mlflow.db."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    # a Ctrl-C reaches the CLI as in a terminal (test runners' workers may ignore SIGINT, and children inherit it)
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_epoch(ckpt_dir, epoch, proc, timeout=300):
    """Block until a checkpoint of at least `epoch` finished epochs exists (0: until the run's MLflow run exists)."""
    import torch

    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        for f in ckpt_dir.glob("*.pt") if ckpt_dir.exists() else []:
            try:
                if torch.load(f, weights_only=False).get("epoch", 0) >= epoch:
                    return
            except Exception:
                pass
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


def train_runs(tmp_path, experiment="xkd-cifar100"):
    """The training runs of tmp_path/mlflow.db's experiment."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("xkd.kind") == "train"]


def run_context(task_name, profile, control, data_dir=None, seed=0, cache=None, sets=None, method="kd"):
    """A run's training Context (benchmark/trainer.py) under teacher_control=control, built as `run` builds it."""
    from benchmark.registry import TASKS
    from benchmark.resolve import build_config
    from benchmark.teacher_cache import TeacherCache
    from benchmark.trainer import Context

    task = TASKS.get(task_name)()
    cfg = build_config(
        task, profile, {"data_dir": data_dir} if data_dir else {}, {"teacher_control": control, "seed": str(seed), **(sets or {})}
    )
    data = task.load(cfg)
    tables = task.teacher_tables(cfg, data, TeacherCache(cache))
    return Context(cfg, task, data, tables, method, {})


@pytest.fixture
def fixture_store(tmp_path):
    """A store of known runs (two seeds of baseline and ours_feature, a Table 12 sweep, one failed run): the
    report tests' (tests/test_report.py, tests/test_report_runs.py). Returns (uri, {(method, seed): run id})."""
    from stores import known_store

    return known_store(tmp_path)
