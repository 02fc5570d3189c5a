"""Speaker task on the small real fixture (FSDD speech, ORL faces, sonic-pi noise)."""

import mlflow
import numpy as np
import pytest
import torch

from benchmark.registry import METHODS, UsageError
from benchmark.resolve import build_config
from benchmark.teacher_cache import TeacherCache
from benchmark.trainer import Context
from conftest import run_cli, speaker_sources
from tasks.voxceleb import VoxCeleb
from tasks.voxceleb.sampler import pair_batches


@pytest.fixture(scope="session")
def vox_loaded(vox_dir, tmp_path_factory):
    task = VoxCeleb()
    cfg = build_config(task, "smoke", {"data_dir": str(vox_dir)}, {})
    data = task.load(cfg)
    cache_dir = tmp_path_factory.mktemp("cache")
    first = TeacherCache(cache_dir)
    tables = task.teacher_tables(cfg, data, first)
    return task, cfg, data, tables, cache_dir, first


def test_fixture_layout_and_split(vox_loaded):
    task, cfg, data, tables, _, _ = vox_loaded
    # 4 training speakers: 2 held out whole for open-set validation, 2 train (and only their faces are encoded)
    assert data.num_classes == 2 and data.info["has_cnceleb"] and data.info["has_matching_set"]
    assert set(data.train.y.tolist()) == {0, 1} and data.info["n_val_speakers"] == 2
    train_names = {n.split("/")[0] for n in data.train.x.names}
    val_names = {n.split("/")[0] for n in data.val.x.names}
    assert len(train_names) == 2 and len(val_names) == 2 and not train_names & val_names
    assert len(data.val.y) == 16  # 8 utterances of each held-out speaker
    labels = data.val.trials.labels
    left, right = data.val.trials.left, data.val.trials.right
    assert labels.sum() == 20 and len(labels) == 40  # 10 target and 10 non-target trials per held-out speaker
    same = (data.val.y[left] == data.val.y[right]).numpy().astype(int)
    assert (same == labels).all() and (left != right).all()
    for s in (0, 1):  # every held-out speaker has target and non-target trials
        mine = (data.val.y[left] == s).numpy()
        assert labels[mine].sum() == 10 and (1 - labels[mine]).sum() == 10
    assert tables.embedding.shape == (data.info["n_videos"], 1, 128)  # one dlib descriptor per video
    assert tables.logits.shape == (data.info["n_videos"], 1, 2) and data.info["n_videos"] == 12
    assert data.train.x.data.dtype == torch.int16


def test_dlib_teacher_offline_and_cache_reused(vox_loaded):
    task, cfg, data, tables, cache_dir, first = vox_loaded
    assert first.encoder_calls == 1
    again = TeacherCache(cache_dir)
    tables2 = task.teacher_tables(cfg, data, again)
    assert again.encoder_calls == 0 and torch.equal(tables.embedding, tables2.embedding)
    assert tables.params["teacher_probe_train_acc"] == 1.0  # 2 identities, separable by the real descriptor


def test_pair_sampler_gives_distinct_speakers_in_pairs():
    y = torch.tensor([0] * 9 + [1] * 6 + [2] * 7 + [3] * 4)
    batches = pair_batches(y, 6, torch.Generator().manual_seed(0))
    assert len(batches) >= 3
    for b in batches:
        pairs = y[b].reshape(-1, 2)
        assert (pairs[:, 0] == pairs[:, 1]).all() and len(set(pairs[:, 0].tolist())) == 3


def test_every_method_trains_on_the_speaker_task(vox_loaded):
    """Methods see only StudentOut / TeacherOut: each takes real steps here without task-specific code."""
    task, cfg, data, tables, _, _ = vox_loaded
    from benchmark.registry import UsageError
    from conftest import vector_teacher_methods

    for name in METHODS.names():
        if name not in vector_teacher_methods():  # a face teacher has no stage maps: refused, never approximated
            with pytest.raises(UsageError, match="stage maps"):
                Context(cfg, task, data, tables, name, {})
            continue
        ctx = Context(cfg, task, data, tables, name, {})
        batches = task.epoch_batches(data.train, cfg.batch_size, ctx.gen)
        for b in batches[:2]:
            loss, terms, _ = ctx.train_step(b)
            assert torch.isfinite(loss), name
        assert "ap" in terms and "ce" in terms, name
        if name.startswith("ours"):
            assert ctx.hparams.feat_dist == "cos" and ctx.hparams.margin_deg == 30.0


def test_ir50_loads_a_checkpoint_and_rejects_a_wrong_one(tmp_path):
    from benchmark.teachers import TeacherOptions, build_teacher
    from benchmark.teachers.face import IR50, IR50Face

    torch.manual_seed(0)
    net = IR50().eval()
    torch.save(net.state_dict(), tmp_path / "ir50.pth")
    t = build_teacher("ir50", TeacherOptions(checkpoint=str(tmp_path / "ir50.pth")))
    assert t.id.startswith("ir50/")
    face = np.random.default_rng(0).integers(0, 255, (112, 92), dtype=np.uint8)
    e = t.encode([face, face])
    assert e.shape == (2, 512) and torch.allclose(e[0], e[1])
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "bad.pth")
    bad = IR50Face(TeacherOptions(checkpoint=str(tmp_path / "bad.pth")))
    with pytest.raises(UsageError, match="not an IR-50"):
        bad.encode([face])
    missing = IR50Face()
    with pytest.raises(UsageError, match="teacher_checkpoint"):
        missing.id


def test_weak_face_teacher_is_trained_on_training_faces(tmp_path):
    from benchmark.teachers.face import WeakFace

    z = np.load(speaker_sources() / "faces-orl" / "orl_faces_uint8.npz")
    keep = z["labels"] < 4
    imgs, labels = list(z["images"][keep]), z["labels"][keep]
    from benchmark.teacher_cache import TeacherCache
    from benchmark.teachers import TeacherOptions

    t = WeakFace(TeacherOptions(train_labels=tuple(int(v) for v in labels[::2])), epochs=8)
    # trained on the even images only, then applied to all; through the cache, as a run calls it (under no_grad)
    e, _ = TeacherCache(tmp_path).embeddings(t, imgs[::2] + imgs[1::2], extra={"train_labels": labels[::2].tolist()})
    assert e.shape == (40, 512)
    train, held = torch.nn.functional.normalize(e[:20], dim=1), torch.nn.functional.normalize(e[20:], dim=1)
    nn_label = labels[::2][(held @ train.t()).argmax(1).numpy()]
    assert (nn_label == labels[1::2]).mean() >= 0.5  # chance is 0.25


def test_smoke_run_logs_speaker_metrics(tmp_path, vox_dir):
    res = run_cli(
        [
            "run",
            "--task",
            "voxceleb",
            "--methods",
            "baseline,ours_feature_quality",
            "--profile",
            "smoke",
            "--data-dir",
            str(vox_dir),
            "--out",
            "out",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("xkd-voxceleb").experiment_id])
    assert len(runs) == 2
    for r in runs:
        m = r.data.metrics
        for k in (
            "eer_o",
            "mindcf_o",
            "eer_h",
            "eer_noise15",
            "eer_noise10",
            "eer_noise5",
            "eer_cnceleb",
            "match_af_o",
            "match_fa_o",
            "match_af_h",
            "match_fa_h",
            "val_eer",
        ):
            assert k in m, k
        assert 0 <= m["eer_o"] <= 100 and 0 <= m["mindcf_o"] <= 1.0 + 1e-9
        assert r.data.params["teacher_logits"] == "probe" and r.data.params["teacher_id"].startswith("dlib-face")
        assert 0 <= float(r.data.params["teacher_test_acc"]) <= 100  # leave-one-out 1-NN over unseen identities
        if r.data.params["method"] == "ours_feature_quality":
            assert r.data.params["hp.feat_dist"] == "cos" and r.data.params["hp.margin_deg"] == "30.0"
        assert "features.npz" in {a.path for a in client.list_artifacts(r.info.run_id)}


def test_h_matching_without_gender_is_not_available(tmp_path, vox_dir):
    import shutil

    d = tmp_path / "nogender"
    shutil.copytree(vox_dir, d)
    (d / "vox2_meta.csv").unlink()
    task = VoxCeleb()
    cfg = build_config(task, "smoke", {"data_dir": str(d)}, {"match_triplets": "200"})
    data = task.load(cfg)
    assert data.info["match_h"].startswith("not available")
    tables = task.teacher_tables(cfg, data, TeacherCache(tmp_path / "cache"))
    ctx = Context(cfg, task, data, tables, "ours_feature", {})
    m, _ = ctx.evaluate("test")
    assert np.isnan(m["match_af_h"]) and np.isnan(m["match_fa_h"])
    assert 0 <= m["match_af_o"] <= 100 and 0 <= m["match_fa_o"] <= 100


def test_epoch_loop_runs_the_batches_the_sampler_produces(vox_loaded):
    """A generator state that yields fewer pair batches than planned must not raise (IndexError before)."""
    task, cfg, data, tables, _, _ = vox_loaded
    ctx = Context(cfg, task, data, tables, "baseline", {})
    ctx.steps_per_epoch += 5  # plan more steps than any batching produces
    m = ctx.train_epoch(0)
    assert np.isfinite(m["train_loss"])


def test_missing_speaker_data_exits_2(tmp_path):
    res = run_cli(
        ["run", "--task", "voxceleb", "--methods", "baseline", "--profile", "smoke", "--data-dir", str(tmp_path / "none")],
        tmp_path,
    )
    assert res.returncode == 2 and "fixture voxceleb" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
