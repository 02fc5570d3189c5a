"""Each loss on fixed inputs against an independent float64 computation written here (the paper's method:
tests/test_ours.py; CRD: tests/test_crd.py)."""

import math

import numpy as np
import pytest
import torch

from benchmark.types import Dims, StudentOut, TeacherOut
from loss_inputs import DS, DT, ET, FS, ZS, ZT, B, K, Y, make, normalize, rng, softmax, student_out, t


def test_kd_matches_float64_reference():
    tau = 4.0
    ps, pt = softmax(ZS / tau), softmax(ZT / tau)
    ref = tau**2 * (pt * (np.log(pt) - np.log(ps))).sum(1)
    m = make("kd")
    terms = m.terms(student_out(), TeacherOut(t(ET), t(ZT)), torch.tensor(Y))
    np.testing.assert_allclose(terms["kd"].value.detach().numpy(), ref, rtol=1e-6)
    assert terms["kd"].weight == 0.9 and m.ce_weight == 0.1


def test_pkt_reference():
    def cond(x):
        xn = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-7)
        k = (xn @ xn.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = cond(FS), cond(ET)
    ref = np.mean(pt * np.log((pt + 1e-7) / (ps + 1e-7)))
    v = make("pkt").terms(student_out(), TeacherOut(t(ET)), torch.tensor(Y))["pkt"]
    assert v.value.item() == pytest.approx(ref, rel=1e-6) and v.weight == 30000


def test_sp_reference_on_embedding_and_map():
    def g(x):
        m = x @ x.T
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    ref = ((g(ET) - g(FS)) ** 2).sum() / B**2
    for mode in ("embedding", "last_map"):  # the map here is F_S[:, :, None, None]: same flattening
        v = make("sp", sp_input=mode).terms(student_out(), TeacherOut(t(ET)), torch.tensor(Y))["sp"]
        assert v.value.item() == pytest.approx(ref, rel=1e-9)


def test_ickd_batch_and_degenerate_reference():
    from methods.ickd import ickd_batch_loss, ickd_degenerate_loss

    xs = rng.normal(size=(B, DT))

    def gram_rows(x):
        g = x.T @ x
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    ref = ((gram_rows(xs) - gram_rows(ET)) ** 2).sum() / DT
    assert ickd_batch_loss(t(xs), t(ET)).item() == pytest.approx(ref, rel=1e-9)
    per = []
    for a, b in zip(xs, ET):
        ga, gb = np.outer(a, a), np.outer(b, b)
        ga, gb = ga / np.linalg.norm(ga, axis=1, keepdims=True), gb / np.linalg.norm(gb, axis=1, keepdims=True)
        per.append(((ga - gb) ** 2).sum() / DT)
    np.testing.assert_allclose(ickd_degenerate_loss(t(xs), t(ET)).numpy(), per, rtol=1e-9)


def test_fitnet_reference():
    m = make("fitnet")
    w, b = m.regressor[0].weight.detach().numpy(), m.regressor[0].bias.detach().numpy()
    ref = ((FS @ w.T + b - ET) ** 2).mean(1)
    v = m.terms(student_out(), TeacherOut(t(ET)), torch.tensor(Y))["hint"]
    np.testing.assert_allclose(v.value.detach().numpy(), ref, rtol=1e-9)
    assert v.weight == 100


def test_clip_reference_and_clamp():
    m = make("clip", ds=DT)
    fs = rng.normal(size=(B, DT))
    a, b = normalize(fs), normalize(ET)
    z = (1 / 0.07) * a @ b.T

    def ce(logits):
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -np.mean(np.diag(lp))

    ref = 0.5 * (ce(z) + ce(z.T))
    v = m.terms(student_out(fs=fs), TeacherOut(t(ET)), torch.tensor(Y))["clip"]
    assert v.value.item() == pytest.approx(ref, rel=1e-6)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    m.post_step()
    assert m.logit_scale.item() == pytest.approx(math.log(100))


def test_ccl_nce_and_symmetric_kl_reference():
    from methods.ccl import sup_nce, sup_nce_both, sym_kl

    a, b = rng.normal(size=(B, DT)), rng.normal(size=(B, DT))
    q = softmax(normalize(a) @ normalize(b).T / 0.1)
    pos = (Y[:, None] == Y[None, :]).astype(float)
    ref = np.mean(-(np.log(q + 1e-10) * pos).sum(1) / pos.sum(1) - (np.log(1 - q + 1e-10) * (1 - pos)).sum(1) / (1 - pos).sum(1))
    assert sup_nce(t(a), t(b), torch.tensor(Y), 0.1).item() == pytest.approx(ref, rel=1e-6)
    q_t = softmax(normalize(b) @ normalize(a).T / 0.1)
    ref_t = np.mean(
        -(np.log(q_t + 1e-10) * pos).sum(1) / pos.sum(1) - (np.log(1 - q_t + 1e-10) * (1 - pos)).sum(1) / (1 - pos).sum(1)
    )
    assert sup_nce_both(t(a), t(b), torch.tensor(Y), 0.1).item() == pytest.approx(ref + ref_t, rel=1e-6)
    p, r = softmax(ZS), softmax(ZT)
    ref_kl = 0.5 * (p * np.log(p / r + 1e-10) + r * np.log(r / p + 1e-10)).sum(1)
    np.testing.assert_allclose(sym_kl(t(ZS), t(ZT)).numpy(), ref_kl, rtol=1e-6)
    # single-class batch: no negatives, still finite
    assert torch.isfinite(sup_nce(t(a), t(b), torch.zeros(B, dtype=torch.long), 0.1))


def test_ccl_gradient_routing():
    """The composition module's own loss (L_u') must not reach the student."""
    m = make("ccl", ds=DT)
    s = student_out(fs=rng.normal(size=(B, DT)))
    terms = m.terms(s, TeacherOut(t(ET)), torch.tensor(Y))
    for name in ("ce_composed", "nce_composed", "symkl_composed"):
        g = torch.autograd.grad(
            terms[name].value.mean(), [s.embedding, s.logits], allow_unused=True, retain_graph=True
        )  # the NCE terms share one stacked graph
        assert all(x is None or float(x.abs().sum()) == 0 for x in g), name
    g = torch.autograd.grad(terms["nce_student"].value, s.embedding)[0]
    assert float(g.abs().sum()) > 0


# ---- DKD, RKD, CRD: brute-force float64 references written here, independent of the methods' code ----


def _kl(p, q):
    return float((p * (np.log(p) - np.log(q))).sum())


def test_dkd_matches_per_sample_float64_reference():
    tau = 4.0
    ref_tc, ref_nc = [], []
    for i in range(B):
        ps, pt = softmax(ZS[i : i + 1] / tau)[0], softmax(ZT[i : i + 1] / tau)[0]
        y = Y[i]
        ref_tc.append(tau**2 * _kl(np.array([pt[y], 1 - pt[y]]), np.array([ps[y], 1 - ps[y]])))
        others = [c for c in range(K) if c != y]
        qs, qt = ps[others] / ps[others].sum(), pt[others] / pt[others].sum()
        ref_nc.append(tau**2 * _kl(qt, qs))
    m = make("dkd")
    terms = m.terms(student_out(), TeacherOut(t(ET), t(ZT)), torch.tensor(Y))
    np.testing.assert_allclose(terms["dkd_tckd"].value.detach().numpy(), ref_tc, rtol=1e-9)
    np.testing.assert_allclose(terms["dkd_nckd"].value.detach().numpy(), ref_nc, rtol=1e-9)
    assert terms["dkd_tckd"].weight == 1.0 and terms["dkd_nckd"].weight == 8.0 and m.ce_weight == 1.0


def test_dkd_with_beta_one_minus_teacher_target_prob_is_kd():
    """The DKD paper's decomposition: KL = TCKD + (1 - p^T_y) NCKD, per sample."""
    from methods.dkd import dkd_terms

    zs, zt, y = t(ZS * 3), t(ZT * 3), torch.tensor(Y)
    for tau in (1.0, 4.0):
        tc, nc = dkd_terms(zs, zt, y, tau)
        pt_y = torch.softmax(zt / tau, 1)[torch.arange(B), y]
        kd = make("kd", temperature=tau).terms(student_out(zs=ZS * 3), TeacherOut(t(ET), zt), y)["kd"].value
        torch.testing.assert_close(tc + (1 - pt_y) * nc, kd.detach(), rtol=1e-10, atol=1e-12)


def test_dkd_warms_up_linearly_over_its_share_of_the_steps_and_resumes():
    from benchmark.registry import METHODS

    cls = METHODS.get("dkd")
    m = cls(Dims(DS, DT, K, [DS] * 3, train_size=100, total_steps=120), cls.Hparams())  # 120 steps / 12 = 10
    weights = []
    for _ in range(12):
        weights.append(m.terms(student_out(), TeacherOut(t(ET), t(ZT)), torch.tensor(Y))["dkd_nckd"].weight)
        m.post_step()
    np.testing.assert_allclose(weights, [8 * min((i + 1) / 10, 1) for i in range(12)])
    again = cls(Dims(DS, DT, K, [DS] * 3, train_size=100, total_steps=120), cls.Hparams())
    again.load_state_dict(m.state_dict())
    assert again.step == 12 and again.warm() == 1.0


def _rkd_reference(fs, ft):
    def dist(x):
        d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(len(x))] for i in range(len(x))])
        return d / d[d > 0].mean()

    def angles(x):
        n = len(x)
        a = np.zeros((n, n, n))
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    u, v = x[i] - x[j], x[k] - x[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    a[j, i, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
        return a

    def smooth_l1(a, b):
        d = np.abs(a - b)
        return np.where(d < 1, 0.5 * d**2, d - 0.5).mean()

    return smooth_l1(dist(fs), dist(ft)), smooth_l1(angles(fs), angles(ft))


def test_rkd_matches_brute_force_pairs_and_triplets():
    ref_d, ref_a = _rkd_reference(FS, ET)
    m, s = make("rkd"), student_out()
    terms = m.terms(s, TeacherOut(t(ET), t(ZT)), torch.tensor(Y))
    np.testing.assert_allclose(terms["rkd_distance"].value.item(), ref_d, rtol=1e-9)
    np.testing.assert_allclose(terms["rkd_angle"].value.item(), ref_a, rtol=1e-9)
    assert (terms["rkd_distance"].weight, terms["rkd_angle"].weight) == (25.0, 50.0)
    sum(v.weighted_mean() for v in terms.values()).backward()
    assert torch.isfinite(s.embedding.grad).all()  # zero distances on the diagonal: finite gradient


def test_rkd_is_unchanged_by_rotating_or_scaling_either_side():
    from methods.rkd import rkd_terms

    q_s, _ = np.linalg.qr(rng.normal(size=(DS, DS)))
    q_t, _ = np.linalg.qr(rng.normal(size=(DT, DT)))
    base = [float(v) for v in rkd_terms(t(FS), t(ET))]
    for fs, ft in ((FS @ q_s * 7.5, ET), (FS, ET @ q_t * 0.01), (FS @ q_s * 0.3, ET @ q_t * 40)):
        np.testing.assert_allclose([float(v) for v in rkd_terms(t(fs), t(ft))], base, rtol=1e-9)


def test_rkd_under_bf16_autocast_matches_float64():
    """Features with a shared offset (2 ± 0.3): a bf16 Gram matrix loses the angles (mean cosine error 0.07
    before the fix); the loss stays in fp32 and centres first."""
    from methods.rkd import rkd_terms

    g = np.random.default_rng(5)
    fs, ft = 2 + 0.3 * g.normal(size=(16, 32)), 2 + 0.3 * g.normal(size=(16, 24))
    ref = [float(v) for v in rkd_terms(t(fs), t(ft))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [float(v) for v in rkd_terms(torch.tensor(fs, dtype=torch.float32), torch.tensor(ft, dtype=torch.float32))]
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=0)


def test_ccl_step_gives_the_reference_terms_and_gradients():
    """CCL's deduplicated step (stacked NCE directions, each normalisation once) against its plain definition:
    every term bit for bit in float32, gradients to rounding."""
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        m = make("ccl", ds=DS, dt=DT).to(dtype)
        g = torch.Generator().manual_seed(4)
        f, z = torch.randn(12, DS, generator=g, dtype=dtype), torch.randn(12, K, generator=g, dtype=dtype)
        e, y = torch.randn(12, DT, generator=g, dtype=dtype), torch.randint(0, K, (12,), generator=g)
        out = []
        for fn in (m.reference_terms, m.terms):
            fa, za = f.clone().requires_grad_(), z.clone().requires_grad_()
            terms = fn(StudentOut([], fa, za, None), TeacherOut(e), y)
            params = list(m.parameters())
            grads = torch.autograd.grad(sum(t.weighted_mean() for t in terms.values()), [fa, za, *params])
            out.append(({k: t.value for k, t in terms.items()}, grads))
        (a, ga), (b, gb) = out
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for x, y_ in zip(ga, gb):
            torch.testing.assert_close(y_, x, rtol=tol, atol=tol * float(x.abs().max()))


def test_weight_init_and_data_order_draw_from_separate_streams_of_the_seed():
    from benchmark.method import STREAMS, stream_seed

    seeds = {(s, name): stream_seed(s, name) for s in range(3) for name in STREAMS}
    assert len(set(seeds.values())) == len(seeds)  # no two streams of any seed share a seed
    assert all(v != s for (s, _), v in seeds.items())
    assert stream_seed(0, "data") == stream_seed(0, "data")


def test_the_resume_key_includes_the_code_version(monkeypatch):
    from benchmark import checkpoints
    from benchmark.config import RunConfig
    from methods.kd import KDHparams

    a = checkpoints.run_key(RunConfig(), "kd", KDHparams())
    monkeypatch.setattr(checkpoints, "code_version", lambda: "0.0+gdeadbeef")
    assert checkpoints.run_key(RunConfig(), "kd", KDHparams()) != a
