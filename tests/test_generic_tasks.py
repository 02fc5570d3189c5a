"""The generic tasks on small real data: `imagefolder` (Tiny-ImageNet images written as an ImageFolder tree
with the classes' real names) and `paired` (ORL faces: the student sees a 14x12 thumbnail, the teacher side is
the full face, as precomputed embeddings or as inputs for a teacher the harness trains). Every method runs."""
import zipfile

import mlflow
import numpy as np
import pytest

from tests.conftest import run_cli, run_cli_inprocess, shared_data


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    base = shared_data("tiny-imagenet/tiny-imagenet-200-sub100.zip", what="Tiny-ImageNet (100 per class)",
                       how="the tests read tiny-imagenet/tiny-imagenet-200-sub100.zip")
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
            side = pca.transform(full[m]).astype(np.float32) if kind == "emb" else \
                F.adaptive_avg_pool2d(torch.from_numpy(x[m])[:, None], (28, 23)).reshape(int(m.sum()), -1).numpy()
            np.savez(root / kind / f"{name}.npz", x=thumb[m], y=y[m], **{teacher_side: side},
                     class_names=np.array([f"person {i}" for i in range(40)]))
    return root


def _finished(tmp_path, exp):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    return [r for r in runs if r.data.tags.get("xkd.kind") == "train" and r.info.status == "FINISHED"]


def test_imagefolder_runs_every_method(tmp_path, image_folder):
    res = run_cli(["run", "--task", "imagefolder", "--data-dir", str(image_folder), "--profile", "smoke",
                   "--methods", "all", "--out", "o"], tmp_path)
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


def test_imagefolder_refuses_a_folder_without_splits(tmp_path):
    res = run_cli_inprocess(["run", "--task", "imagefolder", "--data-dir", str(tmp_path), "--profile", "smoke"], tmp_path)
    assert res.returncode == 2 and "train/ and test/" in res.stderr


@pytest.mark.parametrize("kind,teacher", [("emb", "precomputed"), ("inputs", "mlp-teacher")])
def test_paired_runs_every_method(tmp_path, paired_dir, kind, teacher):
    res = run_cli(["run", "--task", "paired", "--data-dir", str(paired_dir / kind), "--teacher", teacher,
                   "--profile", "smoke", "--methods", "all", "--out", "o"], tmp_path)
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
