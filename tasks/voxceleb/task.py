"""Speaker recognition (the paper's Sec. 4.1) as a task adapter: profiles and defaults, the face teacher's
tables, and evaluation (EER/minDCF on O and H, noisy O, CN-Celeb, cross-modal matching) from EvalInputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import distributed
from benchmark.evaluation import feature_dump, student_in_teacher_space, teacher_in_shared_space
from benchmark.registry import TASKS, UsageError
from benchmark.task import Task
from benchmark.teacher_tables import TeacherTables, linear_probe_logits
from benchmark.teachers import TeacherOptions, build_teacher, teacher_class
from tasks.voxceleb.audio import AUDIO, AudioBank, audio_files, read_audio
from tasks.voxceleb.data import MatchSet, SpeakerData, load_speaker_data, read_images
from tasks.voxceleb.sampler import AngularPrototypical, pair_batches
from tasks.voxceleb.scoring import add_noise, eer_and_mindcf, eval_crops, file_seed, trial_scores


@TASKS.register("voxceleb", "speaker verification, face teacher -> speech student; EER, minDCF, noise, matching")
class VoxCeleb(Task):
    name = "voxceleb"
    # the paper's full method of its speaker tables (Table 1: feature-level with quality weights)
    selection_metric, selection_mode = "val_eer", "min"
    summary_metrics = [
        ("eer_o", "EER-O %"),
        ("mindcf_o", "minDCF-O"),
        ("eer_h", "EER-H %"),
        ("eer_noise5", "EER 5 dB %"),
        ("eer_o_at_best_val", "EER-O % (best-val epoch)"),
        ("match_af_o", "A-F matching %"),
    ]
    _common = dict(
        optimizer="adam",
        lr=1e-3,
        weight_decay=5e-5,
        schedule="step",
        lr_step_epochs=3,
        lr_gamma=0.75,
        teacher="dlib-face",
        teacher_logits="probe",
        val_fraction=0.1,
    )
    profile_notes = {
        "smoke": "seconds: 1 epoch on the fixture, small ResNet with attentive pooling (tests, CI)",
        "quick": "CPU: 6 epochs on the fixture (4 training speakers)",
        "paper": "the paper's recipe: ResNetSE34V2, 36 epochs, batches of 100 speakers x 2, IR-50; GPU",
    }
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
        w = distributed.world_size()
        if w > 1 and (batch_size % w or (batch_size // w) % 2):
            raise UsageError(
                f"voxceleb batches are speaker pairs: under torchrun each of the {w} processes must get "
                f"whole pairs, but batch_size {batch_size} gives {batch_size / w:g} samples each; use a "
                f"batch_size divisible by {2 * w}"
            )
        n_spk = len(torch.unique(split.y))
        if batch_size // 2 > n_spk:
            raise UsageError(
                f"voxceleb batches hold batch_size/2 distinct speakers: batch_size {batch_size} needs "
                f"{batch_size // 2}, the training split has {n_spk}; use --set batch_size={2 * n_spk} or less"
            )
        return len(pair_batches(split.y, batch_size, torch.Generator().manual_seed(0)))

    def epoch_batches(self, split, batch_size, gen):
        if batch_size % 2:
            raise UsageError("voxceleb batches are speaker pairs: batch_size must be even")
        return pair_batches(split.y, batch_size, gen)[: self.steps_per_epoch(split, batch_size)]

    def train_inputs(self, split, idx, gen, cfg):
        return split.x.random_crops(idx, int(cfg.train_seconds * 100) * 160 + 240, gen)

    def augment(self, x, gen, train, cfg):
        return x  # filterbanks are computed inside the student; the paper uses no augmentation

    def load(self, cfg) -> SpeakerData:
        return load_speaker_data(cfg)

    def teacher_tables(self, cfg, data: SpeakerData, cache) -> TeacherTables:
        if getattr(teacher_class(cfg.teacher), "modality", "") != "face":
            raise UsageError(f"voxceleb needs a face teacher (dlib-face, ir50, face-weak), not '{cfg.teacher}'")
        if cfg.teacher_logits != "probe":
            raise UsageError("voxceleb: teacher_logits must be 'probe' (a linear probe on the face embeddings)")
        labels = data.face_labels
        # a teacher object of this run: the checkpoint, and the identities the weak teacher trains on
        teacher = build_teacher(
            cfg.teacher, TeacherOptions(checkpoint=cfg.teacher_checkpoint, train_labels=tuple(int(v) for v in labels))
        )
        paths = list(data.faces) + (list(data.match.faces) if data.match else [])
        emb, key = cache.embeddings(teacher, read_images(paths), extra={"train_labels": labels.tolist()})
        n = len(data.faces)
        logits, acc = linear_probe_logits(emb[:n].unsqueeze(1), torch.as_tensor(labels), data.num_classes)
        params = {
            "teacher_id": teacher.id,
            "teacher_cache_key": key,
            "teacher_probe_train_acc": round(acc, 4),
            "teacher_norm_mean": round(emb.norm(dim=-1).mean().item(), 4),
            "teacher_paper_name": {"ir50": "IR-50", "face-weak": "ResNet34-face"}.get(cfg.teacher, cfg.teacher),
        }
        if data.match is not None and len(data.match.faces) > 1:
            # the teacher's own accuracy on identities it never saw: leave-one-out 1-NN identity over the test
            # identities' faces (cosine), as face recognisers are scored
            m = F.normalize(emb[n:].float(), dim=-1)
            sim = m @ m.t()
            sim.fill_diagonal_(float("-inf"))
            ids = [v[0] for v in data.match.videos]
            hits = [ids[j] == ids[i] for i, j in enumerate(sim.argmax(1).tolist())]
            params["teacher_test_acc"] = round(100 * sum(hits) / len(hits), 2)
            params["teacher_test_acc_rule"] = "leave-one-out 1-NN identity, test identities' faces"
        return TeacherTables(teacher.id, key, emb[:n].unsqueeze(1), logits, params, match_embedding=emb[n:])

    # ---- evaluation -------------------------------------------------------------------------------
    def _embed_bank(self, ev, bank: AudioBank, noise: tuple | None = None, files_per_batch: int = 8) -> torch.Tensor:
        """[n_files, n_crops, d] L2-normalised crop embeddings (10 x 4 s as the paper)."""
        cfg = ev.cfg
        crop = int(cfg.eval_seconds * 100) * 160 + 240
        crops = []
        for i in range(len(bank)):
            wave = bank.wave(i)
            if noise is not None:  # deterministic per file and delta: every method hears the same noisy audio
                files, delta = noise
                rng = np.random.default_rng(file_seed(bank.names[i], delta))
                nz = files[rng.integers(len(files))]
                wave = add_noise(wave, nz[rng.integers(0, max(1, len(nz) - len(wave))) :], delta).astype(np.float32)
            crops.append(torch.from_numpy(eval_crops(wave, crop, cfg.eval_crops)).float())
        out = []
        for i in range(0, len(crops), files_per_batch):
            x = torch.cat(crops[i : i + files_per_batch]).to(ev.device)
            out.append(F.normalize(ev.embed(x).embedding.float(), dim=1).cpu())
        return torch.cat(out).reshape(len(bank), cfg.eval_crops, -1)

    def _noise_files(self, cfg, data: SpeakerData) -> list[np.ndarray]:
        folder = Path(cfg.noise_dir) if cfg.noise_dir else data.root / "noise"
        files = audio_files(folder, AUDIO) if folder.exists() else []
        return [read_audio(f) for f in files[:200]]

    def evaluate(self, ev, split):
        data: SpeakerData = ev.data
        if split == "val":
            v = data.val
            emb = self._embed_bank(ev, v.x)
            t = v.trials
            eer, dcf = eer_and_mindcf(trial_scores(emb, t.left, t.right).numpy(), t.labels)
            return {"val_eer": eer, "val_mindcf": dcf}, {}
        m, trials = {}, data.test_trials
        o = trials["veri_test.txt"]
        emb = self._embed_bank(ev, o.bank)
        m["eer_o"], m["mindcf_o"] = eer_and_mindcf(trial_scores(emb, o.left, o.right).numpy(), o.labels)
        if "list_test_hard.txt" in trials:
            h = trials["list_test_hard.txt"]
            m["eer_h"], m["mindcf_h"] = eer_and_mindcf(trial_scores(emb, h.left, h.right).numpy(), h.labels)
        noise = self._noise_files(ev.cfg, data)
        for delta in [float(d) for d in ev.cfg.noise_snrs.split(",") if d.strip()] if noise else []:
            e = self._embed_bank(ev, o.bank, (noise, delta))
            m[f"eer_noise{delta:g}"], _ = eer_and_mindcf(trial_scores(e, o.left, o.right).numpy(), o.labels)
        if data.cnceleb is not None:
            c = data.cnceleb
            e = self._embed_bank(ev, c.bank)
            m["eer_cnceleb"], m["mindcf_cnceleb"] = eer_and_mindcf(trial_scores(e, c.left, c.right).numpy(), c.labels)
        arrays = {}
        if data.match is not None:
            mm, arrays = self._matching(ev, data.match, ev.tables.match_embedding)
            m.update(mm)
        return m, arrays

    def _matching(self, ev, match: MatchSet, face_emb: torch.Tensor):
        """A-F and F-A triplets (random / same-gender distractor); chance 50%."""
        method, cfg = ev.method, ev.cfg
        audio = self._embed_bank(ev, match.bank).mean(1)  # mean of the 10 normalised crops
        a_n = student_in_teacher_space(method, audio, ev.device)
        f_n = teacher_in_shared_space(method, face_emb.to(ev.device)).cpu()
        ident = np.array(match.utt_identity)
        face_ident = np.array([v[0] for v in match.videos])
        gender = match.gender
        out = {}
        rng = np.random.default_rng(0)
        ids = sorted(set(ident))
        for setting in ("o", "h"):
            for direction in ("af", "fa"):
                out[f"match_{direction}_{setting}"] = float("nan")
            if a_n is None or (setting == "h" and not gender):  # H needs gender metadata: not available, not O
                continue
            a_n = a_n.cpu()
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
        vid = np.array(match.utt_video)[pick]
        arrays = feature_dump(
            method,
            face_emb[vid].to(ev.device),
            audio[pick],
            np.searchsorted(ids, ident[pick]),
            np.array([0 if gender.get(i, "m").lower().startswith("m") else 1 for i in ident[pick]]),
        )
        return out, arrays
