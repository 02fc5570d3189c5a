"""The Modality Focusing Hypothesis generator (Xue et al., ICLR 2023; github.com/zihuixue/MFH, gauss/main.py),
written from its description and equations, with independent seeded streams.

A random hyperplane a ~ N(0, I) over the decisive features gives the label: y = [<x_s, a> > 0] (two classes).

increase_gamma (their experiment 1): x_s ~ N(0, I_20), the first 10 decisive features belong to the student's
modality, the teacher's window of 10 decisive features slides so that `overlap` of them are the student's:
    student x_b (50-d): columns 0..9 = x_s[0:10], the rest N(0, 1) noise
    teacher x_a (25-d): columns (10 - overlap) .. (20 - overlap) = x_s[10 - overlap : 20 - overlap], rest noise
    gamma = overlap / (20 - overlap)   (shared over shared + both modalities' specific decisive features)

increase_alpha (their experiment 2): x_s ~ N(0, I_50), a over all 50; the student sees x_s[0:10] (50-d input),
the teacher x_s[0 : 10 + k] (50-d input), k teacher-only decisive features:
    alpha = k / (k + 10),  gamma = 1 - alpha

The student's input depends only on the seed, never on the overlap (its no-KD baseline is the same at every
gamma); only the teacher's window moves. Every stream (hyperplane, each split's features and noise) comes
from its own child of one numpy SeedSequence per seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.synthetic_data import child

HYPERPLANE_DIM = 500  # as their code: one long random vector, cut to the decisive width


@dataclass
class MFHDraw:
    y: torch.Tensor  # [N] int64, 0/1
    x_teacher: torch.Tensor  # [N, d_a] float32
    x_student: torch.Tensor  # [N, d_b] float32
    decisive: torch.Tensor  # [N, D] the decisive features x_s (tests)


def gamma_of(mode: str, dim: int) -> float:
    return dim / (20 - dim) if mode == "increase_gamma" else 1 - dim / (dim + 10)


def check(mode: str, dim: int) -> None:
    from benchmark.registry import UsageError

    if mode == "increase_gamma" and not 0 <= dim <= 10:
        raise UsageError(f"mfh_dim={dim}: the overlap of increase_gamma is 0..10")
    if mode == "increase_alpha" and not 0 <= dim <= 40:
        raise UsageError(f"mfh_dim={dim}: the teacher-only features of increase_alpha are 0..40")


def draw(mode: str, dim: int, n: int, seed, split: int) -> MFHDraw:
    """One split of n samples. `seed`: the run's SeedSequence (or int); `split`: 0 train, 1 val, 2 test. The
    hyperplane is the seed's first child and the same for every split and every dim."""
    check(mode, dim)
    a = np.random.default_rng(child(seed, 0)).standard_normal(HYPERPLANE_DIM)
    rng = np.random.default_rng(child(seed, split + 1))
    if mode == "increase_gamma":
        d_dec, d_a, d_b = 20, 25, 50
    else:
        d_dec, d_a, d_b = 50, 50, 50
    xs = rng.standard_normal((n, d_dec))
    y = (xs @ a[:d_dec] > 0).astype(np.int64)
    noise = np.random.default_rng(child(child(seed, split + 1), 0))  # noise columns: their own stream
    x_b = noise.standard_normal((n, d_b))
    x_b[:, :10] = xs[:, :10]
    x_a = noise.standard_normal((n, d_a))
    if mode == "increase_gamma":
        x_a[:, 10 - dim : 20 - dim] = xs[:, 10 - dim : 20 - dim]
    else:
        x_a[:, : 10 + dim] = xs[:, : 10 + dim]
    f = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return MFHDraw(torch.from_numpy(y), f(x_a), f(x_b), f(xs))
