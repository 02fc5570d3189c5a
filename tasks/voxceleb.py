"""Speaker recognition (the paper's Sec. 4.1): a frozen face teacher, a speech student, VoxCeleb protocol.

Layout under --data-dir (see README): vox2_dev/{wav,faces}, vox1_test/{wav,veri_test.txt,list_test_hard.txt},
optional cnceleb/{wav,trials.txt}, vox2_test/{wav,faces}, vox2_meta.csv, noise/.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import TASKS, TEACHERS, UsageError
from benchmark.teacher_tables import TeacherTables, linear_probe_logits
from benchmark.types import Term
from tasks._base import Split, Task, TaskData
from tasks.speaker_metrics import add_noise, eer_and_mindcf, eval_crops, file_seed, trial_scores

SR = 16000
AUDIO = (".wav", ".flac")
IMAGES = (".png", ".jpg", ".jpeg", ".pgm", ".bmp")


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
        return self.data[o:o + n].float().numpy() / 32767

    def random_crops(self, idx: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
        """One random crop per utterance, wrap-around for short ones; batched gather, no per-file loop."""
        n = self.lengths[idx]
        start = (torch.rand(len(idx), generator=gen) * (n - length).clamp(min=1)).long()
        pos = (start[:, None] + torch.arange(length)) % n[:, None]
        return self.data[self.offsets[idx][:, None] + pos].float() / 32767


def _files(root: Path, exts) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in exts)


def read_trials(path: Path) -> list[tuple[int, str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            lab, a, b = line.split()[:3]
            rows.append((int(lab), a, b))
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
    names = sorted({n for rows in parsed.values() for _, a, b in rows for n in (a, b)})
    missing = [n for n in names if not (wav_root / n).exists()]
    if missing:
        raise UsageError(f"{len(missing)} trial files missing under {wav_root}, e.g. {missing[0]}")
    bank = AudioBank([read_audio(wav_root / n) for n in names], names)
    pos = {n: i for i, n in enumerate(names)}
    return {k: TrialSet(bank, torch.tensor([pos[a] for _, a, _ in rows]), torch.tensor([pos[b] for _, _, b in rows]),
                        np.array([lab for lab, _, _ in rows])) for k, rows in parsed.items()}


def read_images(paths: list[Path]) -> list[np.ndarray]:
    from PIL import Image
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def scan_videos(wav_root: Path, face_root: Path, skip_speakers: set[str] = frozenset()):
    """Utterances grouped as speaker/video/utt; one face image per video (face_root/speaker/video.*)."""
    utts, videos, faces = [], [], []
    for f in _files(wav_root, AUDIO):
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
        raise UsageError(f"voxceleb needs at least 4 training speakers (2 to train, 2 held out for validation); "
                         f"found {len(speakers)}")
    return sorted(speakers[i] for i in g.choice(len(speakers), n, replace=False))


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


class AngularPrototypical(nn.Module):
    """Softmax CE + angular prototypical loss (voxceleb_trainer softmaxproto); batches are speaker pairs."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(10.0))
        self.b = nn.Parameter(torch.tensor(-5.0))

    def forward(self, s, y):
        emb = s.embedding.float().reshape(-1, 2, s.embedding.shape[-1])
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
        pairs[spk] = [idx[i:i + 2] for i in range(0, len(idx) - 1, 2)]
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


@TASKS.register("voxceleb", "speaker verification, face teacher -> speech student; EER, minDCF, noise, matching")
class VoxCeleb(Task):
    name = "voxceleb"
    selection_metric, selection_mode = "val_eer", "min"
    summary_metrics = [("eer_o", "EER-O %"), ("mindcf_o", "minDCF-O"), ("eer_h", "EER-H %"), ("eer_noise5", "EER 5 dB %"),
                       ("eer_o_at_best_val", "EER-O % (best-val epoch)"), ("match_af_o", "A-F matching %")]
    _common = dict(optimizer="adam", lr=1e-3, weight_decay=5e-5, schedule="step", lr_step_epochs=3, lr_gamma=0.75,
                   teacher="dlib-face", teacher_logits="probe", val_fraction=0.1)
    profiles = {
        # the fixture trains 2 speakers (2 more are held out for validation): batches of 2 speakers x 2
        "smoke": dict(_common, student="resnet_asp_small", epochs=1, batch_size=4),
        "quick": dict(_common, student="resnet_asp_small", epochs=6, batch_size=4),
        "paper": dict(_common, student="resnet34_asp", epochs=36, batch_size=200, teacher="ir50"),
    }

    def hparam_defaults(self, cfg):
        return {"feat_dist": "cos", "margin_deg": 30.0, "margin_mode": "angle", "beta": 0.0, "ccl_tau": 0.5}

    def make_loss(self, num_classes, embed_dim):
        return AngularPrototypical()

    def steps_per_epoch(self, split, batch_size):
        n_spk = len(torch.unique(split.y))
        if batch_size // 2 > n_spk:
            raise UsageError(f"voxceleb batches hold batch_size/2 distinct speakers: batch_size {batch_size} needs "
                             f"{batch_size // 2}, the training split has {n_spk}; use --set batch_size={2 * n_spk} or less")
        return len(pair_batches(split.y, batch_size, torch.Generator().manual_seed(0)))

    def epoch_batches(self, split, batch_size, gen):
        if batch_size % 2:
            raise UsageError("voxceleb batches are speaker pairs: batch_size must be even")
        return pair_batches(split.y, batch_size, gen)[: self.steps_per_epoch(split, batch_size)]

    def train_inputs(self, split, idx, gen, cfg):
        return split.x.random_crops(idx, int(cfg.train_seconds * 100) * 160 + 240, gen)

    def augment(self, x, gen, train, cfg):
        return x  # filterbanks are computed inside the student; the paper uses no augmentation

    def load(self, cfg) -> TaskData:
        root = Path(cfg.data_dir or "").expanduser()
        need = [root / "vox2_dev" / "wav", root / "vox2_dev" / "faces", root / "vox1_test" / "veri_test.txt"]
        if not cfg.data_dir or not all(p.exists() for p in need):
            raise UsageError(f"voxceleb needs --data-dir with vox2_dev/wav, vox2_dev/faces and vox1_test/veri_test.txt "
                             f"(missing: {', '.join(str(p) for p in need if not p.exists()) or '--data-dir'}); "
                             "build the small fixture with: python -m benchmark fixture voxceleb --out DIR")
        all_utts = [f.relative_to(root / "vox2_dev" / "wav") for f in _files(root / "vox2_dev" / "wav", AUDIO)]
        everyone = sorted({u.parts[0] for u in all_utts})
        g = np.random.default_rng(cfg.split_seed)
        held = validation_speakers(everyone, cfg.val_fraction, g)
        # open-set validation like the test: held-out speakers never train (their faces are not needed)
        utts, videos, faces, vid_index = scan_videos(root / "vox2_dev" / "wav", root / "vox2_dev" / "faces",
                                                     skip_speakers=set(held))
        speakers = sorted({v[0] for v in videos})
        spk_id = {s: i for i, s in enumerate(speakers)}
        y = torch.tensor([spk_id[u.parts[0]] for u in utts])
        key = torch.tensor([vid_index[(u.parts[0], u.parts[1])] for u in utts])
        tr = np.arange(len(utts))
        if cfg.data_fraction < 1:  # utterance-level subsampling that keeps every speaker (Table 2)
            tr = np.concatenate([g.choice(tr[y.numpy()[tr] == s], max(2, int(round((y.numpy()[tr] == s).sum() * cfg.data_fraction))),
                                          replace=False) for s in range(len(speakers))])
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
        val = Split(AudioBank([read_audio(root / "vox2_dev" / "wav" / u) for u in val_utts], [str(u) for u in val_utts]),
                    vy, torch.zeros(len(vy), dtype=torch.long))
        left, right, labels = balanced_trials(vy.numpy(), cfg.val_trials_per_speaker, g)
        val.extra = {"left": torch.tensor(left), "right": torch.tensor(right), "labels": labels}
        trials = load_trials(root / "vox1_test" / "wav", [root / "vox1_test" / "veri_test.txt",
                                                            root / "vox1_test" / "list_test_hard.txt"])
        extra = {"trials": trials, "faces": faces, "videos": videos, "root": root,
                 "face_labels": np.array([spk_id[v[0]] for v in videos])}
        cn = root / "cnceleb" / "trials.txt"
        if cn.exists():
            extra["cnceleb"] = load_trials(root / "cnceleb" / "wav", [cn])["trials.txt"]
        if (root / "vox2_test" / "wav").exists():
            extra["match"] = self._load_matching(root)
        test_bank = trials["veri_test.txt"].bank
        test = Split(test_bank, torch.zeros(len(test_bank), dtype=torch.long), torch.zeros(len(test_bank), dtype=torch.long))
        info = {"data_layout": "voxceleb (vox2_dev / vox1_test)", "n_train": len(tr), "n_val": len(val_utts),
                "n_test": len(trials["veri_test.txt"].labels), "n_speakers": len(speakers), "n_videos": len(videos),
                "split_rule": f"{len(held)} of {len(everyone)} training speakers held out for open-set validation "
                              f"(share {cfg.val_fraction:g}, seed {cfg.split_seed}; <= {cfg.val_utts_per_speaker} utterances "
                              f"each)",
                "n_val_speakers": len(held), "n_val_target_trials": int(labels.sum()),
                "n_val_nontarget_trials": int(len(labels) - labels.sum()),
                "has_cnceleb": "cnceleb" in extra, "has_matching_set": "match" in extra,
                "match_h": ("same-gender distractors" if extra.get("match", {}).get("gender") else
                            "not available (no vox2_meta.csv gender)") if "match" in extra else "n/a"}
        return TaskData(train, val, test, speakers, len(speakers), info, extra)

    def _load_matching(self, root: Path) -> dict:
        utts, videos, faces, vid_index = scan_videos(root / "vox2_test" / "wav", root / "vox2_test" / "faces")
        gender = {}
        meta = root / "vox2_meta.csv"
        if meta.exists():
            with open(meta) as f:
                for row in csv.DictReader(f, skipinitialspace=True):
                    row = {k.strip().lower(): (v or "").strip() for k, v in row.items()}
                    gender[row.get("voxceleb2 id") or row.get("id")] = row.get("gender", "")
        return {"bank": AudioBank([read_audio(root / "vox2_test" / "wav" / u) for u in utts], [str(u) for u in utts]),
                "utt_identity": [u.parts[0] for u in utts], "utt_video": [vid_index[(u.parts[0], u.parts[1])] for u in utts],
                "faces": faces, "videos": videos, "gender": gender}

    def teacher_tables(self, cfg, data, cache) -> TeacherTables:
        teacher = TEACHERS.get(cfg.teacher)
        if getattr(teacher, "modality", "") != "face":
            raise UsageError(f"voxceleb needs a face teacher (dlib-face, ir50, face-weak), not '{cfg.teacher}'")
        if cfg.teacher_logits != "probe":
            raise UsageError("voxceleb: teacher_logits must be 'probe' (a linear probe on the face embeddings)")
        if hasattr(teacher, "checkpoint"):
            teacher.checkpoint = cfg.teacher_checkpoint
        match = data.extra.get("match")
        paths = list(data.extra["faces"]) + (list(match["faces"]) if match else [])
        images = read_images(paths)
        labels = data.extra["face_labels"]
        if hasattr(teacher, "labels"):
            teacher.labels = labels  # the weak teacher trains on the training videos' faces only
        emb, key = cache.embeddings(teacher, images, extra={"train_labels": labels.tolist()})
        n = len(data.extra["faces"])
        data.extra["match_face_emb"] = emb[n:]
        logits, acc = linear_probe_logits(emb[:n].unsqueeze(1), torch.as_tensor(labels), data.num_classes)
        params = {"teacher_id": teacher.id, "teacher_cache_key": key, "teacher_probe_train_acc": round(acc, 4),
                  "teacher_norm_mean": round(emb.norm(dim=-1).mean().item(), 4),
                  "teacher_paper_name": {"ir50": "IR-50", "face-weak": "ResNet34-face"}.get(cfg.teacher, cfg.teacher)}
        return TeacherTables(teacher.id, key, emb[:n].unsqueeze(1), logits, params)

    # ---- evaluation -------------------------------------------------------------------------------
    def _embed_bank(self, ctx, bank: AudioBank, noise: tuple | None = None, files_per_batch: int = 8) -> torch.Tensor:
        """[n_files, n_crops, d] L2-normalised crop embeddings (10 x 4 s as the paper)."""
        cfg = ctx.cfg
        crop = int(cfg.eval_seconds * 100) * 160 + 240
        crops = []
        for i in range(len(bank)):
            wave = bank.wave(i)
            if noise is not None:  # deterministic per file and delta: every method hears the same noisy audio
                files, delta = noise
                rng = np.random.default_rng(file_seed(bank.names[i], delta))
                nz = files[rng.integers(len(files))]
                wave = add_noise(wave, nz[rng.integers(0, max(1, len(nz) - len(wave))):], delta).astype(np.float32)
            crops.append(torch.from_numpy(eval_crops(wave, crop, cfg.eval_crops)).float())
        out = []
        with torch.no_grad(), ctx.autocast():
            for i in range(0, len(crops), files_per_batch):
                x = torch.cat(crops[i:i + files_per_batch]).to(ctx.device)
                out.append(F.normalize(ctx.student(x).embedding.float(), dim=1).cpu())
        return torch.cat(out).reshape(len(bank), cfg.eval_crops, -1)

    def _noise_files(self, cfg, data) -> list[np.ndarray]:
        folder = Path(cfg.noise_dir) if cfg.noise_dir else data.extra["root"] / "noise"
        files = _files(folder, AUDIO) if folder.exists() else []
        return [read_audio(f) for f in files[:200]]

    def evaluate(self, ctx, split):
        data = ctx.data
        if split == "val":
            v = data.val
            emb = self._embed_bank(ctx, v.x)
            eer, dcf = eer_and_mindcf(trial_scores(emb, v.extra["left"], v.extra["right"]).numpy(), v.extra["labels"])
            return {"val_eer": eer, "val_mindcf": dcf}, {}
        m, trials = {}, data.extra["trials"]
        o = trials["veri_test.txt"]
        emb = self._embed_bank(ctx, o.bank)
        m["eer_o"], m["mindcf_o"] = eer_and_mindcf(trial_scores(emb, o.left, o.right).numpy(), o.labels)
        if "list_test_hard.txt" in trials:
            h = trials["list_test_hard.txt"]
            m["eer_h"], m["mindcf_h"] = eer_and_mindcf(trial_scores(emb, h.left, h.right).numpy(), h.labels)
        noise = self._noise_files(ctx.cfg, data)
        for delta in [float(d) for d in ctx.cfg.noise_snrs.split(",") if d.strip()] if noise else []:
            e = self._embed_bank(ctx, o.bank, (noise, delta))
            m[f"eer_noise{delta:g}"], _ = eer_and_mindcf(trial_scores(e, o.left, o.right).numpy(), o.labels)
        if "cnceleb" in data.extra:
            c = data.extra["cnceleb"]
            e = self._embed_bank(ctx, c.bank)
            m["eer_cnceleb"], m["mindcf_cnceleb"] = eer_and_mindcf(trial_scores(e, c.left, c.right).numpy(), c.labels)
        arrays = {}
        if "match" in data.extra:
            mm, arrays = self._matching(ctx, data.extra["match"], data.extra["match_face_emb"])
            m.update(mm)
        return m, arrays

    def _matching(self, ctx, match: dict, face_emb: torch.Tensor):
        """A-F and F-A triplets (random / same-gender distractor); chance 50%."""
        method, cfg = ctx.method, ctx.cfg
        audio = self._embed_bank(ctx, match["bank"]).mean(1)           # mean of the 10 normalised crops
        with torch.no_grad():
            s = method.student_match_features(audio.to(ctx.device))
            f_t = method.teacher_features(face_emb.to(ctx.device)).float()
        ident = np.array(match["utt_identity"])
        face_ident = np.array([v[0] for v in match["videos"]])
        gender = match["gender"]
        out = {}
        rng = np.random.default_rng(0)
        ids = sorted(set(ident))
        for setting in ("o", "h"):
            for direction in ("af", "fa"):
                out[f"match_{direction}_{setting}"] = float("nan")
            if s is None or (setting == "h" and not gender):  # H needs gender metadata: not available, not O
                continue
            a_n, f_n = F.normalize(s.float(), dim=1).cpu(), F.normalize(f_t, dim=1).cpu()
            for direction in ("af", "fa"):
                correct = total = 0
                for _ in range(cfg.match_triplets):
                    p = ids[rng.integers(len(ids))]
                    others = [q for q in ids if q != p and (setting == "o" or (gender.get(p) and gender.get(q) == gender[p]))]
                    if not others:
                        continue
                    q = others[rng.integers(len(others))]
                    pick = lambda arr, who: rng.choice(np.flatnonzero(arr == who))  # noqa: E731
                    if direction == "af":
                        anchor, pos, neg = a_n[pick(ident, p)], f_n[pick(face_ident, p)], f_n[pick(face_ident, q)]
                    else:
                        anchor, pos, neg = f_n[pick(face_ident, p)], a_n[pick(ident, p)], a_n[pick(ident, q)]
                    correct += int(anchor @ pos > anchor @ neg)
                    total += 1
                if total:
                    out[f"match_{direction}_{setting}"] = 100 * correct / total
        g = np.random.default_rng(0)
        pick = g.permutation(len(ident))[: cfg.tsne_samples]
        vid = np.array(match["utt_video"])[pick]
        e_t = face_emb[vid].to(ctx.device)
        with torch.no_grad():
            arrays = {"teacher_embedding": e_t.cpu().numpy(), "teacher_common": method.teacher_reference(e_t).float().cpu().numpy(),
                      "projected_teacher": method.teacher_features(e_t).float().cpu().numpy(),
                      "student_embedding": audio[pick].numpy(), "label": np.searchsorted(ids, ident[pick]),
                      "group": np.array([0 if gender.get(i, "m").lower().startswith("m") else 1 for i in ident[pick]])}
        return out, arrays
