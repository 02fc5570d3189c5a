"""Speech I/O for the speaker task: read wav/flac at 16 kHz, and hold many utterances as one int16 tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmark.registry import UsageError

SR = 16000
AUDIO = (".wav", ".flac")


def read_audio(path: Path) -> np.ndarray:
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise UsageError(f"cannot read audio {path}: {e} (m4a must be converted to wav/flac first, see README)") from None
    wave = wave.mean(1)
    if sr != SR:
        import torchaudio

        wave = torchaudio.functional.resample(torch.from_numpy(wave), sr, SR).numpy()
    return wave


class AudioBank:
    """Variable-length waveforms held as one int16 tensor with offsets (data stays as tensors)."""

    def __init__(self, waves: list[np.ndarray], names: list[str]):
        self.names = names
        self.lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
        self.offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), self.lengths[:-1]]), 0)
        flat = np.concatenate(waves) if waves else np.zeros(0, np.float32)
        self.data = torch.from_numpy(np.clip(flat * 32767, -32768, 32767).astype(np.int16))

    def __len__(self) -> int:
        return len(self.names)

    def wave(self, i: int) -> np.ndarray:
        o, n = int(self.offsets[i]), int(self.lengths[i])
        return self.data[o : o + n].float().numpy() / 32767

    def random_crops(self, idx: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
        """One random crop per utterance, wrap-around for short ones; batched gather, no per-file loop."""
        n = self.lengths[idx]
        start = (torch.rand(len(idx), generator=gen) * (n - length).clamp(min=1)).long()
        pos = (start[:, None] + torch.arange(length)) % n[:, None]
        return self.data[self.offsets[idx][:, None] + pos].float() / 32767


def audio_files(root: Path, exts) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in exts)
