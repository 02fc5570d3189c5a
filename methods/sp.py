"""SP (Tung & Mori 2019): ||rownorm(G_T) - rownorm(G_S)||_F^2 / B^2 with G = X X^T; lambda=3000.

maps (the published form, chosen when the teacher has stage maps): X is each network's last stage map,
flattened over C*H*W (RepDistiller `feat[-2]`). vector (the adaptation for a teacher that is an embedding):
the teacher side is E_T; the student side the last stage map (`sp_input=last_map`) or F_S.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.method import Hparams, Method, Term, bounded, choice, form_field, form_reads, register, resolve_form


def sp_loss(x_s: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    b = x_s.shape[0]
    x_s, x_t = x_s.reshape(b, -1), x_t.reshape(b, -1)
    g_s = F.normalize(x_s @ x_s.t(), dim=1)
    g_t = F.normalize(x_t @ x_t.t(), dim=1)
    return ((g_t - g_s) ** 2).sum() / (b * b)


@dataclass
class SPHparams(Hparams):
    sp_weight: float = bounded(3000.0, 0, None)
    sp_form: str = form_field()
    sp_input: str = choice("last_map", "embedding", help="vector form, student side: last stage map (reference) or pooled F_S")


@register(
    "sp",
    "similarity-preserving KD: B x B similarity of the last stage maps (maps), or of the student's "
    "last map vs E_T (vector teachers), lambda=3000",
)
class SP(Method):
    Hparams = SPHparams
    search_space = {"sp_weight": ("log", 100.0, 1e4)}

    @classmethod
    def reads(cls, hp, teacher_has_maps):
        return form_reads(hp.sp_form, teacher_has_maps)

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.form = resolve_form("sp", hp.sp_form, dims)

    def terms(self, s, t, y):
        if self.form == "maps":
            return {"sp": Term(sp_loss(s.maps[-1], t.maps[-1]), self.hp.sp_weight)}
        x_s = s.maps[-1] if self.hp.sp_input == "last_map" else s.embedding
        return {"sp": Term(sp_loss(x_s, t.embedding), self.hp.sp_weight)}

    def run_params(self):
        return {"sp_form": self.form}
