"""PKT (Passalis & Tefas 2018): KL between cosine-kernel conditional distributions; lambda=30000."""

from dataclasses import dataclass

import torch

from benchmark.method import Hparams, Method, Term, bounded, register


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    def cond_prob(x):
        x = x / (x.norm(dim=1, keepdim=True) + eps)
        x = torch.nan_to_num(x)
        k = (x @ x.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)

    p_s, p_t = cond_prob(f_s), cond_prob(f_t)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@dataclass
class PKTHparams(Hparams):
    pkt_weight: float = bounded(30000.0, 0, None)


@register("pkt", "PKT probabilistic knowledge transfer on pooled features (relational, B x B), lambda=30000")
class PKT(Method):
    teacher_reads = frozenset({"embedding"})
    Hparams = PKTHparams
    search_space = {"pkt_weight": ("log", 1e3, 1e5)}

    def terms(self, s, t, y):
        return {"pkt": Term(pkt_loss(s.embedding, t.embedding), self.hp.pkt_weight)}
