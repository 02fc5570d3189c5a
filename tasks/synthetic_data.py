"""The synthetic cross-modal generator: known shared, teacher-only and student-only decisive factors.

For K classes, D teacher-decisive factors, a shared share gamma, a student-only share beta, n nuisance
dimensions per modality, class separation s and observation noise sigma (all from one seed):

    D_sh = round(gamma * D)     factors both modalities see         (modality-general decisive)
    D_to = D - D_sh             factors only the teacher's sees     (teacher-specific decisive)
    D_so = round(beta * D)      factors only the student's sees     (student-specific decisive)

    y ~ uniform over {0..K-1} (exactly the same number per class)
    mu_c ~ N(0, s^2 I_D), nu_c ~ N(0, s^2 I_{D_so})   class means, drawn once
    (z_sh, z_to) = mu_y + eps,  z_so = nu_y + eps',  eps, eps' ~ N(0, I)
    u_T, u_S ~ N(0, I_n)                           nuisance, independent of y and of each other
    h_T = (z_sh, z_to, u_T) / c,  h_S = (z_sh, z_so, u_S) / c,   c = sqrt(1 + s^2)
    x_m = g_m(h_m) + sigma_m * xi_m,  xi_m ~ N(0, I_{d_m}),   m in {T, S}   (sigma_S = sigma; sigma_T = teacher_noise)
    g_m(h) = W2_m tanh(W1_m h) / sqrt(H),  W1_m ~ N(0, 1/dim h) [H x dim h], W2_m ~ N(0, 1) [d_m x H]

with H = 4 * d_m hidden units and different input widths d_T != d_S; the teacher's view is the cleaner one
(sigma_T = 0.1 against sigma = 0.5 by default: a privileged modality, so that a teacher trained on its own
draw reaches about 90% where the student's modality allows about 75%); g_T, g_S and the class means are
fixed per data seed and shared by the train, validation and test draws. The teacher's side (mu, g_T
and every draw of the teacher's modality) comes first from the seed and does not depend on gamma or beta:
for one seed, a sweep changes only what the student's modality sees, never the teacher. The label depends on z only
through the class means, so with gamma = 0 the student's input carries no teacher-decisive factor
(only its own D_so factors), and with gamma = 0 and beta = 0 it carries no information about y at all.

Every random stream comes from one numpy SeedSequence per data seed, split into independent children (the
fixed parts: the teacher's side, the student's side; then each split's draw: the teacher's pretraining
set, train, validation, test, each with one child per modality), so no stream of one seed is another
seed's stream or another part's.

This is not the Modality Focusing Hypothesis generator (Xue et al., ICLR 2023, github.com/zihuixue/MFH,
gauss/main.py): there the labels come from a random hyperplane over the decisive features, the student's
input is the same at every gamma while the teacher's window of decisive features slides, and gamma is the
shared count over shared plus both modalities' specific counts; here the teacher is fixed, the student
gains information as gamma grows and gamma = D_sh / D. `tasks/mfh_data.py` is that generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SyntheticSpec:
    classes: int = 20
    factors: int = 16  # D
    gamma: float = 0.5
    beta: float = 0.25
    nuisance: int = 8  # n, per modality
    separation: float = 1.0  # s
    noise: float = 0.5  # sigma, the student's modality
    teacher_noise: float | None = None  # sigma_T, the teacher's modality (None: sigma)
    teacher_dim: int = 64  # d_T
    student_dim: int = 48  # d_S

    @property
    def d_sh(self) -> int:
        return round(self.gamma * self.factors)

    @property
    def d_so(self) -> int:
        return round(self.beta * self.factors)


@dataclass
class Draw:
    """One split: labels, both modalities' inputs and the latent factors (for tests and probes)."""

    y: torch.Tensor  # [N] int64
    x_teacher: torch.Tensor  # [N, d_T] float32
    x_student: torch.Tensor  # [N, d_S] float32
    z_shared: torch.Tensor  # [N, D_sh]
    z_teacher: torch.Tensor  # [N, D_to]
    z_student: torch.Tensor  # [N, D_so]


Seeds = "int | np.random.SeedSequence"


def streams(seed) -> np.random.SeedSequence:
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


def child(seed, i: int) -> np.random.SeedSequence:
    """The i-th independent child stream of `seed` (stateless: the same i always gives the same child)."""
    ss = streams(seed)
    return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, i))


def torch_generator(seed) -> torch.Generator:
    return torch.Generator().manual_seed(int(streams(seed).generate_state(1, np.uint64)[0]) & (2**63 - 1))


class Generator:
    """The fixed parts (class means, the two maps) from `seed`; draw(n_per_class, seed) samples a split.
    Seeds are ints or numpy SeedSequences (tasks/synthetic.py passes independent children of one run's)."""

    def __init__(self, spec: SyntheticSpec, seed: Seeds):
        self.spec = spec
        d, s = spec.factors, spec.separation
        # the teacher's side has its own stream: its class means and map do not depend on gamma or beta
        g = torch_generator(child(seed, 0))
        self.means_t = s * torch.randn(spec.classes, d, generator=g, dtype=torch.float64)
        self.map_t = self._map(d + spec.nuisance, spec.teacher_dim, g)
        g = torch_generator(child(seed, 1))
        self.means_s = s * torch.randn(spec.classes, spec.d_so, generator=g, dtype=torch.float64)
        self.map_s = self._map(spec.d_sh + spec.d_so + spec.nuisance, spec.student_dim, g)

    @staticmethod
    def _map(d_in: int, d_out: int, g: torch.Generator):
        hidden = 4 * d_out
        w1 = torch.randn(hidden, d_in, generator=g, dtype=torch.float64) / math.sqrt(max(d_in, 1))
        w2 = torch.randn(d_out, hidden, generator=g, dtype=torch.float64)
        return w1, w2

    @staticmethod
    def _apply(m, h: torch.Tensor) -> torch.Tensor:
        w1, w2 = m
        return torch.tanh(h @ w1.t()) @ w2.t() / math.sqrt(w1.shape[0])

    def draw(self, per_class: int, seed: Seeds) -> Draw:
        sp = self.spec
        y = torch.arange(sp.classes).repeat_interleave(per_class)
        n, c = len(y), math.sqrt(1 + sp.separation**2)
        g = torch_generator(child(seed, 0))  # the teacher's modality: the same for every gamma and beta
        z_t = self.means_t[y] + torch.randn(n, sp.factors, generator=g, dtype=torch.float64)
        u_t = torch.randn(n, sp.nuisance, generator=g, dtype=torch.float64)
        x_t = self._apply(self.map_t, torch.cat([z_t, u_t], 1) / c) + (
            sp.noise if sp.teacher_noise is None else sp.teacher_noise
        ) * torch.randn(n, sp.teacher_dim, generator=g, dtype=torch.float64)
        g = torch_generator(child(seed, 1))  # the student's own draws
        z_so = self.means_s[y] + torch.randn(n, sp.d_so, generator=g, dtype=torch.float64)
        u_s = torch.randn(n, sp.nuisance, generator=g, dtype=torch.float64)
        z_sh, z_to = z_t[:, : sp.d_sh], z_t[:, sp.d_sh :]
        x_s = self._apply(self.map_s, torch.cat([z_sh, z_so, u_s], 1) / c) + sp.noise * torch.randn(
            n, sp.student_dim, generator=g, dtype=torch.float64
        )
        return Draw(y, x_t.float(), x_s.float(), z_sh.float(), z_to.float(), z_so.float())
