"""The generic tasks on small real data: `imagefolder` (Tiny-ImageNet images written as an ImageFolder tree
with the classes' real names) and `paired` (ORL faces: the student sees a 14x12 thumbnail, the teacher side is
the full face, as precomputed embeddings or as inputs for a teacher the harness trains). Every method runs."""

import zipfile

import mlflow
import numpy as np
import pytest

from conftest import run_cli, run_cli_inprocess, shared_data


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    base = shared_data(
        "tiny-imagenet/tiny-imagenet-200-sub100.zip",
        what="Tiny-ImageNet (100 per class)",
        how="the tests read tiny-imagenet/tiny-imagenet-200-sub100.zip",
    )
    root = tmp_path_factory.mktemp("imagefolder")
    with zipfile.ZipFile(base / "tiny-imagenet" / "tiny-imagenet-200-sub100.zip") as z:
        words = dict(line.split("\t") for line in z.read("tiny-imagenet-200/words.txt").decode().splitlines())
        wnids = z.read("tiny-imagenet-200/wnids.txt").decode().split()[:4]
        for w in wnids:
            name = words[w].split(",")[0].strip().replace(" ", "_")
            imgs = sorted(n for n in z.namelist() if n.startswith(f"tiny-imagenet-200/train/{w}/images/"))[:30]
            for split, part in (("train", imgs[:20]), ("test", imgs[20:])):
                d = root / split / name
                d.mkdir(parents=True)
                for n in part:
                    (d / n.rsplit("/", 1)[1]).write_bytes(z.read(n))
    return root


@pytest.fixture(scope="module")
def paired_dir(tmp_path_factory):
    import torch
    import torch.nn.functional as F
    from sklearn.decomposition import PCA

    base = shared_data("faces-orl/orl_faces_uint8.npz", what="ORL faces", how="the tests read faces-orl/orl_faces_uint8.npz")
    z = np.load(base / "faces-orl" / "orl_faces_uint8.npz")
    x, y = z["images"].astype(np.float32) / 255, z["labels"]
    thumb = F.adaptive_avg_pool2d(torch.from_numpy(x)[:, None], (14, 12)).reshape(len(y), -1).numpy()
    full = x.reshape(len(y), -1)
    test = np.arange(len(y)) % 10 >= 8  # 2 of each person's 10 faces
    pca = PCA(32, random_state=0).fit(full[~test])
    root = tmp_path_factory.mktemp("paired")
    for kind, teacher_side in (("emb", "teacher_embedding"), ("inputs", "teacher_x")):
        (root / kind).mkdir()
        for name, m in (("train", ~test), ("test", test)):
            side = (
                pca.transform(full[m]).astype(np.float32)
                if kind == "emb"
                else F.adaptive_avg_pool2d(torch.from_numpy(x[m])[:, None], (28, 23)).reshape(int(m.sum()), -1).numpy()
            )
            np.savez(
                root / kind / f"{name}.npz",
                x=thumb[m],
                y=y[m],
                **{teacher_side: side},
                class_names=np.array([f"person {i}" for i in range(40)]),
            )
    return root


def _finished(tmp_path, exp):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    return [r for r in runs if r.data.tags.get("xkd.kind") == "train" and r.info.status == "FINISHED"]


def test_imagefolder_runs_every_method(tmp_path, image_folder):
    res = run_cli(
        ["run", "--task", "imagefolder", "--data-dir", str(image_folder), "--profile", "smoke", "--methods", "all", "--out", "o"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = _finished(tmp_path, "xkd-imagefolder")
    from benchmark.plugins import load_plugins

    load_plugins()
    from conftest import vector_teacher_methods

    assert {r.data.params["method"] for r in runs} == set(vector_teacher_methods())  # `at`: image teachers only
    r = next(r for r in runs if r.data.params["method"] == "ours_feature")
    assert r.data.params["n_train"] == "64" and r.data.params["n_val"] == "16" and r.data.params["n_test"] == "40"
    assert r.data.params["teacher_id"] == "minilm-l6-v2/raw-meanpool" and "match_acc" in r.data.metrics
    assert "ImageFolder" in r.data.params["data_layout"]


def test_imagefolder_with_a_val_folder_applies_data_fraction_to_train(tmp_path, image_folder):
    """With a val/ folder, data_fraction takes a stratified share of train/ (it was ignored, yet logged)."""
    import shutil

    from benchmark.resolve import build_config
    from tasks.imagefolder import ImageFolderTask

    root = tmp_path / "withval"
    shutil.copytree(image_folder, root)
    shutil.copytree(image_folder / "test", root / "val")
    task = ImageFolderTask()
    full = task.load(build_config(task, "smoke", {"data_dir": str(root)}, {}))
    half = ImageFolderTask().load(build_config(task, "smoke", {"data_dir": str(root)}, {"data_fraction": "0.5"}))
    assert len(full.train.y) == 80 and len(half.train.y) == 40 and len(half.val.y) == len(full.val.y) == 40
    assert sorted(np.bincount(half.train.y.numpy()).tolist()) == [10, 10, 10, 10]
    assert "a stratified 0.5 of train/" in half.info["split_rule"]


def test_imagefolder_refuses_a_folder_without_splits(tmp_path):
    res = run_cli_inprocess(["run", "--task", "imagefolder", "--data-dir", str(tmp_path), "--profile", "smoke"], tmp_path)
    assert res.returncode == 2 and "train/ and test/" in res.stderr


@pytest.mark.parametrize("kind,teacher", [("emb", "precomputed"), ("inputs", "mlp-teacher")])
def test_paired_runs_every_method(tmp_path, paired_dir, kind, teacher):
    res = run_cli(
        [
            "run",
            "--task",
            "paired",
            "--data-dir",
            str(paired_dir / kind),
            "--teacher",
            teacher,
            "--profile",
            "smoke",
            "--methods",
            "all",
            "--out",
            "o",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = _finished(tmp_path, "xkd-paired")
    assert len(runs) == 14
    p = runs[0].data.params
    assert p["n_train"] == "256" and p["n_val"] == "64" and p["n_test"] == "80"
    assert float(p["teacher_test_acc"]) > 50  # the full face identifies the person: a strong teacher
    ours = next(r for r in runs if r.data.params["method"] == "ours_feature")
    assert 0 <= ours.data.metrics["match_acc"] <= 100


def test_paired_refuses_bad_files(tmp_path, paired_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    z = dict(np.load(paired_dir / "emb" / "train.npz"))
    np.savez(bad / "train.npz", x=z["x"], y=z["y"])
    np.savez(bad / "test.npz", x=z["x"], y=z["y"])
    res = run_cli_inprocess(["run", "--task", "paired", "--data-dir", str(bad), "--profile", "smoke"], tmp_path)
    assert res.returncode == 2 and "lacks teacher_x" in res.stderr


def _bad_pair(z, case):
    """(train arrays, test arrays, val arrays or None) for one malformed input."""
    n, d = len(z["y"]), z["teacher_embedding"].shape[1]
    tr, te = dict(z), dict(z)
    if case == "x_longer":
        tr["x"] = np.concatenate([z["x"], z["x"][:5]])
    elif case == "x_shorter":
        tr["x"] = z["x"][:-5]
    elif case == "teacher_width":
        te["teacher_embedding"] = np.zeros((n, d + 1), np.float32)
    elif case == "x_width":
        te["x"] = np.zeros((n, z["x"].shape[1] + 2), np.float32)
    elif case == "nan_x":
        tr["x"] = z["x"].copy()
        tr["x"][3, 0] = np.nan
    elif case == "nan_test_x":
        te["x"] = z["x"].copy()
        te["x"][0, 1] = np.inf
    elif case == "nan_teacher":
        tr["teacher_embedding"] = z["teacher_embedding"].copy()
        tr["teacher_embedding"][7] = np.nan
    elif case == "float_labels":
        tr["y"] = z["y"].astype(np.float32)
    elif case == "negative_label":
        tr["y"] = z["y"].copy()
        tr["y"][4] = -1
    elif case == "unseen_test_label":  # before: baseline trained, then kd crashed on a logits size (exit 1)
        te["y"] = z["y"].copy()
        te["y"][:3] = z["y"].max() + 1
    elif case in ("one_row_class", "zero_row_class"):  # before: scikit-learn's ValueError from the split
        keep = np.ones(n, bool)
        rows = np.flatnonzero(z["y"] == 0)
        keep[rows[1:] if case == "one_row_class" else rows] = False
        tr = {k: v[keep] for k, v in z.items()}
    elif case == "test_lacks_teacher_embedding":  # before: "train.npz lacks teacher_x"
        del te["teacher_embedding"]
    elif case == "empty_test":
        te = {k: v[:0] for k, v in z.items()}
    return tr, te


@pytest.mark.parametrize(
    "case,message",
    [
        ("x_longer", "train.npz: its arrays differ in length (x 325, y 320"),
        ("x_shorter", "train.npz: its arrays differ in length (x 315, y 320"),
        ("teacher_width", "teacher_embedding has another width in each split (train [32], test [33])"),
        ("x_width", "x has another width in each split"),
        ("nan_x", "train.npz: x has NaN or infinite values in 1 row(s)"),
        ("nan_test_x", "test.npz: x has NaN or infinite values in 1 row(s)"),
        ("nan_teacher", "train.npz: teacher_embedding has NaN or infinite values in 1 row(s)"),
        ("float_labels", "y must be integer class labels"),
        ("truncated", "cannot be read as .npz (BadZipFile"),
        ("text_file", "train.npz is not an .npz archive (numpy.savez writes a zip file"),
        ("negative_label", "train.npz: y has negative labels (-1; 1 row(s)); classes are numbered 0..K-1"),
        ("unseen_test_label", "test.npz has labels that train.npz never has: "),
        ("one_row_class", "train.npz has only one row of class 0: the validation split"),
        ("zero_row_class", "test.npz has labels that train.npz never has: 0 ("),
        ("test_lacks_teacher_embedding", "test.npz lacks teacher_embedding"),
        ("empty_test", "test.npz has no rows"),
    ],
)
def test_paired_refuses_each_malformed_file_in_one_line_before_writing(tmp_path, paired_dir, case, message):
    """Each malformed paired input (without val.npz, so the split would run on it) is one line and exit 2
    before any store or folder is made (these were an IndexError, a BadZipFile, a ValueError, a crash at
    test time, runs that "diverged", or rows silently dropped)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    z = {k: v for k, v in np.load(paired_dir / "emb" / "train.npz").items() if k != "class_names"}
    if case == "truncated":
        raw = (paired_dir / "emb" / "train.npz").read_bytes()
        (bad / "train.npz").write_bytes(raw[: len(raw) // 2])
        np.savez(bad / "test.npz", **z)
    elif case == "text_file":  # before: "contains pickled (object) data"
        (bad / "train.npz").write_text("x,y\n1,2\n")
        np.savez(bad / "test.npz", **z)
    else:
        tr, te = _bad_pair(z, case)
        np.savez(bad / "train.npz", **tr)
        np.savez(bad / "test.npz", **te)
    res = run_cli_inprocess(
        ["run", "--task", "paired", "--data-dir", str(bad), "--profile", "smoke", "--methods", "baseline,kd"], tmp_path
    )
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
