"""The synthetic task: the generator's shared / modality-specific structure holds (linear probes), draws are
deterministic per seed, every method runs end to end, per-seed data, and bad settings are refused."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from conftest import run_cli, run_cli_inprocess
from tasks.synthetic_data import Generator, SyntheticSpec


def draws(seed=0, per_class=100, **kw):
    g = Generator(SyntheticSpec(**kw), seed)
    return g.draw(per_class, 1), g.draw(per_class, 2)


def probe_acc(x_tr, y_tr, x_te, y_te) -> float:
    m = LogisticRegression(max_iter=3000).fit(x_tr.numpy(), y_tr.numpy())
    return m.score(x_te.numpy(), y_te.numpy())


def ridge_r2(x_tr, z_tr, x_te, z_te) -> float:
    return Ridge(alpha=1.0).fit(x_tr.numpy(), z_tr.numpy()).score(x_te.numpy(), z_te.numpy())


def test_same_seed_same_draw_other_seed_other_draw():
    a, b = Generator(SyntheticSpec(), 3).draw(10, 7), Generator(SyntheticSpec(), 3).draw(10, 7)
    for f in ("y", "x_teacher", "x_student", "z_shared", "z_teacher", "z_student"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    c = Generator(SyntheticSpec(), 4).draw(10, 7)
    assert not torch.allclose(a.x_student, c.x_student)
    assert a.x_teacher.shape == (200, 64) and a.x_student.shape == (200, 48) and a.x_teacher.dtype == torch.float32


def test_the_teachers_modality_is_the_same_for_every_gamma_and_beta():
    """A sweep moves only what the student sees: for one seed the teacher's inputs (hence its training and
    the cached teacher) are identical at every gamma and beta, the student's are not."""
    ref = Generator(SyntheticSpec(gamma=0.5, beta=0.25), 3).draw(5, 9)
    for gamma, beta in ((0.0, 0.25), (1.0, 0.0), (0.25, 1.0)):
        d = Generator(SyntheticSpec(gamma=gamma, beta=beta), 3).draw(5, 9)
        assert torch.equal(d.x_teacher, ref.x_teacher) and torch.equal(d.y, ref.y)
        assert not torch.equal(d.x_student, ref.x_student)


def test_seeds_streams_are_disjoint():
    """Every random stream of a run seed (class means, maps, each split's draws, the teacher's pretraining
    draw) comes from its own SeedSequence child: no number drawn for one seed or part reappears in another
    (before, seed 1's class means were seed 0's first training-noise rows)."""
    from types import SimpleNamespace

    from tasks.synthetic import data_seed
    from tasks.synthetic_data import child

    values = {}
    for seed in (0, 1, 2):
        root = data_seed(SimpleNamespace(split_seed=0, seed=seed, synth_data="per_seed"))
        g = Generator(SyntheticSpec(), child(root, 0))
        parts = {"means_t": g.means_t, "means_s": g.means_s, "map_t": g.map_t[0], "map_s": g.map_s[0]}
        for i, name in enumerate(("pretrain", "train", "val", "test")):
            d = g.draw(3, child(root, i + 1))
            parts[name] = torch.cat([d.x_teacher.double(), d.x_student.double()], 1)
        for name, v in parts.items():  # whole rows: a row shared by two streams means one stream reused
            values[(seed, name)] = {tuple(r) for r in v.double().reshape(-1, 4).numpy().tolist()}
    keys = list(values)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not (values[a] & values[b]), f"{a} and {b} share drawn values"
    fixed = data_seed(SimpleNamespace(split_seed=0, seed=5, synth_data="fixed"))
    assert fixed.spawn_key != data_seed(SimpleNamespace(split_seed=0, seed=0, synth_data="per_seed")).spawn_key


def test_the_synthetic_teacher_never_sees_the_students_rows(tmp_path):
    """The teacher trains on a draw of its own modality (synth_teacher_per_class per class); the rows the
    student trains, validates and tests on are never among them, and the run records the teacher's accuracy
    on its own draw and on the student's train and test rows."""
    from benchmark.registry import TASKS
    from benchmark.resolve import build_config
    from benchmark.teacher_cache import TeacherCache
    from benchmark.teachers import vector

    task = TASKS.get("synthetic")()
    cfg = build_config(task, "smoke", {}, {"synth_teacher_per_class": "30"})
    data = task.load(cfg)
    assert data.pretrain_x.shape[0] == 30 * 20
    assert data.teacher_x.shape[0] == len(data.train.y) + len(data.val.y) + len(data.test.y)
    pre = {tuple(r) for r in data.pretrain_x.numpy().round(6).tolist()}
    assert not pre & {tuple(r) for r in data.teacher_x.numpy().round(6).tolist()}
    seen = []
    orig = vector.MLPTeacher.encode

    def spy(self, inputs):
        seen.append((len(self.labels), np.stack(inputs[: len(self.labels)])))
        return orig(self, inputs)

    vector.MLPTeacher.encode = spy
    try:
        tables = task.teacher_tables(cfg, data, TeacherCache(tmp_path / "cache"))
    finally:
        vector.MLPTeacher.encode = orig
    ((n, trained_on),) = seen
    assert n == 600 and np.array_equal(trained_on, data.pretrain_x.numpy())
    assert tables.embedding.shape[0] == data.teacher_x.shape[0]  # one row per student-side sample, keys unchanged
    for k in ("teacher_pretrain_acc", "teacher_train_acc", "teacher_test_acc"):
        assert 0 <= tables.params[k] <= 100


def test_factor_counts_follow_gamma_and_beta():
    tr, _ = draws(per_class=2, gamma=0.25, beta=0.5, factors=16)
    assert tr.z_shared.shape[1] == 4 and tr.z_teacher.shape[1] == 12 and tr.z_student.shape[1] == 8
    tr, _ = draws(per_class=2, gamma=0.0, beta=0.0)
    assert tr.z_shared.shape[1] == 0 and tr.z_student.shape[1] == 0 and tr.z_teacher.shape[1] == 16


def test_gamma_0_beta_0_the_student_modality_carries_no_label_information():
    """With no shared and no student-only factors, a probe on the student's input is at chance (1/20) while
    the teacher's input and its teacher-only factors (here all the decisive factors) are far above it."""
    tr, te = draws(gamma=0.0, beta=0.0)
    chance = 1 / 20
    assert probe_acc(tr.x_student, tr.y, te.x_student, te.y) < chance + 0.03
    on_factors = probe_acc(tr.z_teacher, tr.y, te.z_teacher, te.y)
    assert on_factors > 0.6 and probe_acc(tr.x_teacher, tr.y, te.x_teacher, te.y) > 0.3
    # nothing to regress: held-out R^2 at or below 0 (about -48/2000 from fitting 48 noise inputs)
    assert ridge_r2(tr.x_student, tr.z_teacher, te.x_student, te.z_teacher) < 0.02


def test_teacher_only_factors_are_invisible_to_the_student_beyond_the_class():
    """gamma = 0.5, beta = 0.5: the within-class part of the teacher-only factors cannot be read from the
    student's input (R^2 ~ 0), while that of the shared factors can (R^2 well above 0)."""
    tr, te = draws(gamma=0.5, beta=0.5)
    means = lambda d, z: torch.stack([z[d.y == c].mean(0) for c in range(20)])[d.y]  # noqa: E731
    res = lambda d, z: z - means(d, z)  # noqa: E731
    r2_teacher_only = ridge_r2(tr.x_student, res(tr, tr.z_teacher), te.x_student, res(te, te.z_teacher))
    r2_shared = ridge_r2(tr.x_student, res(tr, tr.z_shared), te.x_student, res(te, te.z_shared))
    assert r2_teacher_only < 0.02 and r2_shared > 0.3


def test_more_shared_factors_more_label_information_in_the_student_modality():
    accs = []
    for gamma in (0.0, 1.0):
        tr, te = draws(gamma=gamma, beta=0.0)
        accs.append(probe_acc(tr.x_student, tr.y, te.x_student, te.y))
    assert accs[0] < 0.08 and accs[1] > 0.3


def test_every_method_runs_and_data_is_drawn_per_seed(tmp_path):
    res = run_cli(
        [
            "run",
            "--task",
            "synthetic",
            "--methods",
            "all",
            "--profile",
            "smoke",
            "--seeds",
            "2",
            "--set",
            "synth_gamma=0.25",
            "--out",
            "o",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    from conftest import vector_teacher_methods

    names = vector_teacher_methods()  # `at` needs an image teacher's maps
    runs = pd.read_csv(tmp_path / "o" / "runs.csv")
    assert sorted(runs["method"].unique()) == sorted(names) and len(runs) == 2 * len(names)
    assert runs["test_top1"].notna().all() and (runs["test_top1"] > 0).all()
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xkd-synthetic")
    params = [r.data.params for r in client.search_runs([exp.experiment_id])]
    seeds = {(p["seed"], p["synth_data_seed"], p["teacher_test_acc"]) for p in params}
    assert len(seeds) == 2 and len({s[1] for s in seeds}) == 2  # one data draw (and teacher) per seed
    assert {p["synth_gamma"] for p in params} == {"0.25"} and {p["synth_shared_factors"] for p in params} == {"4"}
    assert all(float(p["teacher_test_acc"]) > 100 / 20 for p in params)  # the teacher beats chance


@pytest.mark.parametrize(
    "sets,needle",
    [
        (["synth_per_class=10,5"], "three positive integers"),
        (["student=resnet8_w16"], "student=mlp"),
        (["synth_gamma=1.5"], "synth_gamma=1.5 is out of range"),
        (["synth_data=sometimes"], "choose one of per_seed, fixed"),
    ],
)
def test_bad_synthetic_settings_are_refused(tmp_path, sets, needle):
    args = ["run", "--task", "synthetic", "--methods", "baseline", "--profile", "smoke"]
    for s in sets:
        args += ["--set", s]
    res = run_cli_inprocess(args, tmp_path)
    assert res.returncode == 2 and needle in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "runs").exists()
