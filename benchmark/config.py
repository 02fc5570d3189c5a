"""The resolved configuration of one run: profile values, then CLI flags, then --set overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from benchmark.fields import bounded, choice


@dataclass
class RunConfig:
    task: str = "cifar100"
    profile: str = "smoke"
    student: str = "resnet8_w16"
    teacher: str = "minilm"
    data_dir: str = ""
    device: str = "auto"
    precision: str = choice("auto", "bf16", "fp32", help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16 also on CPU")
    seed: int = bounded(0, 0, None)
    # optimisation
    epochs: int = bounded(1, 1, None)
    batch_size: int = bounded(64, 2, None)
    optimizer: str = "sgd"  # sgd | adam
    lr: float = bounded(0.05, 0, None, lo_open=True)
    momentum: float = bounded(0.9, 0, 1)
    nesterov: bool = False
    weight_decay: float = bounded(5e-4, 0, None)
    schedule: str = "onecycle"  # step | multistep | cosine | onecycle (linear warm-up then cosine)
    lr_step_epochs: int = bounded(30, 1, None)
    lr_gamma: float = bounded(0.1, 0, None, lo_open=True)
    lr_milestones: str = "150,180,210"  # multistep: epochs at which lr is multiplied by lr_gamma (RepDistiller)
    warmup_epochs: float = bounded(0.0, 0, None)
    compile: bool = False  # torch.compile the student's forward (inductor; first steps compile)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (benchmark/distributed.py)
    # data
    image_size: int = bounded(32, 8, None)  # 224: the paper's Resize(256) -> RandomCrop(224) pipeline
    # stratified, seeded validation split carved from train (speaker: share of speakers)
    val_fraction: float = bounded(0.1, 0, 0.9, lo_open=True)
    split_seed: int = bounded(0, 0, None)
    data_fraction: float = bounded(1.0, 0, 1, lo_open=True)  # share of each class kept for training (Fig. 9)
    test_limit: int = bounded(0, 0, None)  # 0: the whole test set; else a stratified subset (smoke only)
    eval_batch_size: int = bounded(500, 1, None)
    # teacher-side options recorded with every run
    teacher_logits: str = "zeroshot"  # zeroshot | probe (A11 in methods/README.md) | own (a trained teacher's classifier)
    # a negative control in place of the real teacher (docs/methods.md): random = the same architecture untrained
    # (seeded by teacher_seed; cifar100-kd, synthetic); shuffled = each training sample gets another sample's
    # teacher outputs (a permutation of the training set fixed per run seed; every task)
    teacher_control: str = choice(
        "none",
        "random",
        "shuffled",
        "class_mean",
        "label_smoothing",
        help="none: the real "
        "teacher; random: the same teacher architecture untrained; shuffled: each training "
        "sample gets another sample's teacher outputs (a permutation fixed per seed); "
        "class_mean: each training sample gets its class's mean teacher output over the "
        "training set (label-level knowledge only); label_smoothing: no teacher, a smoothed "
        "one-hot target with the teacher's mean target entropy (logit-reading methods)",
    )
    zeroshot_scale: float = bounded(100.0, 0, None, lo_open=True)
    match_proto: str = "head_then_mean"  # head_then_mean | mean_then_head (Table 8 prototypes)
    tsne_samples: int = bounded(200, 0, None)
    # speaker task (ignored elsewhere)
    teacher_checkpoint: str = ""  # IR-50 checkpoint for --teacher ir50; an image teacher's for img-checkpoint
    # an image teacher the harness trains (cifar100-kd: --teacher img-trained) or loads (img-checkpoint)
    teacher_arch: str = "resnet8"  # a student architecture of the registry, tv:<torchvision model> or timm:<model>
    teacher_epochs: int = bounded(8, 1, None)
    teacher_lr: float = bounded(0.1, 0, None, lo_open=True)
    teacher_seed: int = bounded(0, 0, None)
    teacher_data_fraction: float = bounded(1.0, 0, 1, lo_open=True)  # share of each class the trained teacher learns from
    noise_dir: str = ""  # noise folder (MUSAN 'noise' or any wav/flac); default <data-dir>/noise
    train_seconds: float = bounded(2.0, 0, None, lo_open=True)  # random training crop
    eval_seconds: float = bounded(4.0, 0, None, lo_open=True)  # each of the eval_crops test crops
    eval_crops: int = bounded(10, 1, None)
    noise_snrs: str = "15,10,5"  # delta dB of the noisy-test EERs
    match_triplets: int = bounded(10000, 0, None)  # per direction (A-F, F-A) and setting (O, H)
    val_utts_per_speaker: int = bounded(8, 2, None)  # utterances of each held-out validation speaker
    val_trials_per_speaker: int = bounded(10, 1, None)  # target trials per held-out speaker (and as many non-target trials)
    # synthetic task (ignored elsewhere; tasks/synthetic_data.py states the generator)
    synth_gamma: float = bounded(0.5, 0, 1)  # share of the teacher's D decisive factors the student also sees
    synth_beta: float = bounded(0.25, 0, None)  # student-only decisive factors, as a share of D
    synth_factors: int = bounded(16, 1, None)  # D, the teacher modality's decisive factors
    synth_classes: int = bounded(20, 2, None)
    synth_nuisance: int = bounded(8, 0, None)  # nuisance dimensions per modality
    synth_separation: float = bounded(1.0, 0, None, lo_open=True)  # s, scale of the class means
    synth_noise: float = bounded(0.5, 0, None)  # sigma, observation noise on the student's input
    synth_teacher_noise: float = bounded(0.1, 0, None)  # sigma_T, on the teacher's input (a cleaner, privileged view)
    synth_per_class: str = "100,50,100"  # train,val,test samples per class
    synth_teacher_per_class: int = bounded(1000, 2, None)  # the teacher's own pretraining draw (never the student's rows)
    synth_data: str = choice(
        "per_seed",
        "fixed",
        help="per_seed: a new draw of the generator for every seed "
        "(intervals cover the data too); fixed: one draw from split_seed for all seeds",
    )
    # mfh task (ignored elsewhere; tasks/mfh_data.py states the generator)
    mfh_mode: str = choice(
        "increase_gamma", "increase_alpha", help="their experiment 1 (sliding overlap) or 2 (teacher-only features)"
    )
    mfh_dim: int = bounded(4, 0, None)  # increase_gamma: overlap 0..10; increase_alpha: teacher-only 0..40
    # operations
    stop_after_epochs: int = bounded(0, 0, None)  # stop early leaving a checkpoint (simulates an interruption)
    num_threads: int = bounded(0, 0, None)  # 0: torch default
    log_model: bool = False  # also log the trained student as an MLflow PyTorch model
    # a live teacher's vector outputs stored once per stream (teacher_stream.py)
    share_teacher: bool = True
    checkpoint_every_s: float = bounded(300.0, 0, None)  # also a checkpoint within an epoch this often (0: at epoch ends only)
    # the confirmatory protocol these runs belong to (NAME@SHA256-16), set only by `run --protocol FILE`
    # (benchmark/protocol.py): a setting of its own; the report checks it against the committed file
    protocol: str = ""
    # the fields a task declares itself (Task.Fields: a plugin task's own settings), resolved; read as attributes
    task_fields: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:  # only reached for names that are not RunConfig fields
        extra = self.__dict__.get("task_fields") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(f"run config has no field '{name}'")

    def as_params(self) -> dict[str, Any]:
        """The fields this run's task and teacher use (a Tiny-ImageNet run does not log the synthetic or the
        speaker fields), the task's own fields among them; every field still counts in the checkpoint key."""
        return {**{k: v for k, v in asdict(self).items() if k != "task_fields" and uses(self, k)}, **self.task_fields}


# Fields only some tasks or teachers read: (task names, teacher names); a field absent here is everyone's.
_SPEAKER = ("voxceleb",)
OWNERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **{
        f: (_SPEAKER, ())
        for f in (
            "noise_dir",
            "train_seconds",
            "eval_seconds",
            "eval_crops",
            "noise_snrs",
            "match_triplets",
            "val_utts_per_speaker",
            "val_trials_per_speaker",
        )
    },
    "teacher_checkpoint": ((), ("ir50", "img-checkpoint")),
    **{
        f: ((), ("img-trained", "img-checkpoint"))
        for f in ("teacher_arch", "teacher_epochs", "teacher_lr", "teacher_seed", "teacher_data_fraction")
    },
    **{f.name: (("synthetic",), ()) for f in fields(RunConfig) if f.name.startswith("synth_")},
    **{f.name: (("mfh",), ()) for f in fields(RunConfig) if f.name.startswith("mfh_")},
}


def uses(cfg: RunConfig, field_name: str) -> bool:
    """Does a run of cfg's task and teacher read this field?"""
    if field_name not in OWNERS:
        return True
    tasks, teachers = OWNERS[field_name]
    return cfg.task in tasks or cfg.teacher in teachers


# Fields that do not change what a run computes (excluded from the checkpoint key).
OPERATIONAL = ("stop_after_epochs", "num_threads", "device", "log_model", "share_teacher", "checkpoint_every_s")
# Fields that do not define a configuration when runs are compared or a study is named: the operational
# ones, the data path (the same data may sit elsewhere on another machine) and the seed.
NOT_DEFINING = (*OPERATIONAL, "data_dir", "seed")


def defining_fields() -> list[str]:
    """RunConfig's fields that define a setting, then every registered task's own fields (Task.Fields)."""
    own = [f.name for f in fields(RunConfig) if f.name not in NOT_DEFINING and f.name != "task_fields"]
    return own + [k for k in task_field_names() if k not in own]


def definition_hash(definition: dict[str, Any]) -> str:
    """A short hash of what defines a study or a table's queue (its name carries it: another definition,
    another name)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:8]


def task_field_types(task) -> dict[str, Any]:
    """The fields a task declares (its `Fields` dataclass): name -> type."""
    return {f.name: f.type for f in fields(task.Fields)} if getattr(task, "Fields", None) else {}


def task_field_names() -> list[str]:
    from benchmark.registry import TASKS

    return list(dict.fromkeys(k for e in TASKS.entries() for k in task_field_types(e.obj)))
