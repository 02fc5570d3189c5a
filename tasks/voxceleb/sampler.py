"""Training batches and loss of the speaker task: P speakers x 2 utterances, softmax CE + angular prototypical."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import distributed
from benchmark.types import Term


class AngularPrototypical(nn.Module):
    """Softmax CE + angular prototypical loss (voxceleb_trainer softmaxproto); batches are speaker pairs."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(10.0))
        self.b = nn.Parameter(torch.tensor(-5.0))

    def forward(self, s, y):
        # under torchrun each shard holds whole pairs (checked before training); the loss sees every pair of the
        # global batch, as one process does
        emb = distributed.gather_cat_with_grad(s.embedding.float()).reshape(-1, 2, s.embedding.shape[-1])
        positive, anchor = emb[:, 0], emb[:, 1]
        cos = F.cosine_similarity(positive.unsqueeze(-1), anchor.unsqueeze(-1).transpose(0, 2))
        logits = cos * self.w.clamp(min=1e-6) + self.b
        ap = F.cross_entropy(logits, torch.arange(len(emb), device=emb.device))
        return {"ce": Term(F.cross_entropy(s.logits.float(), y, reduction="none")), "ap": Term(ap)}


def pair_batches(y: torch.Tensor, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Batches of P = batch_size/2 distinct speakers x 2 utterances (adjacent pairs)."""
    p = batch_size // 2
    pairs: dict[int, list] = {}
    for spk in torch.unique(y).tolist():
        idx = torch.nonzero(y == spk).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        pairs[spk] = [idx[i : i + 2] for i in range(0, len(idx) - 1, 2)]
    stream = []
    while any(pairs.values()):  # rounds: one pair per speaker, speakers shuffled each round
        spks = [s for s in pairs if pairs[s]]
        for k in torch.randperm(len(spks), generator=gen).tolist():
            stream.append((spks[k], pairs[spks[k]].pop()))
    batches, current, deferred = [], [], []
    for item in stream:
        pending = deferred + [item]
        deferred = []
        for spk, pair in pending:
            if spk in {s for s, _ in current}:
                deferred.append((spk, pair))
            else:
                current.append((spk, pair))
            if len(current) == p:
                batches.append(torch.cat([pr for _, pr in current]))
                current = []
    return batches
