"""Fake MLflow stores for the report tests: an empty store, a finished run logged as the harness logs one, and
the known-runs store behind the `fixture_store` fixture (tests/conftest.py)."""

from pathlib import Path


def fake_store(path: Path, experiment: str = "xkd-cifar100"):
    """An empty sqlite MLflow store at `path` with one experiment (artifacts beside it): (uri, client,
    experiment id), for log_run to fill. The one fixture store of the report tests."""
    import mlflow

    uri = f"sqlite:///{path}"
    client = mlflow.MlflowClient(uri)
    return uri, client, client.create_experiment(experiment, artifact_location=(path.parent / f"art-{path.stem}").as_uri())


def log_run(client, exp, method, seed, metrics, params=None, tags=None, history=None, features=False, tmp=None):
    """A finished run as the harness logs one (its params, metrics, per-epoch history and, with features, the
    t-SNE arrays): the report tests' hand-made runs. Returns its id."""
    run = client.create_run(exp, run_name=f"{method}/seed{seed}", tags={"xkd.kind": "train", **(tags or {})})
    rid = run.info.run_id
    p = {
        "task": "cifar100",
        "method": method,
        "seed": seed,
        "student": "resnet8_w16",
        "profile": "quick",
        "data_fraction": 1.0,
        "teacher_id": "minilm-l6-v2/raw-meanpool",
        "hp.feat_dist": "l2sq_norm_sum",
        "n_train": 45000,
        "n_val": 5000,
        "n_test": 10000,
        **(params or {}),
    }
    for k, v in p.items():
        client.log_param(rid, k, v)
    for k, v in metrics.items():
        client.log_metric(rid, k, v)
    for step, (tr, va) in enumerate(history or [], start=1):
        client.log_metric(rid, "train_loss", tr, step=step)
        client.log_metric(rid, "val_top1", va, step=step)
    if features:
        import numpy as np

        g = np.random.default_rng(seed)
        arrays = {
            k: g.normal(size=(60, 8)) for k in ("teacher_embedding", "teacher_common", "projected_teacher", "student_embedding")
        }
        path = tmp / f"features-{seed}.npz"
        np.savez(path, **arrays, label=np.arange(60) % 10, group=np.arange(60) % 4)
        client.log_artifact(rid, str(path))
        # the report looks for features.npz
        client.log_artifact(rid, str(_copy_as_features(path, tmp)))
    client.set_terminated(rid)
    return rid


def _copy_as_features(path, tmp):
    d = tmp / f"art-{path.stem}"
    d.mkdir()
    target = d / "features.npz"
    target.write_bytes(path.read_bytes())
    return target


def known_store(tmp_path):
    """The report tests' fixture store (conftest.fixture_store): two seeds of baseline and ours_feature, a Table 12
    sweep, one failed run. Returns (uri, {(method, seed) or ("t12", margin): run id})."""
    uri, client, exp = fake_store(tmp_path / "fixture.db", "xkd-cifar100")
    ids = {}
    base = {0: 30.0, 1: 32.0}
    ours = {0: 33.0, 1: 36.0}
    for seed in (0, 1):
        ids[("baseline", seed)] = log_run(
            client,
            exp,
            "baseline",
            seed,
            {"test_top1": base[seed], "test_top1_at_best_val": base[seed] - 1},
            history=[(10, 12), (20, 25)],
        )
        ids[("ours_feature", seed)] = log_run(
            client,
            exp,
            "ours_feature",
            seed,
            {"test_top1": ours[seed], "test_top1_at_best_val": ours[seed], "match_acc": 40.0 + seed},
            history=[(11, 13), (22, 27)],
            params={"alpha_path": "learned_linear_384to64"},
            features=True,
            tmp=tmp_path,
        )
    for margin, acc in ((0.0, 20.0), (0.04, 24.0)):
        ids[("t12", margin)] = log_run(
            client,
            exp,
            "ours_feature",
            0,
            {"test_top1": acc, "best_val_top1": acc + 1},
            params={"hp.margin": margin},
            tags={"xkd.study": "table12-quick", "xkd.paper_table": "table12"},
        )
    # a failed run must not appear
    bad = client.create_run(exp, tags={"xkd.kind": "train"})
    client.log_param(bad.info.run_id, "method", "baseline")
    client.set_terminated(bad.info.run_id, status="FAILED")
    return uri, ids
