"""CIFAR-100, same modality: an image teacher -> a smaller image student (the positive control of the harness).

The track every distillation codebase knows (RepDistiller, mdistiller, torchdistill): a CIFAR-100 teacher
trained on the training split, frozen, and a smaller student trained with every method of the registry.
Logit methods get the teacher's own logits, feature methods its penultimate features. The teacher sees each
augmented training batch of the student (it runs in the loop under no_grad: `teacher_in_loop`); its outputs
on the un-augmented rows serve evaluation (its accuracy, the matching prototypes).

Teachers: `img-trained` (the harness trains `teacher_arch` once per recipe and training split, cached by
content hash; benchmark/teachers/image.py) or `img-checkpoint` (`teacher_checkpoint` + `teacher_arch`: a
registry student or tv:<torchvision model>). The teacher trains on `teacher_data_fraction` of each class
of the training split; `data_fraction` is the student's share (the quick profile gives the student a fifth
of the data, the regime in which a teacher's soft targets are known to help most). Validation and test rows
are never seen by the teacher.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from benchmark.evaluation import match_per_sample_teacher
from benchmark.registry import STUDENTS, TASKS, UsageError
from benchmark.task import Split, TaskData
from benchmark.teacher_tables import TeacherTables
from tasks.cifar100 import CIFAR_MEAN, CIFAR_STD, cifar100_arrays
from tasks.image import ImageClassification

IMAGE_TEACHERS = ("img-trained", "img-checkpoint")


def random_teacher(arch: str, seed: int, num_classes: int):
    """The random-teacher control: `arch` at its initialisation from the seed (teacher_seed), never trained,
    frozen like a trained teacher (BatchNorm at its initial running statistics)."""
    from benchmark.method import stream_seed
    from benchmark.teachers.image import ImageTeacher, build_arch

    with torch.random.fork_rng():
        torch.manual_seed(stream_seed(seed, "random_teacher"))
        net = build_arch(arch, num_classes)
    if getattr(net, "channels_last", False):
        net = net.to(memory_format=torch.channels_last)
    return ImageTeacher(net), f"random-init/{arch}/seed{seed}"


def by_row(data: TaskData) -> TaskData:
    """Teacher keys = each sample's row in the teacher table: train rows, then validation, then test."""
    splits, offset = [], 0
    for sp in (data.train, data.val, data.test):
        splits.append(Split(sp.x, sp.y, torch.arange(offset, offset + len(sp.y))))
        offset += len(sp.y)
    return replace(data, train=splits[0], val=splits[1], test=splits[2])


@TASKS.register(
    "cifar100-kd",
    "CIFAR-100, same modality: an image teacher the harness trains (or a checkpoint) "
    "distilled into a smaller image student; the positive control",
)
class Cifar100KD(ImageClassification):
    name = "cifar100-kd"
    # random: teacher_arch at its seeded initialisation, untrained
    teacher_controls = ("random", "shuffled", "class_mean", "label_smoothing")
    positive_control = "kd"
    teacher_maps = True  # the image teacher runs in the loop and gives its stage maps (FitNet, SP, ICKD, AT)
    data_folder = "cifar100"
    mean, std = CIFAR_MEAN, CIFAR_STD
    profile_notes = {
        "smoke": "seconds: a ResNet8-w16 teacher trained 1 epoch on 4% of each class, the same for the student",
        "quick": "CPU: ResNet8 teacher (0.3M) trained once, 6 epochs on the whole training split (about 15 min on "
        "2 cores, cached); the student budget of cifar100:quick (ResNet8-w16, the whole training split, "
        "4 epochs), so that the image and the text teacher compare at equal cost (docs/tasks.md: the rule "
        "and the measured time of a run)",
        "paper": "RepDistiller/mdistiller's recipe on a GPU: resnet32x4 teacher -> resnet8x4 student, 240 epochs, "
        "batch 64, SGD lr 0.05 x0.1 at 150/180/210, wd 5e-4 (teacher trained with the same recipe)",
    }
    _common = dict(teacher="img-trained", teacher_logits="own")
    profiles = {
        "smoke": dict(
            _common,
            student="resnet8_w16",
            teacher_arch="resnet8_w16",
            teacher_epochs=1,
            teacher_lr=0.05,
            teacher_data_fraction=0.04,
            epochs=1,
            batch_size=64,
            lr=0.05,
            data_fraction=0.04,
            val_fraction=0.02,
            test_limit=1000,
            schedule="onecycle",
            weight_decay=5e-4,
        ),
        "quick": dict(
            _common,
            student="resnet8_w16",
            teacher_arch="resnet8",
            teacher_epochs=6,
            teacher_lr=0.1,
            teacher_data_fraction=1.0,
            epochs=4,
            batch_size=128,
            lr=0.1,
            data_fraction=1.0,
            schedule="onecycle",
            weight_decay=5e-4,
            nesterov=True,
        ),
        "paper": dict(
            _common,
            student="resnet8x4",
            teacher_arch="resnet32x4",
            teacher_epochs=240,
            teacher_lr=0.05,
            teacher_data_fraction=1.0,
            epochs=240,
            batch_size=64,
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="multistep",
            lr_milestones="150,180,210",
            lr_gamma=0.1,
            val_fraction=0.1,
        ),
    }

    def read(self, cfg):
        return cifar100_arrays(cfg)

    def load(self, cfg) -> TaskData:
        return by_row(super().load(cfg))

    def teacher_tables(self, cfg, data: TaskData, cache) -> TeacherTables:
        from benchmark.teachers.image import load_checkpoint_teacher, trained_teacher

        if cfg.teacher not in IMAGE_TEACHERS:
            raise UsageError(f"{self.name} needs an image teacher ({', '.join(IMAGE_TEACHERS)}), not '{cfg.teacher}'")
        if cfg.teacher_logits != "own":
            raise UsageError(f"{self.name}: teacher_logits must be 'own' (the image teacher's classifier)")
        params = {"teacher_in_loop": True, "teacher_arch": cfg.teacher_arch}
        if cfg.teacher_control == "random":  # the negative control: the same architecture, untrained
            teacher, tid = random_teacher(cfg.teacher_arch, cfg.teacher_seed, data.num_classes)
        elif cfg.teacher == "img-trained":
            if cfg.teacher_arch not in STUDENTS and not cfg.teacher_arch.startswith("timm:"):
                raise UsageError(
                    f"img-trained trains a registry architecture ({', '.join(STUDENTS.names())}) or a "
                    f"timm:<model>; "
                    f"'{cfg.teacher_arch}' can serve through img-checkpoint"
                )
            tdata = (
                data
                if cfg.teacher_data_fraction == cfg.data_fraction
                else self.load(replace(cfg, data_fraction=cfg.teacher_data_fraction))
            )
            teacher, tid, info = trained_teacher(cfg, self, tdata, cache)
            params.update(
                {
                    "teacher_train_rows": len(tdata.train.y),
                    "teacher_train_time_s": info["train_time_s"],
                    "teacher_trained_on": f"{info['device']}, {info['threads']} threads",
                    "teacher_trained_by": info.get("code_version", "not recorded (cached before teachers saved it)"),
                }
            )
        else:
            teacher, tid = load_checkpoint_teacher(cfg.teacher_checkpoint, cfg.teacher_arch, data.num_classes)
        emb, logits = self._teacher_outputs(teacher, cfg, data)
        n_tr, n_val = len(data.train.y), len(data.val.y)

        def acc(rows, y):
            return round((logits[rows].argmax(1) == y).float().mean().item() * 100, 2)

        params.update(
            {
                "teacher_id": tid,
                "teacher_cache_key": tid.rsplit("/", 1)[-1],
                "teacher_train_acc": acc(slice(0, n_tr), data.train.y),
                "teacher_val_acc": acc(slice(n_tr, n_tr + n_val), data.val.y),
                "teacher_test_acc": acc(slice(n_tr + n_val, None), data.test.y),
                "teacher_norm_mean": round(emb.norm(dim=-1).mean().item(), 4),
            }
        )
        shapes = teacher.map_shapes(self.augment(data.train.x[:1], None, False, cfg))
        params["teacher_map_shapes"] = ", ".join("x".join(map(str, s)) for s in shapes) or "none"
        return TeacherTables(
            tid, params["teacher_cache_key"], emb.unsqueeze(1), logits.unsqueeze(1), params, live=teacher, map_shapes=shapes
        )

    def _teacher_outputs(self, teacher, cfg, data) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's features and logits on every un-augmented row (train, validation, test), CPU."""
        embs, logits = [], []
        with torch.no_grad():
            for sp in (data.train, data.val, data.test):
                for i in range(0, len(sp.y), cfg.eval_batch_size):
                    e, z, _ = teacher(self.augment(sp.x[i : i + cfg.eval_batch_size], None, False, cfg))
                    embs.append(e.float()), logits.append(z.float())
        return torch.cat(embs), torch.cat(logits)

    def evaluate(self, ev, split):
        data = ev.data
        sp = getattr(data, split)
        logits, emb = self._predict(ev, sp.x)
        metrics = {f"{split}_top1": (logits.argmax(1) == sp.y).float().mean().item() * 100}
        if split != "test":
            return metrics, {}
        groups = (sp.y if data.class_groups is None else data.class_groups[sp.y]).numpy()
        metrics["match_acc"], arrays = match_per_sample_teacher(ev, sp, emb, groups)
        return metrics, arrays
