"""Tiny-ImageNet: the official layout read from a zip or a folder, decoded once into a cache, bad archives
refused in one line with nothing left behind; an end-to-end run on the real 100-per-class archive."""

import zipfile

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, run_cli_inprocess, shared_data

ROOT = "tiny-imagenet-200"
SUBSET = "tiny-imagenet/tiny-imagenet-200-sub100.zip"
# n01644900_75 is one of the official greyscale JPEGs
CLASSES = ["n01644900", "n01443537", "n01698640"]


def archive():
    return (
        shared_data(
            SUBSET,
            what="the Tiny-ImageNet archive (100 per class)",
            how="any zip of the official layout works; the full one is "
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip (`run --task tinyimagenet --data-dir "
            "DATA/tiny-imagenet` downloads it)",
        )
        / SUBSET
    )


@pytest.fixture(scope="module")
def real_zip():
    return zipfile.ZipFile(archive())


def make_subset(real_zip, path, train_per_class=(0, 1, 75), corrupt=None):
    """A small archive in the official layout with real images: 3 classes (wnids order as listed above)."""
    ann = [
        line for line in real_zip.read(f"{ROOT}/val/val_annotations.txt").decode().splitlines() if line.split("\t")[1] in CLASSES
    ][:12]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{ROOT}/wnids.txt", "\n".join(CLASSES) + "\n")
        z.writestr(f"{ROOT}/words.txt", real_zip.read(f"{ROOT}/words.txt"))
        for w in CLASSES:
            for i in train_per_class:
                name = f"{ROOT}/train/{w}/images/{w}_{i}.JPEG"
                data = real_zip.read(name)
                z.writestr(name, data[:200] if corrupt == name else data)
        z.writestr(f"{ROOT}/val/val_annotations.txt", "\n".join(ann) + "\n")
        for line in ann:
            z.writestr(f"{ROOT}/val/images/{line.split(chr(9))[0]}", real_zip.read(f"{ROOT}/val/images/{line.split(chr(9))[0]}"))
    return ann


def test_reads_the_layout_from_a_zip_and_a_folder_and_caches_the_decoded_arrays(tmp_path, real_zip):
    from tasks.tinyimagenet import read_tinyimagenet

    src = tmp_path / "data"
    src.mkdir()
    ann = make_subset(real_zip, src / "subset.zip")
    a, info = read_tinyimagenet(str(src), tmp_path / "cache")
    words = dict(line.split("\t", 1) for line in real_zip.read(f"{ROOT}/words.txt").decode().splitlines())
    assert list(a["class_names"]) == [words[w].split(",")[0].strip() for w in CLASSES]  # first synonym
    assert a["x_train"].shape == (9, 64, 64, 3) and a["x_train"].dtype == np.uint8
    assert list(a["y_train"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # wnids.txt order
    assert list(a["y_test"]) == [CLASSES.index(line.split("\t")[1]) for line in ann]  # val_annotations.txt
    grey = a["x_train"][2]  # n01644900_75: greyscale in the archive, three equal channels now
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert info["train_images_per_class"] == 3 and "3 of the official 500" in info["data_subset"]
    assert info["data_load"].startswith("decoded JPEGs")
    again, info2 = read_tinyimagenet(str(src), tmp_path / "cache")
    assert info2["data_load"] == "decoded-array cache" and info2["data_source_sha256"] == info["data_source_sha256"]
    assert all(np.array_equal(a[k], again[k]) for k in a)
    folder = tmp_path / "extracted"
    zipfile.ZipFile(src / "subset.zip").extractall(folder)
    from_folder, _ = read_tinyimagenet(str(folder), tmp_path / "cache")
    assert all(np.array_equal(a[k], from_folder[k]) for k in a)


def _refused(res, needle):
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr[-2000:]


@pytest.mark.parametrize("damage", ["truncated", "corrupt_image"])
def test_a_damaged_archive_is_one_line_and_leaves_no_cache(tmp_path, real_zip, damage):
    src = tmp_path / "data"
    src.mkdir()
    bad = f"{ROOT}/train/{CLASSES[1]}/images/{CLASSES[1]}_1.JPEG"
    make_subset(real_zip, src / "subset.zip", corrupt=bad if damage == "corrupt_image" else None)
    if damage == "truncated":
        raw = (src / "subset.zip").read_bytes()
        (src / "subset.zip").write_bytes(raw[: len(raw) // 2])
    work = tmp_path / "work"
    work.mkdir()
    res = run_cli_inprocess(
        [
            "run",
            "--task",
            "tinyimagenet",
            "--methods",
            "baseline",
            "--profile",
            "smoke",
            "--data-dir",
            str(src),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        work,
    )
    _refused(res, "holds tiny-imagenet-200/wnids.txt" if damage == "truncated" else f"{bad.split('/', 1)[1]} in ")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))
    assert list(work.iterdir()) == []


def test_every_method_runs_on_the_real_archive(tmp_path):
    ARCHIVE = archive()
    res = run_cli(
        [
            "run",
            "--task",
            "tinyimagenet",
            "--methods",
            "all",
            "--profile",
            "smoke",
            "--data-dir",
            str(ARCHIVE.parent),
            "--set",
            "data_fraction=0.02",
            "--set",
            "test_limit=400",
            "--out",
            "o",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "o" / "runs.csv")
    from conftest import vector_teacher_methods

    assert sorted(runs["method"]) == sorted(vector_teacher_methods())  # `at` needs an image teacher's maps
    assert ((runs["test_top1"] >= 0) & (runs["test_top1"] <= 100)).all()
    ours = runs.set_index("method").loc["ours_feature"]
    assert 0 <= ours["match_acc"] <= 100  # matching against the 200 class prototypes
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(ours["run_id"])
    p = run.data.params
    assert p["data_subset"] == "100 of the official 500 training images per class" and p["n_test"] == "400"
    assert p["teacher_id"] == "minilm-l6-v2/raw-meanpool" and p["n_templates"] == "80"
