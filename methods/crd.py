"""CRD, contrastive representation distillation (Tian et al., ICLR 2020; defaults: RepDistiller's CIFAR-100).

Student and teacher embeddings are mapped by linear heads to 128-d and L2-normalised: v_S = g_S(F_S),
v_T = g_T(E_T). A memory bank per side holds one 128-d vector per training sample (M_S, M_T, N x 128).
For a sample i with m negatives j_1..j_m drawn with replacement from a pool that never holds i itself
(`crd_negative_pool=other_class`, the default and RepDistiller's: the training samples of every other class;
`uniform_no_self`: every training sample but i), one draw per sample with `crd_negatives=per_sample` (as in
RepDistiller), or one draw of m indices shared by the batch with `shared`, in which each anchor drops the
draws outside its pool (itself, or its class) from its own sum:

    s_T(i, j) = exp(<M_S[j], v_T(i)> / tau) / Z_T       s_S(i, j) = exp(<M_T[j], v_S(i)> / tau) / Z_S
    h(s) = s / (s + m_i / N)           (m_i: the negatives anchor i keeps; all m unless shared draws drop some)
    L_side(i) = -log h(s(i, i)) - sum_k log(1 - h(s(i, j_k)))          (NCE, positive = the sample's own slot)
    L_CRD = L_S + L_T, weight 0.8, cross-entropy weight 1

Z_S and Z_T are fixed on the first batch as mean(s) * N (RepDistiller) and kept. After each step the
banks move towards the batch: M[i] <- normalise(0.5 M[i] + 0.5 v(i)) (momentum 0.5). Banks start uniform in
[-a, a], a = 1/sqrt(128/3), drawn from a stream of the run seed (as are the negatives). Everything that
carries across steps (banks, Z, negative-sampling generator) is module state, so --resume continues exactly.
m = min(16384, N - 1).
Why the anchor is never its own negative: with uniform draws a sample is among its own m negatives with
probability 1 - (1 - 1/N)^m (0.31 for N = 45,000, m = 16384), and a self-negative pushes the positive
pair apart more than the positive term pulls it together, so positive pairs stop aligning.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from benchmark import distributed
from benchmark.method import Hparams, Method, Term, UsageError, bounded, choice, l2n, register, stream_seed


def nce_loss(
    pos: torch.Tensor, neg: torch.Tensor, m: int, n: int, keep: torch.Tensor | None = None, eps: float = 1e-7
) -> torch.Tensor:
    """Per-sample NCE loss from normalised scores pos [B] and neg [B, m] (noise probability 1/n); `keep`
    [B, m] drops the negatives outside an anchor's pool from its sum, and then m counts the kept draws of each
    anchor. (The training step computes the same numbers through `negative_nce`, fused; this plain form is the
    definition the tests compare it with.)"""
    if keep is None:
        pn = m / n
        return -(torch.log(pos / (pos + pn + eps)) + torch.log(pn / (neg + pn + eps)).sum(1))
    pn = keep.sum(1).to(pos.dtype) / n
    return -(torch.log(pos / (pos + pn + eps)) + (torch.log(pn[:, None] / (neg + pn[:, None] + eps)) * keep).sum(1))


class NegativeNCE(torch.autograd.Function):
    """sum_k keep * log(pn / (exp(c / tau) / z + pn + eps)) per row of the scores c [B, m]: the operations of
    `nce_loss`'s negative term in the same order (the same values, bit for bit), with fewer temporaries, and a
    backward written out, d/dc = -keep * s / (s + pn + eps) / tau with s = exp(c / tau) / z, in two passes
    instead of autograd's dozen over [B, m] (the CRD step's largest cost after the matrix products)."""

    @staticmethod
    def forward(ctx, c, z, tau: float, pn: float, eps: float, keep):
        s = (c / tau).exp_().div_(z)  # exp(c / tau) / z, as `ng / z` above
        denom = (s + pn).add_(eps)  # s + pn + eps
        term = denom.reciprocal().mul_(pn).log_()  # log(pn / denom): Python's pn / x is reciprocal(x) * pn
        if keep is not None:
            keep = keep.to(c.dtype)  # a 0/1 mask in the scores' dtype: converted once, not per use
            term.mul_(keep)
        ctx.save_for_backward(s, denom, keep)
        ctx.tau = tau
        return term.sum(1)

    @staticmethod
    def backward(ctx, grad):
        s, denom, keep = ctx.saved_tensors
        g = (s / denom).mul_(grad[:, None] / -ctx.tau)
        if keep is not None:
            g.mul_(keep)
        return g, None, None, None, None, None


def negative_nce(
    c: torch.Tensor, z: torch.Tensor, tau: float, pn, keep: torch.Tensor | None = None, eps: float = 1e-7
) -> torch.Tensor:
    """[B]: sum over the negatives of log(pn / (exp(c / tau) / z + pn + eps)), fused (NegativeNCE); pn = m / N,
    a number or one per anchor ([B, 1]: its kept draws m_i / N)."""
    return NegativeNCE.apply(c, z, tau, pn, eps, keep)


@dataclass
class CRDHparams(Hparams):
    ce_weight: float = bounded(1.0, 0, None)
    crd_weight: float = bounded(0.8, 0, None)
    crd_dim: int = bounded(128, 1, None)
    crd_negatives_k: int = bounded(16384, 1, None)
    crd_tau: float = bounded(0.07, 0, None, lo_open=True)
    crd_momentum: float = bounded(0.5, 0, 1)
    crd_negatives: str = choice("shared", "per_sample", help="one draw of negatives per batch, or per sample (RepDistiller)")
    crd_negative_pool: str = choice(
        "other_class", "uniform_no_self", help="negatives from the other classes (RepDistiller) or any sample but the anchor"
    )


@register("crd", "contrastive representation distillation: 128-d heads, memory banks, 16384 NCE negatives, tau 0.07")
class CRD(Method):
    teacher_reads = frozenset({"embedding"})
    Hparams = CRDHparams
    wants_index = True
    streams = {"crd_bank": 2, "crd_negatives": 3}  # its banks' initialisation and its negative draws
    search_space = {"crd_weight": ("log", 0.1, 2.0), "crd_tau": ("log", 0.03, 0.3)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        if dims.train_size < 2:
            raise UsageError("method 'crd' needs the training-set size (a memory bank per sample)")
        n, d = dims.train_size, hp.crd_dim
        self.n, self.k = n, min(hp.crd_negatives_k, n - 1)
        self.embed_s, self.embed_t = nn.Linear(dims.student, d), nn.Linear(dims.teacher, d)
        g = torch.Generator().manual_seed(stream_seed(dims.seed, "crd_bank"))
        a = 1.0 / math.sqrt(d / 3)
        self.register_buffer("bank_s", torch.rand(n, d, generator=g) * 2 * a - a)
        self.register_buffer("bank_t", torch.rand(n, d, generator=g) * 2 * a - a)
        self.register_buffer("z", torch.full((2,), -1.0))  # (Z_S, Z_T); < 0: not set yet
        # negatives: a stream of the run seed; its state is checkpointed (extra state)
        self.gen = torch.Generator().manual_seed(stream_seed(dims.seed, "crd_negatives"))
        self._z_ready = False
        labels = dims.train_labels
        if hp.crd_negative_pool == "other_class":
            if labels is None or len(labels) != n:
                raise UsageError("crd_negative_pool=other_class needs the training labels; use uniform_no_self")
            labels = torch.as_tensor(labels).long().cpu()
            counts = torch.bincount(labels)
            if int(counts.max()) >= n:
                raise UsageError("crd_negative_pool=other_class needs at least two classes in the training set")
            # samples sorted by class: the other classes of c are the positions outside [start_c, start_c + count_c)
            # plain CPU tensors (not buffers): the draw runs on the CPU generator wherever the model is
            self.labels, self.count = labels, counts
            self.order, self.start = torch.argsort(labels, stable=True), torch.cumsum(counts, 0) - counts

    def draw_negatives(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Negative indices ([B, k] per sample, or [k] shared) and, when shared, a [B, k] mask of the draws
        each anchor keeps (never itself; with other_class never its class). Per-sample draws are exact: every
        one of the k lies in the anchor's pool."""
        b, k, pool = len(index), self.k, self.hp.crd_negative_pool
        if self.hp.crd_negatives == "shared":  # the [B, k] mask is built where the batch lives (no host copy)
            neg = torch.randint(0, self.n, (k,), generator=self.gen).to(index.device)
            if pool != "other_class":
                return neg, neg[None, :] != index[:, None]
            if self.labels.device != index.device:  # moved once, then kept beside the batch
                self.labels = self.labels.to(index.device)
            return neg, self.labels[neg][None, :] != self.labels[index][:, None]
        index = index.cpu()
        u = torch.rand((b, k), generator=self.gen, dtype=torch.float64)
        if pool == "uniform_no_self":
            r = (u * (self.n - 1)).long().clamp_max(self.n - 2)
            return r + (r >= index[:, None]).long(), None
        c = self.labels.cpu()[index]  # the per-sample draw runs on the CPU generator
        size = (self.n - self.count[c])[:, None]
        r = torch.minimum((u * size).long(), size - 1)
        r = r + self.count[c][:, None] * (r >= self.start[c][:, None]).long()
        return self.order[r], None

    def terms(self, s, t, y, index=None):
        if index is None:
            raise UsageError("method 'crd' needs each sample's training-set index")
        v_s, v_t = l2n(self.embed_s(s.embedding)), l2n(self.embed_t(t.embedding))
        neg, keep = self.draw_negatives(index)
        neg = neg.to(index.device)
        tau, scores = self.hp.crd_tau, []
        for bank, v in ((self.bank_t, v_s), (self.bank_s, v_t)):  # student vs teacher bank, teacher vs student bank
            pos = torch.exp((bank[index] * v).sum(1) / tau)
            if neg.dim() == 1:  # index_select: the same rows as bank[neg], copied row by row (faster gather)
                c = v @ bank.index_select(0, neg).t()  # [B, m] scores
            else:
                c = torch.bmm(bank[neg], v.unsqueeze(2)).squeeze(2)  # [B, m]
            scores.append((pos, c))
        if self.training and not self._z_ready:
            with torch.no_grad():
                if bool((self.z < 0).any()):  # the first batch of the run fixes Z (once; kept in the state)
                    for i, (pos, c) in enumerate(scores):  # under torchrun: the mean over every rank's shard
                        ng = torch.exp(c / tau)
                        total = distributed.all_sum(torch.cat([pos[:, None], ng], 1).mean())
                        self.z[i] = total / distributed.world_size() * self.n
            self._z_ready = True
        keep = None if keep is None else keep.to(index.device, v_s.dtype)  # a 0/1 mask, converted once per step
        # the noise probability m / N with m the draws an anchor keeps: all k, or its kept share of a shared draw
        pn = self.k / self.n if keep is None else keep.sum(1, keepdim=True) / self.n
        eps = 1e-7
        # nce_loss(pos / z, exp(c / tau) / z, ...), its negative sum fused (negative_nce: the same values)
        loss = 0
        for i, (pos, c) in enumerate(scores):
            p = pos / self.z[i]
            pn_pos = pn if keep is None else pn[:, 0]
            loss = loss + -(torch.log(p / (p + pn_pos + eps)) + negative_nce(c, self.z[i], tau, pn, keep))
        if self.training:
            with torch.no_grad():
                m = self.hp.crd_momentum
                index_all = distributed.gather_cat(index)  # under torchrun: the whole global batch, on every rank
                for bank, v in ((self.bank_s, v_s), (self.bank_t, v_t)):
                    bank[index_all] = l2n(bank[index_all] * m + distributed.gather_cat(v.detach()).to(bank.dtype) * (1 - m))
        return {"crd": Term(loss, self.hp.crd_weight)}

    def get_extra_state(self):
        return {"gen": self.gen.get_state()}

    def set_extra_state(self, state) -> None:
        self.gen.set_state(state["gen"])
        self._z_ready = False

    def run_params(self):
        return {"crd_bank_size": self.n, "crd_negatives_effective": self.k, "crd_self_negatives": "never"}
