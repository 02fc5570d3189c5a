"""`data fetch|list` and the data root: offline failures are one line with nothing left behind; the FSDD
conversion checked on the real recordings (the download itself replaced by a local archive)."""
import io
import json
import tarfile

import pytest

from conftest import run_cli, speaker_sources


def test_data_list_shows_what_is_present(tmp_path):
    from conftest import DATA_ROOTS
    root = next(r for r in DATA_ROOTS if (r / "cifar100").exists()) if any((r / "cifar100").exists() for r in DATA_ROOTS) else None
    if root is None:
        pytest.skip("no data root with cifar100")
    res = run_cli(["data", "list", "--root", str(root)], tmp_path)
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if line.strip().startswith("cifar100"))
    assert "MB" in line and "absent" not in line
    res = run_cli(["data", "list", "--root", str(tmp_path / "none")], tmp_path)
    assert res.returncode == 0 and res.stdout.count("absent") == 4


@pytest.mark.parametrize("name,needle", [("orl", "fetch_olivetti_faces"), ("fsdd", "github.com/Jakobovski"),
                                         ("tinyimagenet", "cs231n.stanford.edu"), ("cifar100", "cs.toronto.edu")])
def test_fetch_without_a_network_is_one_line_and_leaves_nothing(tmp_path, name, needle, monkeypatch):
    import urllib.request

    def offline(*a, **k):
        raise OSError("no network (test)")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    from benchmark import datasets
    from benchmark.registry import UsageError
    root = tmp_path / "root"
    with pytest.raises(UsageError, match=needle) as e:
        datasets.DATASETS[name][0](root)
    assert "\n" not in str(e.value)
    assert not root.exists()


def test_run_without_data_dir_uses_the_data_root_and_says_what_is_missing(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    res = run_cli(["run", "--task", "cifar100", "--methods", "baseline", "--profile", "smoke"], work,
                  extra_env={"XKD_DATA": str(root), "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"})
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and f"CIFAR-100 not found in '{root / 'cifar100'}'" in lines[0]
    assert list(root.iterdir()) == [] and list(work.iterdir()) == []


def test_fsdd_fetch_converts_the_repository_archive(tmp_path, monkeypatch):
    src = speaker_sources() / "fsdd"
    meta = json.loads((src / "speakers.json").read_text())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for wav in sorted((src / "recordings").glob("*.wav")):
            tar.add(wav, arcname=f"free-spoken-digit-dataset-1.0.10/recordings/{wav.name}")
        code = f"metadata = {meta!r}\n".encode()
        info = tarfile.TarInfo("free-spoken-digit-dataset-1.0.10/metadata.py")
        info.size = len(code)
        tar.addfile(info, io.BytesIO(code))
    from benchmark import datasets
    monkeypatch.setattr(datasets, "_download", lambda url, what, layout: buf.getvalue())
    out = datasets.fetch_fsdd(tmp_path / "root")
    assert len(list((out / "recordings").glob("*.wav"))) == 3000
    assert json.loads((out / "speakers.json").read_text()) == meta
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["fsdd"]  # no partial folder left
