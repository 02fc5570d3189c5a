"""The optimiser and the learning-rate schedule of a run (RunConfig's optimizer, lr, schedule fields)."""

from __future__ import annotations

import math

import torch

from benchmark.config import RunConfig
from benchmark.registry import UsageError


def build_scheduler(opt, cfg: RunConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        if total < 2:
            raise UsageError(
                f"onecycle needs at least 2 optimiser steps; this run has {total} (more data, more "
                "epochs or a smaller batch_size)"
            )
        # a warm-up of a quarter of the steps, but at least 1.5 (torch divides by the phase's length)
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=max(0.25, 1.5 / total), cycle_momentum=cfg.optimizer == "sgd"
        )
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if cfg.schedule == "multistep":
            milestones = [int(m) for m in cfg.lr_milestones.split(",") if m.strip()]
            return cfg.lr_gamma ** sum(step // steps_per_epoch >= m for m in milestones)
        return cfg.lr_gamma ** ((step // steps_per_epoch) // cfg.lr_step_epochs)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def build_optimizer(params, cfg: RunConfig):
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
