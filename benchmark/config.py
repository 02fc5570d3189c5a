"""The resolved configuration of one run: profile values, then CLI flags, then --set overrides."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from benchmark.registry import UsageError


@dataclass
class RunConfig:
    task: str = "cifar100"
    profile: str = "smoke"
    student: str = "resnet8_w16"
    teacher: str = "minilm"
    data_dir: str = ""
    device: str = "auto"
    seed: int = 0
    # optimisation
    epochs: int = 1
    batch_size: int = 64
    optimizer: str = "sgd"            # sgd | adam
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "onecycle"        # step | cosine | onecycle (linear warm-up then cosine)
    lr_step_epochs: int = 30
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    # data
    image_size: int = 32              # 224: the paper's Resize(256) -> RandomCrop(224) pipeline
    val_fraction: float = 0.1         # stratified, seeded validation split carved from train (speaker: share of speakers)
    split_seed: int = 0
    data_fraction: float = 1.0        # share of each class kept for training (Fig. 9)
    test_limit: int = 0               # 0: the whole test set; else a stratified subset (smoke only)
    eval_batch_size: int = 500
    # teacher-side options recorded with every run
    teacher_logits: str = "zeroshot"  # zeroshot | probe (AMBIG-11)
    zeroshot_scale: float = 100.0
    match_proto: str = "head_then_mean"  # head_then_mean | mean_then_head (Table 8 prototypes)
    tsne_samples: int = 200
    # speaker task (ignored elsewhere)
    teacher_checkpoint: str = ""      # IR-50 checkpoint for --teacher ir50
    noise_dir: str = ""               # noise folder (MUSAN 'noise' or any wav/flac); default <data-dir>/noise
    train_seconds: float = 2.0        # random training crop
    eval_seconds: float = 4.0         # each of the eval_crops test crops
    eval_crops: int = 10
    noise_snrs: str = "15,10,5"       # delta dB of the noisy-test EERs
    match_triplets: int = 10000       # per direction (A-F, F-A) and setting (O, H)
    val_utts_per_speaker: int = 8     # utterances of each held-out validation speaker
    val_trials_per_speaker: int = 10  # target trials per held-out speaker (and as many non-target trials)
    # operations
    stop_after_epochs: int = 0        # stop early leaving a checkpoint (simulates an interruption)
    num_threads: int = 0              # 0: torch default

    def as_params(self) -> dict[str, Any]:
        return asdict(self)


# Fields that do not change what a run computes (excluded from the checkpoint key).
OPERATIONAL = ("stop_after_epochs", "num_threads", "device")
# Fields that do not define a configuration when runs are compared or a study is named: the operational
# ones, the data path (the same data may sit elsewhere on another machine) and the seed.
NOT_DEFINING = (*OPERATIONAL, "data_dir", "seed")


def defining_fields() -> list[str]:
    return [f.name for f in fields(RunConfig) if f.name not in NOT_DEFINING]


CHOICES = {"optimizer": ("sgd", "adam"), "schedule": ("step", "cosine", "onecycle"), "device": ("auto", "cpu", "cuda"),
           "teacher_logits": ("zeroshot", "probe"), "match_proto": ("head_then_mean", "mean_then_head")}


def convert(key: str, raw: str, typ: Any) -> Any:
    """Convert a --set string to the field's type, with an actionable error."""
    t = typ if isinstance(typ, type) else {"int": int, "float": float, "bool": bool, "str": str}.get(str(typ), str)
    try:
        if t is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return t(raw)
    except ValueError:
        raise UsageError(f"--set {key}={raw}: expected a {t.__name__}") from None


def config_fields() -> dict[str, Any]:
    return {f.name: f.type for f in fields(RunConfig)}


def build_config(task, profile: str, flags: dict[str, Any], sets: dict[str, str]) -> RunConfig:
    if profile not in task.profiles:
        raise UsageError(f"unknown profile '{profile}' for task {task.name}; known: {', '.join(task.profiles)}")
    values = dict(task.profiles[profile])
    values.update({k: v for k, v in flags.items() if v is not None})
    types = config_fields()
    for k, raw in sets.items():
        values[k] = convert(k, raw, types[k])
    cfg = replace(RunConfig(), task=task.name, profile=profile, **values)
    for k, allowed in CHOICES.items():
        if getattr(cfg, k) not in allowed:
            raise UsageError(f"{k}={getattr(cfg, k)!r} is not valid; choose one of {', '.join(allowed)}")
    if not 0 < cfg.data_fraction <= 1 or not 0 < cfg.val_fraction < 1:
        raise UsageError("data_fraction must be in (0, 1] and val_fraction in (0, 1)")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise UsageError("epochs must be >= 1 and batch_size >= 2")
    return cfg
