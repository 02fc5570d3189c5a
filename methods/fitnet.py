"""FitNet (Romero et al. 2015), as RepDistiller runs it, lambda = 100.

maps (the published form, chosen when the teacher has stage maps): the student's stage map at the hint stage
(`fitnet_hint_stage`, 1-based; 2 = RepDistiller's `--hint_layer 2`, the output of the second stage) goes
through a regressor r = conv + BN + ReLU that maps it onto the teacher's map of the same stage, and the
loss is the mean squared error over every element (nn.MSELoss). The conv depends on the two spatial sizes:
3x3 stride 2 when the student's map is twice the teacher's, a 4x4 stride-2 transposed conv when it is half,
otherwise a (1 + H_s - H_t) x (1 + W_s - W_t) conv (H_s >= H_t).

vector (the adaptation for a teacher that is an embedding: text, faces): a linear regressor (optional BN1d,
no ReLU: teacher embeddings are signed) of the pooled F_S (or of the pooled second stage map) onto E_T, MSE.
"""

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.method import Hparams, Method, Term, UsageError, bounded, choice, form_field, form_reads, register, resolve_form


def map_regressor(s_shape: tuple[int, int, int], t_shape: tuple[int, int, int]) -> nn.Module:
    """Student map (C_s, H_s, W_s) -> teacher map (C_t, H_t, W_t): conv (by the spatial ratio) + BN + ReLU."""
    (c_s, h_s, w_s), (c_t, h_t, w_t) = s_shape, t_shape
    if h_s == 2 * h_t:
        conv = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
    elif 2 * h_s == h_t:
        conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
    elif h_s >= h_t and w_s >= w_t:
        conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
    else:
        raise UsageError(
            f"fitnet: no regressor from a {h_s}x{w_s} student map to a {h_t}x{w_t} teacher map "
            "(the student's map must be at least as large, or half the teacher's)"
        )
    return nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU(inplace=True))


@dataclass
class FitNetHparams(Hparams):
    fitnet_weight: float = bounded(100.0, 0, None)
    fitnet_form: str = form_field()
    fitnet_hint_stage: int = bounded(2, 1, None)  # maps form: the stage whose output is the hint (1-based)
    hint: str = choice("embedding", "stage2", help="vector form, student side: pooled F_S, or GAP of the 2nd stage map")
    regressor_bn: bool = False  # vector form: BN1d after the linear regressor (no ReLU: teacher embeddings are signed)


@register(
    "fitnet",
    "FitNet hint loss, lambda=100: stage map -> conv regressor -> teacher stage map (maps), or a "
    "linear regressor of F_S onto E_T (vector teachers)",
)
class FitNet(Method):
    Hparams = FitNetHparams
    search_space = {"fitnet_weight": ("log", 1.0, 1000.0)}

    @classmethod
    def reads(cls, hp, teacher_has_maps):
        return form_reads(hp.fitnet_form, teacher_has_maps)

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.form = resolve_form("fitnet", hp.fitnet_form, dims)
        if self.form == "maps":
            i = hp.fitnet_hint_stage - 1
            if i >= min(len(dims.map_shapes), len(dims.teacher_map_shapes)):
                raise UsageError(
                    f"fitnet_hint_stage={hp.fitnet_hint_stage}: the student has {len(dims.map_shapes)} "
                    f"stages and the teacher {len(dims.teacher_map_shapes)}"
                )
            self.regressor = map_regressor(dims.map_shapes[i], dims.teacher_map_shapes[i])
            return
        d_in = dims.student if hp.hint == "embedding" else dims.map_channels[1]
        layers = [nn.Linear(d_in, dims.teacher)] + ([nn.BatchNorm1d(dims.teacher)] if hp.regressor_bn else [])
        self.regressor = nn.Sequential(*layers)
        if hp.hint == "embedding":
            self.match_connector = self.regressor

    def terms(self, s, t, y):
        if self.form == "maps":
            i = self.hp.fitnet_hint_stage - 1
            err = (self.regressor(s.maps[i]) - t.maps[i]) ** 2
            return {"hint": Term(err.flatten(1).mean(1), self.hp.fitnet_weight)}
        x = s.embedding if self.hp.hint == "embedding" else torch.flatten(nn.functional.adaptive_avg_pool2d(s.maps[1], 1), 1)
        err = (self.regressor(x) - t.embedding) ** 2
        return {"hint": Term(err.mean(1), self.hp.fitnet_weight)}

    def run_params(self):
        return {"fitnet_form": self.form}
