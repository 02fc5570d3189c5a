"""The speaker task's data: the VoxCeleb layout read into typed tensors (training audio, open-set validation
speakers with balanced trials, the test trial lists, the faces of each training video, the matching set)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmark.registry import UsageError
from benchmark.task import Split, TaskData, Trials
from tasks.voxceleb.audio import AUDIO, AudioBank, audio_files, read_audio
from tasks.voxceleb.scoring import TrialSet, balanced_trials, load_trials

IMAGES = (".png", ".jpg", ".jpeg", ".pgm", ".bmp")


@dataclass
class MatchSet:
    """vox2_test: utterances and one face per video of identities unseen in training (Table 4)."""

    bank: AudioBank
    utt_identity: list[str]
    utt_video: list[int]
    faces: list[Path]
    videos: list[tuple[str, str]]
    gender: dict[str, str]


@dataclass
class SpeakerData(TaskData):
    test_trials: dict[str, TrialSet] = field(default_factory=dict)  # veri_test.txt (O), list_test_hard.txt (H)
    faces: list[Path] = field(default_factory=list)  # one face image per training video
    videos: list[tuple[str, str]] = field(default_factory=list)  # (speaker, video) of each teacher key
    root: Path = Path(".")
    face_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # speaker of each video
    cnceleb: TrialSet | None = None
    match: MatchSet | None = None


def read_images(paths: list[Path]) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def scan_videos(wav_root: Path, face_root: Path, skip_speakers: set[str] = frozenset()):
    """Utterances grouped as speaker/video/utt; one face image per video (face_root/speaker/video.*)."""
    utts, videos, faces = [], [], []
    for f in audio_files(wav_root, AUDIO):
        rel = f.relative_to(wav_root)
        if len(rel.parts) != 3:
            raise UsageError(f"expected <speaker>/<video>/<utt> under {wav_root}, got {rel}")
        if rel.parts[0] not in skip_speakers:
            utts.append(rel)
    vid_index = {}
    for rel in utts:
        spk, vid = rel.parts[0], rel.parts[1]
        if (spk, vid) not in vid_index:
            face = next((face_root / spk / f"{vid}{e}" for e in IMAGES if (face_root / spk / f"{vid}{e}").exists()), None)
            if face is None:
                raise UsageError(f"no face image for video {spk}/{vid} in {face_root} (expected {spk}/{vid}.png or .jpg)")
            vid_index[(spk, vid)] = len(videos)
            videos.append((spk, vid))
            faces.append(face)
    return utts, videos, faces, vid_index


def validation_speakers(speakers: list[str], share: float, g: np.random.Generator) -> list[str]:
    """A seeded share of the training speakers (at least 2, for non-target trials), held out whole."""
    n = max(2, int(round(len(speakers) * share)))
    if len(speakers) - n < 2:
        raise UsageError(
            f"voxceleb needs at least 4 training speakers (2 to train, 2 held out for validation); found {len(speakers)}"
        )
    return sorted(speakers[i] for i in g.choice(len(speakers), n, replace=False))


def load_speaker_data(cfg) -> SpeakerData:
    """The VoxCeleb layout under cfg.data_dir as typed tensors and trial sets (see README for the layout)."""
    root = Path(cfg.data_dir or "").expanduser()
    need = [root / "vox2_dev" / "wav", root / "vox2_dev" / "faces", root / "vox1_test" / "veri_test.txt"]
    if not cfg.data_dir or not all(p.exists() for p in need):
        raise UsageError(
            f"voxceleb needs --data-dir with vox2_dev/wav, vox2_dev/faces and vox1_test/veri_test.txt "
            f"(missing: {', '.join(str(p) for p in need if not p.exists()) or '--data-dir'}); "
            "build the small fixture with: python -m benchmark fixture voxceleb --out DIR"
        )
    all_utts = [f.relative_to(root / "vox2_dev" / "wav") for f in audio_files(root / "vox2_dev" / "wav", AUDIO)]
    everyone = sorted({u.parts[0] for u in all_utts})
    g = np.random.default_rng(cfg.split_seed)
    held = validation_speakers(everyone, cfg.val_fraction, g)
    # open-set validation like the test: held-out speakers never train (their faces are not needed)
    utts, videos, faces, vid_index = scan_videos(root / "vox2_dev" / "wav", root / "vox2_dev" / "faces", skip_speakers=set(held))
    speakers = sorted({v[0] for v in videos})
    spk_id = {s: i for i, s in enumerate(speakers)}
    y = torch.tensor([spk_id[u.parts[0]] for u in utts])
    key = torch.tensor([vid_index[(u.parts[0], u.parts[1])] for u in utts])
    tr = np.arange(len(utts))
    if cfg.data_fraction < 1:  # utterance-level subsampling that keeps every speaker (Table 2)
        tr = np.concatenate(
            [
                g.choice(
                    tr[y.numpy()[tr] == s], max(2, int(round((y.numpy()[tr] == s).sum() * cfg.data_fraction))), replace=False
                )
                for s in range(len(speakers))
            ]
        )
        tr.sort()
    val_utts, val_spk = [], []
    for i, spk in enumerate(held):  # a seeded sample of each held-out speaker's utterances
        own = sorted(u for u in all_utts if u.parts[0] == spk)
        pick = sorted(g.choice(len(own), min(len(own), cfg.val_utts_per_speaker), replace=False))
        val_utts += [own[j] for j in pick]
        val_spk += [i] * len(pick)
    waves = {i: read_audio(root / "vox2_dev" / "wav" / utts[i]) for i in tr}
    train = Split(AudioBank([waves[i] for i in tr], [str(utts[i]) for i in tr]), y[tr], key[tr])
    vy = torch.tensor(val_spk)
    val = Split(
        AudioBank([read_audio(root / "vox2_dev" / "wav" / u) for u in val_utts], [str(u) for u in val_utts]),
        vy,
        torch.zeros(len(vy), dtype=torch.long),
    )
    left, right, labels = balanced_trials(vy.numpy(), cfg.val_trials_per_speaker, g)
    val.trials = Trials(torch.tensor(left), torch.tensor(right), labels)
    trials = load_trials(
        root / "vox1_test" / "wav", [root / "vox1_test" / "veri_test.txt", root / "vox1_test" / "list_test_hard.txt"]
    )
    cn = root / "cnceleb" / "trials.txt"
    cnceleb = load_trials(root / "cnceleb" / "wav", [cn])["trials.txt"] if cn.exists() else None
    match = load_matching(root) if (root / "vox2_test" / "wav").exists() else None
    test_bank = trials["veri_test.txt"].bank
    test = Split(test_bank, torch.zeros(len(test_bank), dtype=torch.long), torch.zeros(len(test_bank), dtype=torch.long))
    info = {
        "data_layout": "voxceleb (vox2_dev / vox1_test)",
        "n_train": len(tr),
        "n_val": len(val_utts),
        "n_test": len(trials["veri_test.txt"].labels),
        "n_speakers": len(speakers),
        "n_videos": len(videos),
        "split_rule": f"{len(held)} of {len(everyone)} training speakers held out for open-set validation "
        f"(share {cfg.val_fraction:g}, seed {cfg.split_seed}; <= {cfg.val_utts_per_speaker} utterances "
        f"each)",
        "n_val_speakers": len(held),
        "n_val_target_trials": int(labels.sum()),
        "n_val_nontarget_trials": int(len(labels) - labels.sum()),
        "has_cnceleb": cnceleb is not None,
        "has_matching_set": match is not None,
        "match_h": ("same-gender distractors" if match.gender else "not available (no vox2_meta.csv gender)")
        if match is not None
        else "n/a",
    }
    return SpeakerData(
        train,
        val,
        test,
        speakers,
        len(speakers),
        info,
        test_trials=trials,
        faces=faces,
        videos=videos,
        root=root,
        face_labels=np.array([spk_id[v[0]] for v in videos]),
        cnceleb=cnceleb,
        match=match,
    )


def load_matching(root: Path) -> MatchSet:
    """The cross-modal matching set (vox2_test): audio, one face per video, gender when vox2_meta.csv has it."""
    utts, videos, faces, vid_index = scan_videos(root / "vox2_test" / "wav", root / "vox2_test" / "faces")
    gender = {}
    meta = root / "vox2_meta.csv"
    if meta.exists():
        with open(meta) as f:
            for row in csv.DictReader(f, skipinitialspace=True):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items()}
                gender[row.get("voxceleb2 id") or row.get("id")] = row.get("gender", "")
    return MatchSet(
        AudioBank([read_audio(root / "vox2_test" / "wav" / u) for u in utts], [str(u) for u in utts]),
        [u.parts[0] for u in utts],
        [vid_index[(u.parts[0], u.parts[1])] for u in utts],
        faces,
        videos,
        gender,
    )
