"""Foreseeable bad input: one clear line, exit code 2, nothing left behind (no out folder, no MLflow store)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, run_cli

SMOKE = ["--profile", "smoke", "--set", "data_fraction=0.02", "--set", "val_fraction=0.01", "--set", "test_limit=200"]


def _refused(res, tmp_path, *needles, keep=()):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)
    assert left == [], f"left behind: {left}"


@pytest.mark.parametrize("sets,needle", [
    (["--set", "lr=-1"], "lr=-1.0 is out of range; valid: (0, inf]"),
    (["--set", "epochs=0"], "epochs=0 is out of range"),
    (["--set", "data_fraction=1.5"], "data_fraction=1.5 is out of range"),
    (["--methods", "ours_feature", "--set", "margin=-1"], "margin=-1.0 is out of range; valid: [0, inf]"),
    (["--methods", "ours_feature", "--set", "alpha=5"], "alpha=5.0 is out of range; valid: [0, 1]"),
    (["--methods", "kd", "--set", "temperature=0"], "temperature=0.0 is out of range"),
    (["--methods", "ours_feature", "--set", "alpha=nan"], "alpha=nan is out of range"),
])
def test_out_of_range_values_are_refused(tmp_path, cifar_dir, sets, needle):
    res = run_cli(["run", "--data-dir", str(cifar_dir), *SMOKE, *sets], tmp_path)
    _refused(res, tmp_path, needle)


@pytest.fixture
def bad_cifar(tmp_path_factory, cifar_dir):
    """Copies of the real CIFAR-100 layout with one thing wrong each (made once per test)."""
    def make(kind):
        d = tmp_path_factory.mktemp(f"cifar-{kind}")
        meta = json.loads((cifar_dir / "meta.json").read_text())
        if kind == "truncated":
            raw = (cifar_dir / "cifar100_uint8.npz").read_bytes()
            (d / "cifar100_uint8.npz").write_bytes(raw[: len(raw) // 3])
        else:
            (d / "cifar100_uint8.npz").symlink_to(cifar_dir / "cifar100_uint8.npz")
        if kind == "ten_names":
            meta["fine_label_names"] = meta["fine_label_names"][:10]
        if kind != "no_meta":
            (d / "meta.json").write_text(json.dumps(meta))
        return d
    return make


@pytest.mark.parametrize("kind,needle", [
    ("truncated", "cifar100_uint8.npz cannot be read"),
    ("no_meta", "meta.json is missing"),
    ("ten_names", "meta.json names 10 classes"),
])
def test_broken_cifar_data_is_named(tmp_path, bad_cifar, kind, needle):
    d = bad_cifar(kind)
    cache = tmp_path / "cache"
    res = run_cli(["run", "--methods", "baseline", "--data-dir", str(d), "--cache-dir", str(cache), *SMOKE], tmp_path)
    _refused(res, tmp_path, needle)  # no teacher-cache entry for a wrong class list either


def test_out_and_tracking_uri_are_checked_before_anything_is_written(tmp_path, cifar_dir):
    (tmp_path / "afile").write_text("x")
    res = run_cli(["run", "--methods", "baseline", "--data-dir", str(cifar_dir), *SMOKE, "--out", "afile/sub"], tmp_path)
    _refused(res, tmp_path, "--out afile/sub", "is a file", keep=("afile",))
    res = run_cli(["run", "--methods", "baseline", "--data-dir", str(cifar_dir), *SMOKE, "--out", "afile"], tmp_path)
    _refused(res, tmp_path, "exists and is not a folder", keep=("afile",))
    res = run_cli(["run", "--methods", "baseline", "--data-dir", str(cifar_dir), *SMOKE, "--tracking-uri", "foo://x"], tmp_path)
    _refused(res, tmp_path, "unknown scheme 'foo'", keep=("afile",))


def test_unreachable_study_storage_is_one_line(tmp_path, cifar_dir):
    url = f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/optuna"
    res = run_cli(["study", "--paper", "table12", "--data-dir", str(cifar_dir), *SMOKE, "--storage", url], tmp_path)
    _refused(res, tmp_path, "cannot open the study storage", "***@127.0.0.1")


def test_a_corrupt_teacher_cache_entry_is_rebuilt_not_used(tmp_path, cifar_dir):
    cache = tmp_path / "cache"
    args = ["run", "--methods", "baseline", "--data-dir", str(cifar_dir), *SMOKE, "--cache-dir", str(cache), "--out", "o"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (entry,) = (cache / "teachers").glob("*.pt")
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 2])  # truncated
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "teacher cache entry" in again.stderr and "rebuilding it" in again.stderr
    assert len(entry.read_bytes()) == len(good)  # rewritten whole


def test_speaker_trial_list_without_both_labels_is_refused(tmp_path, vox_dir):
    d = tmp_path / "vox"
    shutil.copytree(vox_dir, d)
    (d / "vox1_test" / "veri_test.txt").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    res = run_cli(["run", "--task", "voxceleb", "--methods", "baseline", "--profile", "smoke", "--data-dir", str(d)], work)
    _refused(res, work, "veri_test.txt needs target (1) and non-target (0) trials")
