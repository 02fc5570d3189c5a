"""RKD, relational knowledge distillation (Park et al., CVPR 2019; defaults: RepDistiller's CIFAR-100 ones).

On the pooled embeddings F_S [B, d_S] and E_T [B, d_T] (any dimensions: only relations inside each
modality are compared, no map between the spaces):

    distance:  psi_D(i, j) = ||f_i - f_j|| / mu,  mu = mean of the non-zero pairwise distances in the batch
               L_D = smooth_L1 over all ordered pairs (i, j), diagonal included (zero on both sides)
    angle:     psi_A(i, j, k) = <(f_i - f_j)/||f_i - f_j||, (f_k - f_j)/||f_k - f_j||>   (apex j)
               L_A = smooth_L1 over all triplets (j, i, k)
    L_RKD = 25 L_D + 50 L_A   (smooth L1 with beta 1, mean over the entries)

The teacher side carries no gradient. Invariant to rotating or scaling either side (tested).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.method import Hparams, Method, Term, bounded, register


def _distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")  # exact zeros on the diagonal
    return d / d[d > 0].mean()


def _angles(e: torch.Tensor) -> torch.Tensor:
    """[j, i, k] = cos of the angle at apex j, from the Gram matrix G = e e^T of the centred features (angles
    do not change under a shift; centring keeps G's entries small, so no digits are lost to a shared offset):
    <f_i - f_j, f_k - f_j> = G_ik - G_ij - G_jk + G_jj, divided by |f_i - f_j| |f_k - f_j| (0 where i or k = j).
    B^3 work instead of B^3 x d for the explicit differences (RepDistiller's form; same values)."""
    e = e - e.mean(0, keepdim=True)
    g = e @ e.t()
    dots = g[None, :, :] - g[:, :, None] - g[:, None, :] + g.diagonal()[:, None, None]
    dist = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
    inv = torch.where(dist > 0, 1.0 / dist.clamp_min(1e-12), torch.zeros_like(dist))
    return dots * inv[:, :, None] * inv[:, None, :]


def rkd_terms(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In fp32 (or float64) even under bf16 autocast: a Gram matrix in bf16 loses the angles' digits."""
    with torch.autocast(f_s.device.type, enabled=False):
        with torch.no_grad():
            d_t, a_t = _distances(f_t), _angles(f_t)
        return F.smooth_l1_loss(_distances(f_s), d_t), F.smooth_l1_loss(_angles(f_s), a_t)


@dataclass
class RKDHparams(Hparams):
    rkd_distance_weight: float = bounded(25.0, 0, None)
    rkd_angle_weight: float = bounded(50.0, 0, None)


@register("rkd", "relational KD: distance (25) and angle (50) relations inside each modality, smooth L1")
class RKD(Method):
    teacher_reads = frozenset({"embedding"})
    Hparams = RKDHparams
    search_space = {"rkd_distance_weight": ("log", 1.0, 100.0), "rkd_angle_weight": ("log", 1.0, 100.0)}

    def terms(self, s, t, y):
        loss_d, loss_a = rkd_terms(s.embedding, t.embedding)
        return {"rkd_distance": Term(loss_d, self.hp.rkd_distance_weight), "rkd_angle": Term(loss_a, self.hp.rkd_angle_weight)}
