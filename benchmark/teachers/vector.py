"""A teacher for vector inputs that the harness trains itself (the synthetic task's teacher modality)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import TEACHERS, UsageError


class MLPTeacher:
    """An MLP (d_in -> 128 -> 64 -> K, BatchNorm + ReLU) trained with cross-entropy on the teacher modality's
    training inputs, then frozen. encode() gets the training inputs first (as many as train_labels), then
    any inputs to embed; it returns, per input, the 64-d penultimate embedding followed by the K logits of
    the teacher's own classifier ([N, 64 + K]), so that one cache entry holds both. A seeded 10% of the
    training inputs is held out: the weights kept are those of the epoch with the best held-out accuracy
    (early stopping; without it the MLP memorises its training rows and loses 5-7 points on new ones)."""

    modality = "vector"
    dim = 64
    epochs, batch_size, lr, holdout = 60, 128, 1e-3, 0.1
    id = f"mlp-teacher/128-64/adam{lr:g}/e{epochs}-bestval{holdout:g}/seed0"

    def __init__(self, options=None):
        self.labels = np.asarray(options.train_labels) if options is not None and len(options.train_labels) else None
        self.untrained = bool(options is not None and options.untrained)
        if self.untrained:  # the random-teacher control: the same MLP at its seeded initialisation, never trained
            self.id = "mlp-teacher/128-64/untrained/seed0"

    def encode(self, inputs: list) -> torch.Tensor:
        if self.labels is None:
            raise UsageError("the MLP teacher must be given the training labels first")
        x = torch.as_tensor(np.stack([np.asarray(v, dtype=np.float32) for v in inputs]))
        y = torch.as_tensor(self.labels)
        k, n = int(y.max()) + 1, len(y)
        torch.manual_seed(0)
        body = nn.Sequential(
            nn.Linear(x.shape[1], 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, self.dim),
            nn.BatchNorm1d(self.dim),
            nn.ReLU(),
        )
        head = nn.Linear(self.dim, k)
        opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=self.lr, weight_decay=1e-4)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(n, generator=g)  # the first n inputs are the training set
        n_val = int(round(self.holdout * n)) if n >= 20 else 0
        val, fit = perm[:n_val], perm[n_val:]
        best, best_acc = None, -1.0
        for _ in range(0 if self.untrained else self.epochs):
            body.train()
            with torch.enable_grad():  # the teacher cache calls encode() under no_grad
                for idx in fit[torch.randperm(len(fit), generator=g)].split(self.batch_size):
                    if len(idx) < 2:  # BatchNorm needs two samples
                        continue
                    loss = F.cross_entropy(head(body(x[idx])), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            if n_val:
                body.eval()
                with torch.no_grad():
                    acc = (head(body(x[val])).argmax(1) == y[val]).float().mean().item()
                if acc > best_acc:
                    best_acc, best = (
                        acc,
                        (
                            {k: v.clone() for k, v in body.state_dict().items()},
                            {k: v.clone() for k, v in head.state_dict().items()},
                        ),
                    )
        if best is not None:
            body.load_state_dict(best[0]), head.load_state_dict(best[1])
        body.eval()
        with torch.no_grad():
            emb = body(x)
            return torch.cat([emb, head(emb)], 1)


TEACHERS.add("mlp-teacher", MLPTeacher, "MLP the harness trains on the teacher modality's vectors (synthetic task), 64-d")
