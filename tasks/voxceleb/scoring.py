"""Speaker-verification scoring as voxceleb_trainer and the paper: trial lists, 10x4 s crops, mean distance,
EER, minDCF, noisy test audio, and the balanced validation trials."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_curve

from benchmark.registry import UsageError
from tasks.voxceleb.audio import AudioBank, read_audio


def eer_and_mindcf(scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """EER (%) as voxceleb_trainer's tuneThresholdfromScore (max(fpr, fnr) at argmin |fnr - fpr|) and the
    normalised minDCF of Eq. 12, both from scikit-learn's ROC over every threshold.

    How this differs from voxceleb_trainer (tuneThresholdfromScore / ComputeErrorRates / ComputeMinDcf):
    - EER: it calls roc_curve with the default drop_intermediate=True, which removes ROC points that lie on
      straight segments; argmin |fnr - fpr| then picks among fewer points and can land farther from the
      crossing (its EER can then differ from the crossing's). Here every threshold is kept
      (drop_intermediate=False): the exact ROC, so the EER is the closest point to the crossing.
    - minDCF: its ComputeErrorRates sorts the trials and places a threshold between every two consecutive
      trials, including between trials with the same score; with tied scores it thus counts operating
      points no real threshold can reach (half of a tie accepted, half rejected) and can report a lower
      minDCF. Here thresholds are the distinct scores (roc_curve groups ties): a tie is accepted or rejected
      as a whole, which is what a deployed threshold does. Without ties both give the same minDCF.
    Both choices make the metric a function of the scores alone (no dependence on the trials' order)."""
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        raise ValueError("EER needs both target and non-target trials")
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, dtype=np.float64), pos_label=1, drop_intermediate=False)
    fnr = 1 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    eer = max(fpr[i], fnr[i]) * 100
    dcf = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    return float(eer), float(dcf.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def crop_starts(n_samples: int, crop: int, n_crops: int = 10) -> np.ndarray:
    """Evenly spaced start positions, linspace(0, len - crop, n) (voxceleb_trainer eval mode)."""
    return np.linspace(0, max(0, n_samples - crop), n_crops).astype(np.int64)


def wrap_pad(wave: np.ndarray, length: int) -> np.ndarray:
    """A file shorter than one crop is wrap-padded (numpy 'wrap'), as voxceleb_trainer's loadWAV."""
    if len(wave) >= length:
        return wave
    return np.pad(wave, (0, length - len(wave)), mode="wrap")


def eval_crops(wave: np.ndarray, crop: int, n_crops: int = 10) -> np.ndarray:
    wave = wrap_pad(wave, crop + 1)
    return np.stack([wave[s : s + crop] for s in crop_starts(len(wave), crop, n_crops)])


def trial_scores(emb: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """emb [n_files, n_crops, d] L2-normalised; score = -mean of the n_crops x n_crops Euclidean distances."""
    out = []
    for i in range(0, len(left), 4096):
        a, b = emb[left[i : i + 4096]], emb[right[i : i + 4096]]
        out.append(-torch.cdist(a, b).mean(dim=(1, 2)))
    return torch.cat(out)


def db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-4)


def add_noise(clean: np.ndarray, noise: np.ndarray, delta_db: float) -> np.ndarray:
    """clean + noise scaled so that db(clean) - db(noise) = delta_db (voxceleb_trainer's additive_noise)."""
    noise = np.resize(noise, len(clean)).astype(np.float64)  # wrap-repeat to the utterance length
    scale = np.sqrt(10 ** ((db(clean) - db(noise) - delta_db) / 10))
    return clean + scale * noise


def file_seed(name: str, delta_db: float) -> int:
    """Deterministic per-file seed: every method sees the identical noisy audio."""
    return int.from_bytes(hashlib.sha256(f"{name}|{delta_db}".encode()).digest()[:8], "little")


def read_trials(path: Path) -> list[tuple[int, str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            parts = line.split()
            if len(parts) < 3 or parts[0] not in ("0", "1"):
                raise UsageError(f"{path}: expected 'label path1 path2' with label 0 or 1, got {line.strip()!r}")
            rows.append((int(parts[0]), parts[1], parts[2]))
    return rows


@dataclass
class TrialSet:
    bank: AudioBank
    left: torch.Tensor
    right: torch.Tensor
    labels: np.ndarray


def load_trials(wav_root: Path, lists: list[Path]) -> dict[str, TrialSet]:
    """One AudioBank for every file the trial lists name; each list as index pairs into it."""
    parsed = {p.name: read_trials(p) for p in lists if p.exists()}
    for p in lists:
        if p.name in parsed and len({lab for lab, _, _ in parsed[p.name]}) < 2:
            raise UsageError(
                f"trial list {p} needs target (1) and non-target (0) trials; it has "
                f"{len(parsed[p.name])} trials with labels {sorted({lab for lab, _, _ in parsed[p.name]})}"
            )
    names = sorted({n for rows in parsed.values() for _, a, b in rows for n in (a, b)})
    missing = [n for n in names if not (wav_root / n).exists()]
    if missing:
        raise UsageError(f"{len(missing)} trial files missing under {wav_root}, e.g. {missing[0]}")
    bank = AudioBank([read_audio(wav_root / n) for n in names], names)
    pos = {n: i for i, n in enumerate(names)}
    return {
        k: TrialSet(
            bank,
            torch.tensor([pos[a] for _, a, _ in rows]),
            torch.tensor([pos[b] for _, _, b in rows]),
            np.array([lab for lab, _, _ in rows]),
        )
        for k, rows in parsed.items()
    }


def balanced_trials(spk: np.ndarray, per_speaker: int, g: np.random.Generator):
    """Every speaker contributes up to `per_speaker` target pairs of its own utterances and as many non-target
    pairs (one of its utterances against another speaker's), so the EER rests on many targets of every speaker."""
    left, right, labels = [], [], []
    for s in np.unique(spk):
        own, other = np.flatnonzero(spk == s), np.flatnonzero(spk != s)
        a, b = np.triu_indices(len(own), 1)
        pick = g.choice(len(a), min(len(a), per_speaker), replace=False)
        for i in pick:
            left.append(own[a[i]]), right.append(own[b[i]]), labels.append(1)
        for _ in range(len(pick)):
            left.append(g.choice(own)), right.append(g.choice(other)), labels.append(0)
    return np.array(left), np.array(right), np.array(labels)
