"""methods/crd.py: its memory banks, negative draws and NCE loss against float64 references written here,
its state across a resume, its streams of the run seed."""

import numpy as np
import pytest
import torch

from benchmark.types import Dims, TeacherOut
from test_losses import DS, DT, ET, FS, ZT, B, K, Y, normalize, student_out, t

CRD_LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])  # the class of each of the 10 training samples


def _crd(n=10, k=4, negatives="per_sample", pool="other_class"):
    from benchmark.registry import METHODS

    cls = METHODS.get("crd")
    m = cls(
        Dims(DS, DT, K, [DS] * 3, train_size=n, total_steps=10, train_labels=CRD_LABELS[:n]),
        cls.Hparams(crd_dim=3, crd_negatives_k=k, crd_negatives=negatives, crd_negative_pool=pool),
    ).double()
    return m


@pytest.mark.parametrize("pool", ["other_class", "uniform_no_self"])
@pytest.mark.parametrize("negatives", ["per_sample", "shared"])
def test_crd_never_draws_the_anchor_as_its_own_negative(negatives, pool):
    """With 10 samples and 9 negatives each, a uniform draw picks the anchor itself with probability 0.61
    per sample; the anchor (and, for other_class, its class) must never count as a negative, and every
    sample of the pool must be reachable."""
    m = _crd(10, 9, negatives, pool)
    seen = {i: set() for i in range(10)}
    for step in range(60):
        idx = torch.randperm(10, generator=torch.Generator().manual_seed(step))[:6]
        neg, keep = m.draw_negatives(idx)
        neg = neg.expand(len(idx), -1) if neg.dim() == 1 else neg
        keep = torch.ones_like(neg, dtype=torch.bool) if keep is None else keep
        assert neg.shape == (6, 9) and (keep.sum(1) > 0).all()
        for i, row, k in zip(idx.tolist(), neg, keep):
            used = set(row[k].tolist())
            assert i not in used, f"sample {i} drawn as its own negative"
            if pool == "other_class":
                assert all(CRD_LABELS[j] != CRD_LABELS[i] for j in used)
            seen[i] |= used
    for i in range(10):
        allowed = {j for j in range(10) if j != i and (pool != "other_class" or CRD_LABELS[j] != CRD_LABELS[i])}
        assert seen[i] == allowed


def test_crd_other_class_pool_needs_labels():
    from benchmark.registry import METHODS, UsageError

    cls = METHODS.get("crd")
    with pytest.raises(UsageError, match="training labels"):
        cls(Dims(DS, DT, K, [DS] * 3, train_size=10), cls.Hparams(crd_dim=3))


@pytest.mark.parametrize("pool", ["other_class", "uniform_no_self"])
@pytest.mark.parametrize("negatives", ["per_sample", "shared"])
def test_crd_nce_on_a_fixed_bank_matches_float64_reference(negatives, pool):
    n, k, tau = 10, 4, 0.07
    m = _crd(n, k, negatives, pool)
    idx = torch.tensor([3, 7, 0, 9, 5, 1])
    gen_state = m.gen.get_state()
    bank_s, bank_t = m.bank_s.numpy().copy(), m.bank_t.numpy().copy()
    terms = m.terms(student_out(), TeacherOut(t(ET), t(ZT)), torch.tensor(Y), index=idx)
    m.gen.set_state(gen_state)  # the same draw again (its correctness: the test above)
    neg, keep = m.draw_negatives(idx)
    neg = np.broadcast_to(neg.numpy(), (B, k))
    keep = np.ones((B, k), bool) if keep is None else keep.numpy()

    def embed(lin, x):
        w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
        return normalize(x @ w.T + b)

    v_s, v_t = embed(m.embed_s, FS), embed(m.embed_t, ET)
    raw = {}
    for side, bank, v in (("S", bank_t, v_s), ("T", bank_s, v_t)):
        raw[side] = [(np.exp(bank[idx[i]] @ v[i] / tau), np.exp(bank[neg[i]] @ v[i] / tau)) for i in range(B)]
    ref = np.zeros(B)
    for side in ("S", "T"):
        z = np.mean([np.concatenate([[p], ng]) for p, ng in raw[side]]) * n  # fixed on this first batch
        for i, (p, ng) in enumerate(raw[side]):
            p, ng = p / z, ng / z
            pn = keep[i].sum() / n  # m counts the draws this anchor keeps (all k unless shared draws drop some)
            ref[i] -= np.log(p / (p + pn + 1e-7)) + sum(np.log(pn / (x + pn + 1e-7)) for x in ng[keep[i]])
    np.testing.assert_allclose(terms["crd"].value.detach().numpy(), ref, rtol=1e-9)
    assert terms["crd"].weight == 0.8 and m.ce_weight == 1.0
    # the banks moved towards this batch with momentum 0.5 and stay unit-norm; other rows untouched
    np.testing.assert_allclose(m.bank_s.numpy()[idx.numpy()], normalize(0.5 * bank_s[idx.numpy()] + 0.5 * v_s), rtol=1e-9)
    np.testing.assert_allclose(m.bank_t.numpy()[idx.numpy()], normalize(0.5 * bank_t[idx.numpy()] + 0.5 * v_t), rtol=1e-9)
    untouched = [r for r in range(n) if r not in idx.tolist()]
    np.testing.assert_array_equal(m.bank_s.numpy()[untouched], bank_s[untouched])


def test_crd_state_round_trip_continues_exactly():
    """Banks, Z and the negative-sampling generator are module state: a copy loaded from the state dict
    produces the same next step as the original."""
    a = _crd()
    a.terms(student_out(), TeacherOut(t(ET), t(ZT)), torch.tensor(Y), index=torch.arange(B))
    b = _crd()
    b.load_state_dict(a.state_dict())
    idx = torch.tensor([9, 8, 7, 6, 5, 4])
    ta = a.terms(student_out(), TeacherOut(t(ET), t(ZT)), torch.tensor(Y), index=idx)["crd"].value
    tb = b.terms(student_out(), TeacherOut(t(ET), t(ZT)), torch.tensor(Y), index=idx)["crd"].value
    torch.testing.assert_close(ta, tb, rtol=0, atol=0)
    assert torch.equal(a.bank_s, b.bank_s) and torch.equal(a.z, b.z)


@pytest.mark.parametrize("with_keep", [False, True])
def test_crd_fused_negative_term_gives_the_same_numbers_and_gradients(with_keep):
    """negative_nce (the training step's fused form) against nce_loss's negative term, written plainly: the same
    values bit for bit in float32, and the same gradient (autograd through the plain form) to rounding."""
    from methods.crd import negative_nce

    g = torch.Generator().manual_seed(3)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-13)):
        c = (torch.randn(16, 300, generator=g, dtype=dtype) * 0.3).requires_grad_()
        z = torch.tensor(4000.0, dtype=dtype)
        keep = torch.rand(16, 300, generator=g) > 0.2 if with_keep else None
        pn, tau = 300 / 5000, 0.07
        plain = torch.log(pn / (torch.exp(c / tau) / z + pn + 1e-7))
        plain = (plain * keep if keep is not None else plain).sum(1)
        fused = negative_nce(c, z, tau, pn, keep)
        assert torch.equal(plain, fused)
        w = torch.randn(16, generator=g, dtype=dtype)
        (ga,) = torch.autograd.grad((plain * w).sum(), c)
        (gb,) = torch.autograd.grad((fused * w).sum(), c)
        torch.testing.assert_close(gb, ga, rtol=tol, atol=tol * float(ga.abs().max()))


def test_crd_banks_and_negatives_follow_the_run_seed():
    """Each run seed its own bank initialisation and negative draws; the same seed the same ones."""
    from benchmark.registry import METHODS

    cls = METHODS.get("crd")

    def build(seed):
        return cls(
            Dims(DS, DT, K, [DS] * 3, train_size=10, train_labels=CRD_LABELS[:10], seed=seed),
            cls.Hparams(crd_dim=3, crd_negatives_k=4),
        )

    a, b, c = build(0), build(0), build(1)
    assert torch.equal(a.bank_s, b.bank_s) and not torch.equal(a.bank_s, c.bank_s)
    assert not torch.equal(a.bank_s, a.bank_t)
    idx = torch.arange(6)
    assert torch.equal(a.draw_negatives(idx)[0], b.draw_negatives(idx)[0])
    assert not torch.equal(build(0).draw_negatives(idx)[0], c.draw_negatives(idx)[0])


def test_crds_streams_are_declared_by_it_with_their_old_ids_and_a_clash_is_refused():
    """CRD declares its two streams (the core's table no longer names them) with the ids they always had, so its
    banks and negatives are the ones of earlier runs; a method whose stream takes a used name or id is refused."""
    from benchmark.method import STREAMS, Method, UsageError, register, stream_seed
    from methods.crd import CRD

    assert CRD.streams == {"crd_bank": 2, "crd_negatives": 3} and STREAMS["crd_bank"] == 2
    old = int(np.random.SeedSequence(7, spawn_key=(2,)).generate_state(1, np.uint64)[0] & np.uint64(2**63 - 1))
    assert stream_seed(7, "crd_bank") == old
    for streams in ({"data": 9}, {"mine": 1}):
        cls = type("Clash", (Method,), {"streams": streams, "terms": lambda self, s, t, y: {}})
        with pytest.raises(UsageError, match="clashes with the streams"):
            register("clash_test", "a method whose stream clashes")(cls)
    assert "mine" not in STREAMS
