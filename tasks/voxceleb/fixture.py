"""Build a small real fixture in the harness's VoxCeleb layout from ../shared/data (FSDD speech, ORL faces)
and Debian's sonic-pi-samples (CC0 noise loops).

Faces and voices are paired arbitrarily (speaker i <-> ORL identity i): the fixture exercises every step of
the protocol on real audio and real faces but carries no cross-modal signal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmark.registry import FIXTURES, UsageError

TRAIN_SPEAKERS = ["george", "jackson", "lucas", "nicolas"]
TEST_SPEAKERS = ["theo", "yweweler"]
NOISE_DIR = Path("/usr/share/sonic-pi/samples")


def _resample(wave: np.ndarray, sr: int) -> np.ndarray:
    import torch
    import torchaudio

    return torchaudio.functional.resample(torch.from_numpy(wave.astype(np.float32)), sr, 16000).numpy()


def _utterances(fsdd: Path, speaker: str, rng) -> list[np.ndarray]:
    """Each utterance concatenates 5 of the speaker's digit recordings (about 2.5 s at 16 kHz)."""
    files = sorted((fsdd / "recordings").glob(f"*_{speaker}_*.wav"))
    if not files:
        raise UsageError(f"no FSDD recordings of '{speaker}' in {fsdd / 'recordings'}")
    files = [files[i] for i in rng.permutation(len(files))]
    out = []
    for i in range(0, len(files) - 4, 5):
        parts = [sf.read(str(f), dtype="float32") for f in files[i : i + 5]]
        out.append(_resample(np.concatenate([p[0] for p in parts]), parts[0][1]))
    return out


def _write_speaker(
    root: Path,
    speaker: str,
    utts: list[np.ndarray],
    videos: int,
    per_video: int,
    faces: np.ndarray | None,
    face_root: Path | None,
) -> list[str]:
    from PIL import Image

    names = []
    for v in range(videos):
        vid = f"vid{v:02d}"
        for u in range(per_video):
            path = root / speaker / vid / f"{u:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), utts.pop(), 16000, subtype="PCM_16")
            names.append(f"{speaker}/{vid}/{u:05d}.wav")
        if faces is not None:
            (face_root / speaker).mkdir(parents=True, exist_ok=True)
            Image.fromarray(faces[v % len(faces)]).save(face_root / speaker / f"{vid}.png")
    return names


def _trials(names: list[str], n: int, rng) -> list[str]:
    """Balanced target / non-target pairs, 'label path1 path2' as VoxCeleb1's veri_test.txt."""
    spk = np.array([x.split("/")[0] for x in names])
    lines = []
    while len(lines) < n:
        a = rng.integers(len(names))
        same = len(lines) % 2 == 0
        pool = np.flatnonzero((spk == spk[a]) if same else (spk != spk[a]))
        pool = pool[pool != a]
        b = rng.choice(pool)
        lines.append(f"{int(same)} {names[a]} {names[b]}")
    return lines


def build_fixture(shared_data: Path, out: Path, noise_dir: Path = NOISE_DIR) -> Path:
    fsdd, orl = shared_data / "fsdd", shared_data / "faces-orl" / "orl_faces_uint8.npz"
    if not (fsdd / "recordings").exists() or not orl.exists():
        raise UsageError(f"need {fsdd}/recordings and {orl} (../shared/data)")
    noise = sorted(noise_dir.glob("ambi_*.flac"))
    if not noise:
        raise UsageError(f"no noise loops in {noise_dir}: apt-get install sonic-pi-samples (or pass --noise-dir)")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(0)
    z = np.load(orl)
    faces = {i: z["images"][z["labels"] == i] for i in range(40)}
    speakers = json.loads((fsdd / "speakers.json").read_text())
    for i, spk in enumerate(TRAIN_SPEAKERS):
        _write_speaker(tmp / "vox2_dev" / "wav", spk, _utterances(fsdd, spk, rng), 6, 8, faces[i], tmp / "vox2_dev" / "faces")
    test_names, cn_names = [], []
    for j, spk in enumerate(TEST_SPEAKERS):
        utts = _utterances(fsdd, spk, rng)
        test_names += _write_speaker(tmp / "vox1_test" / "wav", spk, utts, 4, 5, None, None)
        cn_names += _write_speaker(tmp / "cnceleb" / "wav", spk, utts, 3, 4, None, None)
        _write_speaker(tmp / "vox2_test" / "wav", spk, utts, 4, 2, faces[10 + j], tmp / "vox2_test" / "faces")
    (tmp / "vox1_test" / "veri_test.txt").write_text("\n".join(_trials(test_names, 300, rng)) + "\n")
    (tmp / "vox1_test" / "list_test_hard.txt").write_text("\n".join(_trials(test_names, 300, rng)) + "\n")
    (tmp / "cnceleb" / "trials.txt").write_text("\n".join(_trials(cn_names, 200, rng)) + "\n")
    meta = ["VoxCeleb2 ID, Gender"] + [f"{s}, {speakers[s]['gender'][0]}" for s in TRAIN_SPEAKERS + TEST_SPEAKERS]
    (tmp / "vox2_meta.csv").write_text("\n".join(meta) + "\n")
    (tmp / "noise").mkdir()
    for f in noise[:6]:
        wave, sr = sf.read(str(f), dtype="float32", always_2d=True)
        sf.write(str(tmp / "noise" / f"{f.stem}.wav"), _resample(wave.mean(1), sr), 16000, subtype="PCM_16")
    (tmp / "README.txt").write_text(
        "Fixture in the harness's VoxCeleb layout, built from FSDD (CC BY-SA 4.0, 6 speakers: 4 train, 2 test),\n"
        "ORL faces (speaker i paired ARBITRARILY with face identity i: no cross-modal signal) and sonic-pi-samples\n"
        "ambient loops (CC0) as noise. vox2_test and cnceleb reuse the 2 test speakers' other utterances.\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # only a complete fixture appears under its name
    return out


FIXTURES.add(
    "voxceleb",
    lambda sources, out, noise_dir: build_fixture(sources, out, noise_dir or NOISE_DIR),
    "small real speaker fixture: FSDD speech + ORL faces + sonic-pi noise (no cross-modal signal)",
)
