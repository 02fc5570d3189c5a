"""The same-modality track (cifar100-kd): an image teacher the harness trains once per recipe (cached by
content hash) or loads from a checkpoint, run image -> image with every method."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from conftest import run_cli


@pytest.fixture(scope="module")
def kd_task_data(cifar_dir):
    from benchmark.registry import TASKS
    from benchmark.resolve import build_config

    task = TASKS.get("cifar100-kd")()
    cfg = build_config(task, "smoke", {"data_dir": str(cifar_dir)}, {"teacher_data_fraction": "0.02"})
    return task, cfg, task.load(cfg)


def test_the_image_teachers_cache_key_follows_its_recipe_and_training_split(kd_task_data):
    from benchmark.teachers.image import teacher_key

    task, cfg, data = kd_task_data
    base = teacher_key(cfg, data)
    assert teacher_key(replace(cfg, epochs=7, lr=0.3, seed=5), data) == base  # the student's settings are not the teacher's
    for change in (
        dict(teacher_epochs=2),
        dict(teacher_lr=0.2),
        dict(teacher_seed=1),
        dict(teacher_arch="resnet8"),
        dict(batch_size=32),
        dict(weight_decay=1e-4),
        dict(schedule="cosine"),
    ):
        assert teacher_key(replace(cfg, **change), data) != base, change
    other = task.load(replace(cfg, split_seed=1))
    assert teacher_key(cfg, other) != base  # another training split: another teacher


def test_trained_teacher_is_cached_and_a_checkpoint_teacher_round_trips(kd_task_data, tmp_path):
    """img-trained trains once (the second call reads the cache); its weights saved as a checkpoint and loaded
    with img-checkpoint give the same features, logits and accuracies; a torchvision model by name loads too."""
    import torchvision

    from benchmark.teacher_cache import TeacherCache

    task, cfg, data = kd_task_data
    cfg = replace(cfg, teacher_data_fraction=cfg.data_fraction)  # the teacher learns from the student's rows here
    cache = TeacherCache(tmp_path / "cache")
    a = task.teacher_tables(cfg, data, cache)
    (path,) = (tmp_path / "cache" / "image-teachers").glob("*.pt")
    stamp = path.stat().st_mtime_ns
    b = task.teacher_tables(cfg, data, cache)
    assert path.stat().st_mtime_ns == stamp and torch.equal(a.embedding, b.embedding)  # read, not retrained
    assert a.params["teacher_in_loop"] is True and 0 <= a.params["teacher_test_acc"] <= 100
    assert a.embedding.shape == (len(data.train.y) + len(data.val.y) + len(data.test.y), 1, 64)
    ckpt = tmp_path / "teacher.pt"
    torch.save(torch.load(path)["state_dict"], ckpt)
    c = task.teacher_tables(replace(cfg, teacher="img-checkpoint", teacher_checkpoint=str(ckpt)), data, cache)
    torch.testing.assert_close(c.embedding, a.embedding)
    torch.testing.assert_close(c.logits, a.logits)
    assert {k: c.params[k] for k in ("teacher_train_acc", "teacher_test_acc")} == {
        k: a.params[k] for k in ("teacher_train_acc", "teacher_test_acc")
    }
    tv = tmp_path / "tv.pt"
    torch.save(torchvision.models.resnet18(num_classes=100).state_dict(), tv)
    d = task.teacher_tables(
        replace(cfg, teacher="img-checkpoint", teacher_checkpoint=str(tv), teacher_arch="tv:resnet18"), data, cache
    )
    assert d.embedding.shape[-1] == 512 and d.logits.shape[-1] == 100  # the input of its last Linear: 512-d


def test_a_checkpoint_that_does_not_fit_is_refused(kd_task_data, tmp_path):
    from benchmark.registry import UsageError
    from benchmark.teacher_cache import TeacherCache

    task, cfg, data = kd_task_data
    bad = tmp_path / "bad.pt"
    torch.save({"nothing": torch.zeros(1)}, bad)
    for path, needle in ((bad, "does not fit teacher_arch"), (tmp_path / "missing.pt", "no such file")):
        with pytest.raises(UsageError, match=needle):
            task.teacher_tables(
                replace(cfg, teacher="img-checkpoint", teacher_checkpoint=str(path)), data, TeacherCache(tmp_path / "c")
            )


def test_every_method_runs_image_to_image(tmp_path, cifar_dir):
    res = run_cli(
        [
            "run",
            "--task",
            "cifar100-kd",
            "--methods",
            "all",
            "--profile",
            "smoke",
            "--data-dir",
            str(cifar_dir),
            "--set",
            "teacher_data_fraction=0.02",
            "--out",
            "o",
        ],
        tmp_path,
        extra_env={"XKD_CACHE_DIR": str(tmp_path / "cache")},
    )  # its own cache: the teacher is trained here
    assert res.returncode == 0, res.stderr[-3000:]
    from benchmark.registry import METHODS

    runs = pd.read_csv(tmp_path / "o" / "runs.csv")
    assert sorted(runs["method"]) == sorted(METHODS.names()) and runs["test_top1"].notna().all()
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xkd-cifar100-kd")
    params = [r.data.params for r in client.search_runs([exp.experiment_id])]
    assert {p["teacher_in_loop"] for p in params} == {"True"} and {p["teacher_logits"] for p in params} == {"own"}
    assert len({p["teacher_test_acc"] for p in params}) == 1 and all(p["teacher_id"].startswith("img-trained/") for p in params)
    assert len({p["teacher_digest"] for p in params}) == 1 and len(params[0]["teacher_digest"]) == 16  # one teacher
    from benchmark.provenance import code_version

    assert {p["teacher_trained_by"] for p in params} == {code_version()}  # the key does not hash the code: this does


def test_the_confirmatory_comparison_runs_at_kds_defaults_on_every_profile():
    """cifar100-kd's confirmatory protocol (protocols/cifar100_kd_kd.toml) tests KD at its reference T = 4,
    which is also what a run of KD gets on every profile without --set (T = 1, chosen after a look at an older
    regime, is gone); a user's --set still wins."""
    from benchmark.registry import TASKS
    from benchmark.resolve import build_config
    from benchmark.trainer import resolve_hparams

    task = TASKS.get("cifar100-kd")()
    from benchmark.protocol import read
    from benchmark.provenance import ROOT

    proto = read(ROOT / "protocols" / "cifar100_kd_kd.toml")
    assert (proto.task, proto.primary, proto.hparams) == ("cifar100-kd", "kd", {"temperature": "4.0"})
    for profile in task.profiles:
        assert resolve_hparams("kd", task, build_config(task, profile, {}, {}), {})[1].temperature == 4.0
    quick = build_config(task, "quick", {}, {})
    assert resolve_hparams("kd", task, quick, {"temperature": 3.0})[1].temperature == 3.0
