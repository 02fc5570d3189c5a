"""Teacher stage maps (issue 28) and the in-loop teacher's cost (issue 30): the map forms of FitNet, SP and ICKD
and attention transfer, each against (a) an independent float64 computation written here in numpy and (b) the
value the peers' own modules give on the same tensors (RepDistiller b84f547c5db6 `distiller_zoo/{AT,SP,FitNet}.py`
+ `models/util.py` ConvReg; ADLab-AutoDrive/ICKD 403b8d3d7c3a `Cifar100/distiller_zoo/ICKD.py`), run once
outside this repository and transcribed below; nothing of theirs is imported. Then the contract: which
methods read what, the refusal on a vector teacher, the live teacher skipped when nothing reads it."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmark.registry import METHODS, UsageError
from benchmark.types import Dims, StudentOut, TeacherOut

B = 4


def arr(seed, *shape):
    """The peers' script drew its inputs exactly so (numpy's generator: the same numbers on every machine)."""
    return torch.tensor(np.random.default_rng(seed).normal(size=shape), dtype=torch.float64)


S_MAPS = [arr(1, B, 4, 8, 8).relu(), arr(2, B, 8, 4, 4).relu(), arr(3, B, 16, 2, 2).relu()]
T_MAPS = [arr(4, B, 6, 8, 8).relu(), arr(5, B, 12, 4, 4).relu(), arr(6, B, 24, 2, 2).relu()]
# transcribed from the peers' modules on the tensors above (float64)
PEER = {
    "at_sum": 0.09123836255330169,
    "at_s8_t4": 0.03655227235434308,
    "at_s2_t4": 0.08393657034360123,
    "sp": 0.013258706989833054,
    "fitnet_s8_t4": 0.6032433646737588,
    "fitnet_s4_t8": 0.5994890581995537,
    "fitnet_s5_t4": 0.5736584621309446,
    "ickd": 1.1330087435253926,
}


def shapes(maps):
    return [tuple(m.shape[1:]) for m in maps]


def make(name, s_maps, t_maps, **hp):
    cls = METHODS.get(name)
    dims = Dims(
        s_maps[-1].shape[1], 7, 5, [m.shape[1] for m in s_maps], map_shapes=shapes(s_maps), teacher_map_shapes=shapes(t_maps)
    )
    return cls(dims, cls.Hparams(**hp)).double()


def out(maps):
    emb = maps[-1].mean((2, 3))
    return StudentOut(maps, emb, emb[:, :5], torch.nn.Identity())


# ---- independent float64 references (numpy) ----
def np_attention(f, p=2.0):
    a = (np.abs(f) ** p).mean(1).reshape(f.shape[0], -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def np_pool(f, h):
    """Average pooling by an integer factor (the sizes here divide)."""
    b, c, hh, ww = f.shape
    k = hh // h
    return f.reshape(b, c, h, k, ww // k, k).mean((3, 5))


def np_at(fs, ft):
    if fs.shape[2] > ft.shape[2]:
        fs = np_pool(fs, ft.shape[2])
    elif fs.shape[2] < ft.shape[2]:
        ft = np_pool(ft, fs.shape[2])
    return ((np_attention(fs) - np_attention(ft)) ** 2).mean()


def np_rownorm(g):
    return g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)


def test_attention_transfer_matches_float64_and_repdistiller():
    s, t = [m.numpy() for m in S_MAPS], [m.numpy() for m in T_MAPS]
    m = make("at", S_MAPS, T_MAPS)
    got = m.terms(out(S_MAPS), TeacherOut(maps=T_MAPS), None)["at"]
    ref = sum(np_at(a, b) for a, b in zip(s, t))
    assert got.value.mean().item() == pytest.approx(ref, rel=1e-12)
    assert got.value.mean().item() == pytest.approx(PEER["at_sum"], rel=1e-12)
    assert got.weight == 1000 and m.run_params() == {"at_stage_pairs": 3}
    from methods.at import at_pair

    for (a, b), key in (((0, 1), "at_s8_t4"), ((2, 1), "at_s2_t4")):  # spatial sizes differ: the larger is pooled
        v = at_pair(S_MAPS[a], T_MAPS[b], 2.0).mean().item()
        assert v == pytest.approx(np_at(s[a], t[b]), rel=1e-12) and v == pytest.approx(PEER[key], rel=1e-12)


def test_sp_on_maps_matches_float64_and_repdistiller():
    m = make("sp", S_MAPS, T_MAPS)
    assert m.form == "maps" and m.teacher_reads == {"maps"}
    got = m.terms(out(S_MAPS), TeacherOut(maps=T_MAPS), None)["sp"].value.item()
    xs, xt = (x.numpy().reshape(B, -1) for x in (S_MAPS[-1], T_MAPS[-1]))
    ref = ((np_rownorm(xt @ xt.T) - np_rownorm(xs @ xs.T)) ** 2).sum() / B**2
    assert got == pytest.approx(ref, rel=1e-12) and got == pytest.approx(PEER["sp"], rel=1e-12)


def test_ickd_on_maps_matches_float64_and_the_official_code():
    s_map, t_map = arr(31, B, 8, 4, 4).relu(), arr(32, B, 6, 4, 4).relu()
    m = make("ickd", [s_map], [t_map])
    assert m.form == "maps" and m.hp.ickd_weight == 2.5
    with torch.no_grad():
        m.connector[0].weight.copy_(arr(30, 6, 8, 1, 1) * 0.3)
    got = m.terms(out([s_map]), TeacherOut(maps=[t_map]), None)["ickd"].value.mean().item()
    # numpy: 1x1 conv, BatchNorm in training mode (batch statistics, biased variance, eps 1e-5), Gram per sample
    w = (arr(30, 6, 8, 1, 1) * 0.3).numpy()[:, :, 0, 0]
    e = np.einsum("oc,bchw->bohw", w, s_map.numpy())
    e = (e - e.mean((0, 2, 3), keepdims=True)) / np.sqrt(e.var((0, 2, 3), keepdims=True) + 1e-5)
    fs, ft = e.reshape(B, 6, -1), t_map.numpy().reshape(B, 6, -1)
    gs, gt = np_rownorm(fs @ fs.transpose(0, 2, 1)), np_rownorm(ft @ ft.transpose(0, 2, 1))
    ref = ((gs - gt) ** 2).sum() / (6 * B)
    assert got == pytest.approx(ref, rel=1e-10) and got == pytest.approx(PEER["ickd"], rel=1e-10)


@pytest.mark.parametrize(
    "hs,ht,kind,key",
    [(8, 4, "Conv2d", "fitnet_s8_t4"), (4, 8, "ConvTranspose2d", "fitnet_s4_t8"), (5, 4, "Conv2d", "fitnet_s5_t4")],
)
def test_fitnet_hint_with_its_regressor_matches_repdistiller(hs, ht, kind, key):
    s_map, t_map = arr(20, B, 8, hs, hs).relu(), arr(21, B, 6, ht, ht).relu()
    m = make("fitnet", [S_MAPS[0], s_map], [T_MAPS[0], t_map])  # hint stage 2 (RepDistiller's --hint_layer 2)
    conv = m.regressor[0]
    assert type(conv).__name__ == kind and m.form == "maps" and m.hp.fitnet_weight == 100
    with torch.no_grad():
        conv.weight.copy_(arr(10, *conv.weight.shape) * 0.1)
        conv.bias.copy_(arr(11, *conv.bias.shape) * 0.1)
    got = m.terms(out([S_MAPS[0], s_map]), TeacherOut(maps=[T_MAPS[0], t_map]), None)["hint"].value.mean().item()
    assert got == pytest.approx(PEER[key], rel=1e-12)


def test_fitnet_valid_conv_regressor_matches_float64():
    """The (1 + H_s - H_t) kernel case written out: valid convolution, BatchNorm (batch statistics), ReLU, MSE."""
    s_map, t_map = arr(20, B, 8, 5, 5).relu(), arr(21, B, 6, 4, 4).relu()
    m = make("fitnet", [S_MAPS[0], s_map], [T_MAPS[0], t_map])
    w, bias = (arr(10, 6, 8, 2, 2) * 0.1).numpy(), (arr(11, 6) * 0.1).numpy()
    with torch.no_grad():
        m.regressor[0].weight.copy_(torch.tensor(w)), m.regressor[0].bias.copy_(torch.tensor(bias))
    x = s_map.numpy()
    y = np.zeros((B, 6, 4, 4))
    for i in range(4):
        for j in range(4):
            y[:, :, i, j] = np.einsum("bchw,ochw->bo", x[:, :, i : i + 2, j : j + 2], w) + bias
    y = (y - y.mean((0, 2, 3), keepdims=True)) / np.sqrt(y.var((0, 2, 3), keepdims=True) + 1e-5)
    ref = ((np.maximum(y, 0) - t_map.numpy()) ** 2).mean()
    got = m.terms(out([S_MAPS[0], s_map]), TeacherOut(maps=[T_MAPS[0], t_map]), None)["hint"].value.mean().item()
    assert got == pytest.approx(ref, rel=1e-10) and got == pytest.approx(PEER["fitnet_s5_t4"], rel=1e-10)


def test_forms_resolve_from_the_teacher_and_are_refused_without_maps():
    vec = Dims(16, 7, 5, [4, 8, 16])
    for name in ("fitnet", "sp", "ickd"):
        cls = METHODS.get(name)
        auto = cls(vec, cls.Hparams())
        assert auto.form == "vector" and auto.teacher_reads == {"embedding"} and auto.run_params()[f"{name}_form"] == "vector"
        assert make(name, S_MAPS, T_MAPS).run_params()[f"{name}_form"] == "maps"
        assert cls.needs_teacher_maps(cls.Hparams(**{f"{name}_form": "maps"}))
        assert not cls.needs_teacher_maps(cls.Hparams())
        with pytest.raises(UsageError, match=f"{name}_form=maps needs a teacher with stage maps"):
            cls(vec, cls.Hparams(**{f"{name}_form": "maps"}))
        assert make(name, S_MAPS, T_MAPS, **{f"{name}_form": "vector"}).form == "vector"
    with pytest.raises(UsageError, match="'at' needs the teacher's stage maps"):
        METHODS.get("at")(vec, METHODS.get("at").Hparams())


def test_what_each_method_reads_of_the_teacher_is_what_it_declares():
    """Every registered method, given only the fields it declares (the others None), computes its terms: a
    method that read an undeclared field would fail here. With a map teacher and with a vector teacher."""
    from benchmark.nets import student_builder

    student = student_builder("resnet8_w16")(5)
    x = torch.randn(B, 3, 32, 32)
    s = student(x)
    teacher_net = student_builder("resnet8")(5)
    t_out = teacher_net(x)
    full = TeacherOut(torch.randn(B, 7), torch.randn(B, 5), [m.detach() for m in t_out.maps])
    for with_maps in (True, False):
        dims = Dims(
            64,
            7,
            5,
            list(student.map_channels),
            map_shapes=shapes(s.maps) if with_maps else [],
            teacher_map_shapes=shapes(t_out.maps) if with_maps else [],
            train_size=4 * B,
            total_steps=10,
            train_labels=torch.arange(4 * B) % 5,
        )
        for name in METHODS.names():
            cls = METHODS.get(name)
            if not with_maps and cls.needs_teacher_maps(cls.Hparams()):
                with pytest.raises(UsageError):
                    cls(dims, cls.Hparams())
                continue
            m = cls(dims, cls.Hparams())
            reads = m.teacher_reads
            assert reads <= {"embedding", "logits", "maps"}, name
            given = TeacherOut(*(getattr(full, f) if f in reads else None for f in ("embedding", "logits", "maps")))
            kw = {"index": torch.arange(B)} if cls.wants_index else {}
            terms = m.terms(s, given, torch.arange(B) % 5, **kw)
            assert all(torch.isfinite(t.value).all() for t in terms.values()), name
    assert METHODS.get("baseline").teacher_reads == frozenset()


def test_a_map_method_on_a_vector_teacher_is_refused_in_one_line(tmp_path, cifar_dir):
    from conftest import run_cli

    res = run_cli(
        ["run", "--task", "cifar100", "--methods", "at", "--profile", "smoke", "--data-dir", str(cifar_dir), "--out", "o"],
        tmp_path,
    )
    assert res.returncode == 2 and not (tmp_path / "o").exists() and not (tmp_path / "mlflow.db").exists()
    line = res.stderr.strip().splitlines()
    assert len(line) == 1 and "teacher's stage maps" in line[0] and "cifar100-kd" in line[0], res.stderr
    res = run_cli(
        [
            "run",
            "--task",
            "cifar100",
            "--methods",
            "fitnet",
            "--set",
            "fitnet_form=maps",
            "--profile",
            "smoke",
            "--data-dir",
            str(cifar_dir),
            "--out",
            "o",
        ],
        tmp_path,
    )
    assert res.returncode == 2 and "fitnet" in res.stderr and "cifar100-kd" in res.stderr


def test_all_leaves_the_map_only_methods_out_on_a_vector_teacher_and_says_so():
    from benchmark.registry import TASKS
    from benchmark.resolve import build_config, check_teacher_maps
    from benchmark.trainer import resolve_hparams

    task = TASKS.get("cifar100")()
    cfg = build_config(task, "smoke", {}, {})
    names = METHODS.names()
    kept = check_teacher_maps(task, names, [resolve_hparams(m, task, cfg, {}) for m in names], True)
    assert "at" not in kept and "fitnet" in kept and len(kept) == len(names) - 1
    kd = TASKS.get("cifar100-kd")()
    assert check_teacher_maps(kd, names, [resolve_hparams(m, kd, cfg, {}) for m in names], True) == names


@pytest.fixture(scope="module")
def kd_smoke(cifar_dir, tmp_path_factory):
    from benchmark.registry import TASKS
    from benchmark.resolve import build_config
    from benchmark.teacher_cache import TeacherCache

    task = TASKS.get("cifar100-kd")()
    cfg = build_config(task, "smoke", {"data_dir": str(cifar_dir)}, {"teacher_data_fraction": "0.02", "num_threads": "1"})
    data = task.load(cfg)
    tables = task.teacher_tables(cfg, data, TeacherCache(tmp_path_factory.mktemp("cache")))
    return task, cfg, data, tables


class _Counting(torch.nn.Module):
    def __init__(self, live):
        super().__init__()
        self.live, self.calls = live, 0

    def forward(self, x):
        self.calls += 1
        return self.live(x)


def test_the_baseline_never_runs_the_live_teacher_and_gives_the_same_metrics(kd_smoke, monkeypatch, tmp_path):
    """The baseline reads nothing of the teacher: no forward in the loop. Its metrics are those of a run that
    still computes the teacher's outputs on every batch (the loop before this change) to the last digit."""
    from benchmark.recorder import run_one
    from benchmark.tracking import NullTracker
    from methods.baseline import Baseline

    task, cfg, data, tables = kd_smoke
    assert tables.map_shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]  # the smoke teacher's stages (resnet8_w16)
    results = {}
    for label, reads in (("skip", frozenset()), ("forward", frozenset({"embedding", "logits"}))):
        monkeypatch.setattr(Baseline, "teacher_reads", reads)
        counting = _Counting(tables.live)
        t = replace(tables, live=counting)
        # no stored teacher stream (one of an earlier session's run would be read instead of a forward)
        r = run_one(replace(cfg, share_teacher=False), task, data, t, "baseline", {}, NullTracker(), tmp_path / label)
        results[label] = (r, counting.calls)
    assert results["skip"][1] == 0 and results["forward"][1] > 0
    for k in ("test_top1", "test_top1_at_best_val", "match_acc", "best_val_top1"):
        assert results["skip"][0][k] == results["forward"][0][k], k


def test_map_methods_train_in_the_loop_with_the_teachers_maps(kd_smoke, tmp_path):
    """at and the map forms run end to end on the image teacher; their run parameters name the form."""
    from benchmark.recorder import run_one
    from benchmark.tracking import NullTracker
    from benchmark.trainer import Context

    task, cfg, data, tables = kd_smoke
    for name, form_key in (("fitnet", "fitnet_form"), ("sp", "sp_form"), ("ickd", "ickd_form"), ("at", None)):
        ctx = Context(cfg, task, data, tables, name, {})
        assert ctx.teacher_reads == {"maps"}
        if form_key:
            assert ctx.method.run_params()[form_key] == "maps"
        r = run_one(cfg, task, data, tables, name, {}, NullTracker(), tmp_path / name)
        assert np.isfinite(r["test_top1"])


def test_under_bf16_a_method_gets_every_input_in_fp32(kd_smoke, monkeypatch):
    """bf16 autocast covers the student's and the teacher's forwards only: terms() gets the student's outputs
    and the teacher's embedding, logits and stage maps in fp32, so no method casts (the fp() calls are gone)."""
    from benchmark.trainer import Context
    from methods.at import AT

    task, cfg, data, tables = kd_smoke
    seen = []
    original = AT.terms

    def spy(self, s, t, y):
        seen.append(
            {
                "student": {s.embedding.dtype, s.logits.dtype, *(m.dtype for m in s.maps)},
                "teacher maps": {m.dtype for m in t.maps},
            }
        )
        return original(self, s, t, y)

    monkeypatch.setattr(AT, "terms", spy)
    ctx = Context(replace(cfg, precision="bf16", epochs=1), task, data, tables, "at", {})
    assert ctx.precision_resolved == "bf16"
    ctx.train_step(torch.arange(8))  # one step of 8 samples: bf16 is emulated (slow) on a CPU without it
    assert seen and all(d == {"student": {torch.float32}, "teacher maps": {torch.float32}} for d in seen)
