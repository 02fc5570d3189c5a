"""`data fetch|list` and the data root: offline failures are one line with nothing left behind; the FSDD
conversion checked on the real recordings (the download itself replaced by a local archive)."""

import io
import json
import tarfile

import pytest

from conftest import run_cli, shared_data, speaker_sources


def test_data_list_shows_what_is_present(tmp_path):
    root = shared_data("cifar100", what="a data root holding cifar100/", how="python -m benchmark data fetch cifar100")
    res = run_cli(["data", "list", "--root", str(root)], tmp_path)
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if line.strip().startswith("cifar100"))
    assert "MB" in line and "absent" not in line
    res = run_cli(["data", "list", "--root", str(tmp_path / "none")], tmp_path)
    assert res.returncode == 0 and res.stdout.count("absent") == 4


@pytest.mark.parametrize(
    "name,needle",
    [
        ("orl", "fetch_olivetti_faces"),
        ("fsdd", "github.com/Jakobovski"),
        ("tinyimagenet", "cs231n.stanford.edu"),
        ("cifar100", "cs.toronto.edu"),
    ],
)
def test_fetch_without_a_network_is_one_line_and_leaves_nothing(tmp_path, name, needle, monkeypatch):
    import urllib.request

    def offline(*a, **k):
        raise OSError("no network (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    from benchmark.plugins import load_plugins
    from benchmark.registry import DATASETS, UsageError

    load_plugins()
    root = tmp_path / "root"
    with pytest.raises(UsageError, match=needle) as e:
        DATASETS.get(name)[0](root)
    assert "\n" not in str(e.value)
    assert not root.exists()


def test_run_without_data_dir_uses_the_data_root_and_says_what_is_missing(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    res = run_cli(
        ["run", "--task", "cifar100", "--methods", "baseline", "--profile", "smoke"],
        work,
        extra_env={"XKD_DATA": str(root), "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and f"CIFAR-100 not found in '{root / 'cifar100'}'" in lines[0]
    assert list(root.iterdir()) == [] and list(work.iterdir()) == []


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """A local HTTP server (Python's http.server) serving a folder: (folder, base URL)."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _corrupt(data: bytes) -> bytes:
    """The same length with bytes flipped in the middle (a damaged download, not a short one)."""
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]


def test_fsdd_fetch_over_http_checks_the_recordings_and_converts(tmp_path, http_folder, monkeypatch):
    """The FSDD v1.0.10 archive layout served over HTTP: the recordings' sha256 (the real v1.0.10 content),
    speakers.json from metadata.py; a damaged or truncated download fails in one line and leaves nothing."""
    folder, base = http_folder
    src = speaker_sources() / "fsdd"
    meta = json.loads((src / "speakers.json").read_text())

    def archive(flip=None):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            for wav in sorted((src / "recordings").glob("*.wav")):
                data = wav.read_bytes()
                if wav.name == flip:
                    data = _corrupt(data)
                info = tarfile.TarInfo(f"free-spoken-digit-dataset-1.0.10/recordings/{wav.name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            code = f"metadata = {meta!r}\n".encode()
            info = tarfile.TarInfo("free-spoken-digit-dataset-1.0.10/metadata.py")
            info.size = len(code)
            tar.addfile(info, io.BytesIO(code))
        return buf.getvalue()

    good = archive()
    (folder / "good.tar.gz").write_bytes(good)
    (folder / "flipped.tar.gz").write_bytes(archive(flip="3_theo_7.wav"))
    (folder / "short.tar.gz").write_bytes(good[: len(good) // 3])
    from benchmark.registry import UsageError
    from tasks.voxceleb import fetch as datasets

    root = tmp_path / "root"
    for name, needle in (("flipped", "have sha256"), ("short", "cannot be read")):
        monkeypatch.setattr(datasets, "FSDD_URL", f"{base}/{name}.tar.gz")
        with pytest.raises(UsageError, match=needle) as e:
            datasets.fetch_fsdd(root)
        assert "\n" not in str(e.value) and not root.exists()
    monkeypatch.setattr(datasets, "FSDD_URL", f"{base}/good.tar.gz")
    out = datasets.fetch_fsdd(root)
    assert len(list((out / "recordings").glob("*.wav"))) == 3000
    assert datasets.recordings_digest(out / "recordings") == datasets.FSDD_SHA256
    assert json.loads((out / "speakers.json").read_text()) == meta
    assert [p.name for p in root.iterdir()] == ["fsdd"]  # no partial folder left


def test_tinyimagenet_fetch_over_http_checks_the_md5(tmp_path, http_folder, monkeypatch):
    import hashlib
    import zipfile

    from test_tinyimagenet import archive as real_archive
    from test_tinyimagenet import make_subset

    folder, base = http_folder
    with zipfile.ZipFile(real_archive()) as real:
        make_subset(real, folder / "tiny.zip", train_per_class=(0,))
    good = (folder / "tiny.zip").read_bytes()
    (folder / "damaged.zip").write_bytes(_corrupt(good))
    import tasks.tinyimagenet as datasets
    import tasks.tinyimagenet as tin
    from benchmark.registry import UsageError

    monkeypatch.setattr(tin, "MD5", hashlib.md5(good).hexdigest())
    root = tmp_path / "root"
    monkeypatch.setattr(tin, "URL", f"{base}/damaged.zip")
    with pytest.raises(UsageError, match="md5") as e:
        datasets.fetch_tinyimagenet(root)
    assert "\n" not in str(e.value) and not root.exists()
    monkeypatch.setattr(tin, "URL", f"{base}/tiny.zip")
    out = datasets.fetch_tinyimagenet(root)
    assert [p.name for p in out.iterdir()] == ["tiny-imagenet-200.zip"] and [p.name for p in root.iterdir()] == ["tiny-imagenet"]
    a, _ = tin.read_tinyimagenet(str(out), tmp_path / "cache")
    assert a["x_train"].shape == (3, 64, 64, 3) and len(a["class_names"]) == 3


def test_cifar100_fetch_over_http_uses_torchvision_and_writes_the_arrays(tmp_path, http_folder, monkeypatch):
    """A small archive in the cifar-100-python layout served over HTTP through torchvision's own download
    (its md5 checks), converted to cifar100_uint8.npz + meta.json; a damaged archive leaves nothing."""
    import hashlib
    import pickle

    import numpy as np
    from torchvision.datasets import CIFAR100

    folder, base = http_folder
    rng = np.random.default_rng(0)
    files = {}
    for split, per in (("train", 2), ("test", 1)):
        fine = np.repeat(np.arange(100), per)
        files[split] = pickle.dumps(
            {
                "data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
                "filenames": [f"{i}.png" for i in range(len(fine))],
            }
        )
    files["meta"] = pickle.dumps(
        {"fine_label_names": [f"class{i:02d}" for i in range(100)], "coarse_label_names": [f"super{i:02d}" for i in range(20)]}
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    good = buf.getvalue()
    (folder / "good.tar.gz").write_bytes(good)
    (folder / "damaged.tar.gz").write_bytes(_corrupt(good))
    md5 = {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    monkeypatch.setattr(CIFAR100, "tgz_md5", hashlib.md5(good).hexdigest())
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5["meta"]})
    import tasks.cifar100 as datasets
    from benchmark.registry import UsageError

    root = tmp_path / "root"
    monkeypatch.setattr(CIFAR100, "url", f"{base}/damaged.tar.gz")
    with pytest.raises(UsageError, match="torchvision download") as e:
        datasets.fetch_cifar100(root)
    assert "\n" not in str(e.value) and not root.exists()
    monkeypatch.setattr(CIFAR100, "url", f"{base}/good.tar.gz")
    out = datasets.fetch_cifar100(root)
    from tasks.cifar100 import read_cifar100

    xtr, ytr, xte, yte, names, f2c, coarse, layout = read_cifar100(str(out))
    assert layout == "npz" and xtr.shape == (200, 32, 32, 3) and xte.shape == (100, 32, 32, 3)
    assert list(f2c) == [i // 5 for i in range(100)] and names[7] == "class07" and coarse[3] == "super03"
    assert not (out / "cifar-100-python.tar.gz").exists()


def test_readmes_main_command_as_written_starts_training_from_the_data_root(tmp_path, cifar_dir):
    """`python -m benchmark run --task cifar100 --methods all`, nothing added, with only $XKD_DATA pointing at a
    root that holds cifar100/ (as CI does): training starts (its first MLflow run exists); then SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["XKD_DATA"] = str(cifar_dir.parent)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", "--task", "cifar100", "--methods", "all"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, runs = time.time() + 300, []
        while not runs:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.5)
            try:
                client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # README's default store
                exp = client.get_experiment_by_name("xkd-cifar100")
                runs = (
                    [
                        r
                        for r in client.search_runs([exp.experiment_id])
                        if r.data.tags.get("xkd.kind") == "train" and "data_dir" in r.data.params
                    ]
                    if exp
                    else []
                )  # a run is created, then its params logged
            except Exception:
                pass  # the store is being created
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "task cifar100 | profile quick" in out
    assert runs[0].data.params["data_dir"] == str(cifar_dir) and runs[0].data.tags["method"] == "baseline"
