"""CCL (Chen et al. 2021): composition module, supervised multi-positive NCE, symmetric KL (yanbeic/CCL)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import Hparams, Method, Term, bounded, l2n, register


def _nce_rows(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    q = F.softmax(logits, dim=1)
    neg = 1.0 - pos
    l_pos = -(torch.log(q + 1e-10) * pos).sum(1) / pos.sum(1)
    l_neg = -(torch.log(1 - q + 1e-10) * neg).sum(1) / neg.sum(1).clamp(min=1.0)  # single-class batch guard
    return (l_pos + l_neg).mean()


def _nce_rows_stacked(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """`_nce_rows` of each [B, B] slice of logits [S, B, B] with one label mask: [S] (the same per-slice
    numbers; one pass of each operation instead of S)."""
    q = F.softmax(logits, dim=2)
    neg = 1.0 - pos
    l_pos = -(torch.log(q + 1e-10) * pos).sum(2) / pos.sum(1)
    l_neg = -(torch.log(1 - q + 1e-10) * neg).sum(2) / neg.sum(1).clamp(min=1.0)
    return (l_pos + l_neg).mean(1)


def sup_nce(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Multi-positive NCE N(a, b): positives are same-label columns (incl. j=i), negatives the rest."""
    logits = l2n(a) @ l2n(b).t() / tau
    return _nce_rows(logits, (y[:, None] == y[None, :]).to(logits.dtype))


def sup_nce_both(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """N(a, b) + N(b, a) from one similarity matrix (the label mask is symmetric)."""
    logits = l2n(a) @ l2n(b).t() / tau
    pos = (y[:, None] == y[None, :]).to(logits.dtype)
    return _nce_rows(logits, pos) + _nce_rows(logits.t(), pos)


def sym_kl(z1: torch.Tensor, z2: torch.Tensor, w: float = 0.5) -> torch.Tensor:
    """The reference's 'JSD': KL(p||q) + KL(q||p) per sample, times w. Returns [B]."""
    p, q = F.softmax(z1, dim=1), F.softmax(z2, dim=1)
    return w * (p * torch.log(p / q + 1e-10) + q * torch.log(q / p + 1e-10)).sum(1)


@dataclass
class CCLHparams(Hparams):
    # 0.1 for a strongly correlated teacher (text->image), 0.5 for face->speech
    ccl_tau: float = bounded(0.1, 0, None, lo_open=True)
    ccl_jsd_weight: float = bounded(0.5, 0, None)


@register("ccl", "compositional contrastive learning: composition module + NCE + symmetric KL, tau 0.1 (text)")
class CCL(Method):
    teacher_reads = frozenset({"embedding"})
    Hparams = CCLHparams
    search_space = {"ccl_tau": ("log", 0.05, 1.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        d_t = dims.teacher
        self.v_proj = nn.Linear(dims.student, d_t) if dims.student != d_t else nn.Identity()
        if dims.student != d_t:
            self.match_connector = self.v_proj
        self.compose = nn.Linear(2 * d_t, d_t)
        self.fc_u = nn.Linear(d_t, dims.num_classes)

    def terms(self, s, t, y):
        """The five terms of `reference_terms` with the same values, each normalisation, the label mask and
        its row counts computed once, and the eight NCE directions as one stacked [8, B, B] computation."""
        tau, w = self.hp.ccl_tau, self.hp.ccl_jsd_weight
        v, e = self.v_proj(s.embedding), t.embedding
        z_s_d = s.logits.detach()
        v_n, e_n = l2n(v), l2n(e)
        v_dn = v_n.detach()  # = l2n(v.detach())
        u, z_u = self._compose(e, e_n, v_n)
        u_d, z_u_d = self._compose(e, e_n, v_dn)  # L_u' path: student inputs detached, module trainable
        u_n, u_dn = l2n(u), l2n(u_d)
        sims = [v_n @ u_n.t() / tau, v_n @ e_n.t() / tau, v_dn @ u_dn.t() / tau, u_dn @ e_n.t() / tau]
        nce = _nce_rows_stacked(torch.stack([x for m in sims for x in (m, m.t())]), (y[:, None] == y[None, :]).to(v_n.dtype))
        # L_v trains the student (and the module); L_u' trains only the composition module.
        return {
            "nce_student": Term((nce[0] + nce[1]) + (nce[2] + nce[3])),
            "symkl_student": Term(sym_kl(s.logits, z_u, w)),
            "ce_composed": Term(F.cross_entropy(z_u_d, y, reduction="none")),
            "nce_composed": Term((nce[4] + nce[5]) + (nce[6] + nce[7])),
            "symkl_composed": Term(sym_kl(z_s_d, z_u_d, w)),
        }

    def reference_terms(self, s, t, y):
        """The terms as defined (yanbeic/CCL): what `terms` computes, written plainly (the tests compare them)."""
        tau, w = self.hp.ccl_tau, self.hp.ccl_jsd_weight
        v, e = self.v_proj(s.embedding), t.embedding
        v_d, z_s_d = v.detach(), s.logits.detach()
        u, z_u = self._compose(e, l2n(e), l2n(v))
        u_d, z_u_d = self._compose(e, l2n(e), l2n(v_d))
        return {
            "nce_student": Term(sup_nce_both(v, u, y, tau) + sup_nce_both(v, e, y, tau)),
            "symkl_student": Term(sym_kl(s.logits, z_u, w)),
            "ce_composed": Term(F.cross_entropy(z_u_d, y, reduction="none")),
            "nce_composed": Term(sup_nce_both(v_d, u_d, y, tau) + sup_nce_both(u_d, e, y, tau)),
            "symkl_composed": Term(sym_kl(z_s_d, z_u_d, w)),
        }

    def _compose(self, e, e_n, v_n):
        """u = E_T + C([n(E_T); n(v)]) and its logits (n: L2 normalisation, given)."""
        u = e + self.compose(torch.cat([e_n, v_n], dim=1))
        return u, self.fc_u(u)
