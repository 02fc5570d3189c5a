"""Speaker-verification scoring as voxceleb_trainer and the paper: 10x4 s crops, mean distance, EER, minDCF."""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from sklearn.metrics import roc_curve


def eer_and_mindcf(scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """EER (%) as voxceleb_trainer's tuneThresholdfromScore (max(fpr, fnr) at argmin |fnr - fpr|) and the
    normalised minDCF of Eq. 12, both from scikit-learn's ROC over every threshold."""
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
    return np.stack([wave[s:s + crop] for s in crop_starts(len(wave), crop, n_crops)])


def trial_scores(emb: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """emb [n_files, n_crops, d] L2-normalised; score = -mean of the n_crops x n_crops Euclidean distances."""
    out = []
    for i in range(0, len(left), 4096):
        a, b = emb[left[i:i + 4096]], emb[right[i:i + 4096]]
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
