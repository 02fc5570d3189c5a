"""Tables the training loop gathers from: cached teacher embeddings and the teacher logits for KD."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class TeacherTables:
    """embedding[key, variant] is E_T for a sample with that teacher key and a drawn variant (template)."""

    teacher_id: str
    cache_key: str
    embedding: torch.Tensor  # [N_keys, V, d_T], raw
    logits: torch.Tensor | None = None  # [N_keys, V, K]
    params: dict = field(default_factory=dict)
    match_embedding: torch.Tensor | None = None  # the teacher's embeddings of a cross-modal matching set (CPU)
    # a frozen model run on each augmented training batch (an image teacher): x -> (embedding, logits); the
    # tables above then hold its outputs on the un-augmented rows (evaluation, matching)
    live: torch.nn.Module | None = None
    # (C, H, W) of each stage map the live teacher gives (TeacherOut.maps); empty: it gives none
    map_shapes: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return self.embedding.shape[-1]

    def digest(self) -> str:
        """A fingerprint of this teacher instance: sha256 of its embeddings and logits (first 16 hex digits).
        teacher_id names a recipe; two trainings of one recipe (another machine, another code version under
        the same cache key) are two teachers with one id and two digests."""
        import hashlib

        h = hashlib.sha256()
        for t in (self.embedding, self.logits):
            if t is not None:
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def to(self, device) -> "TeacherTables":
        self.embedding = self.embedding.to(device)
        self.logits = None if self.logits is None else self.logits.to(device)
        self.live = None if self.live is None else self.live.to(device)
        return self


def class_means(
    tables: TeacherTables, keys: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The class-mean control's targets: per class, the mean of the teacher's raw embeddings [K, d_T] and logits
    [K, C] over the training samples of that class (table rows `keys`, every variant). A class with no training
    sample keeps zeros (nothing reads its row)."""

    def mean(table: torch.Tensor) -> torch.Tensor:
        per_sample = table[keys].float().mean(1)
        total = torch.zeros(num_classes, per_sample.shape[-1], device=per_sample.device).index_add_(0, labels, per_sample)
        count = torch.bincount(labels, minlength=num_classes).clamp(min=1).to(total)
        return total / count[:, None]

    return mean(tables.embedding), None if tables.logits is None else mean(tables.logits)


def matched_label_smoothing(logits: torch.Tensor, temperature: float, num_classes: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The label-smoothing control's logits [K, K]: row c is T log p_eps(c), p_eps = (1 - eps) onehot(c) + eps / K,
    so that softmax(row / T) = p_eps exactly; eps is chosen so that H(p_eps) equals the teacher's mean target
    entropy H(softmax(z / T)) over `logits` [N, V, K] (training rows, every variant). Returns the logits and the
    parameters a run records (eps, the matched entropy)."""
    from scipy import optimize

    k = num_classes
    target = float(torch.distributions.Categorical(logits=logits.float().reshape(-1, k) / temperature).entropy().mean())

    def entropy(eps: float) -> float:
        top, rest = 1 - eps + eps / k, eps / k
        return -(top * math.log(top) if top > 0 else 0.0) - ((k - 1) * rest * math.log(rest) if rest > 0 else 0.0)

    top_eps = (k - 1) / k  # the uniform distribution: the largest entropy, log K
    eps = (
        0.0
        if target <= 0
        else top_eps
        if target >= entropy(top_eps)
        else float(optimize.brentq(lambda e: entropy(e) - target, 0.0, top_eps, xtol=1e-12))
    )
    p = torch.full((k, k), eps / k, dtype=torch.float64) + (1 - eps) * torch.eye(k, dtype=torch.float64)
    return (temperature * p.clamp_min(1e-30).log()).float(), {"smoothing_eps": eps, "teacher_mean_target_entropy": target}


def class_prototypes(emb: torch.Tensor) -> torch.Tensor:
    """[K, V, d] -> [K, d]: normalise each variant, average, renormalise (the 80-template prototype)."""
    return F.normalize(F.normalize(emb.float(), dim=-1).mean(1), dim=-1)


def zeroshot_logits(emb: torch.Tensor, scale: float) -> torch.Tensor:
    """z[c, t, k] = s * cos(E[c, t], prototype_k) (methods/README.md)."""
    return scale * F.normalize(emb.float(), dim=-1) @ class_prototypes(emb).t()


def linear_probe_logits(
    emb: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 300, seed: int = 0
) -> tuple[torch.Tensor, float]:
    """Train a linear classifier on frozen teacher embeddings (methods/README.md); return its logits and accuracy.

    emb: [N, V, d]; labels: [N] (the class of each key). The probe is trained on all variants.
    """
    g = torch.Generator().manual_seed(seed)
    x = emb.float().reshape(-1, emb.shape[-1])
    y = labels.repeat_interleave(emb.shape[1])
    probe = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=g)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = probe(x)
        acc = (logits.argmax(1) == y).float().mean().item()
    return logits.reshape(*emb.shape[:2], num_classes), acc
