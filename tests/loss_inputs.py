"""Fixed inputs and small helpers of the float64 loss references (tests/test_losses.py, tests/test_ours.py)."""

import numpy as np
import torch

from benchmark.types import Dims, StudentOut

rng = np.random.default_rng(0)
B, DS, DT, K = 6, 5, 4, 3
FS = rng.normal(size=(B, DS))
ET = rng.normal(size=(B, DT)) * 3
ZS = rng.normal(size=(B, K)) * 2
ZT = rng.normal(size=(B, K)) * 2
Y = np.array([0, 1, 2, 0, 1, 0])


def t(a):
    return torch.tensor(a, dtype=torch.float64)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def student_out(fs=FS, zs=ZS, k=K):
    clf = torch.nn.Linear(fs.shape[1], k).double()
    maps = [t(fs)[:, :, None, None]] * 3
    return StudentOut(maps, t(fs).requires_grad_(), t(zs).requires_grad_(), clf)


def make(name, ds=DS, dt=DT, **hp):
    from benchmark.registry import METHODS

    cls = METHODS.get(name)
    return cls(Dims(ds, dt, K, [ds, ds, ds]), cls.Hparams(**hp)).double()
