"""DKD, decoupled knowledge distillation (Zhao et al., CVPR 2022; defaults: mdistiller's CIFAR-100 config).

With p^T = softmax(z/T), b = (p_y, 1 - p_y) the binary target/non-target split and p-hat the distribution
over the non-target classes alone, per sample

    TCKD = T^2 KL(b^teacher || b^student),   NCKD = T^2 KL(p-hat^teacher || p-hat^student)
    L_DKD = w(step) * (alpha * TCKD + beta * NCKD)

KD's KL term is TCKD + (1 - p^teacher_y) NCKD (the DKD paper's decomposition; tested). w ramps linearly from
0 to 1: mdistiller warms up over 20 of 240 epochs by epoch; here over the same share of the run (1/12 of
its optimiser steps, `dkd_warmup_fraction`), by step, so that a 2-epoch profile still gets a warm-up.
Teacher logits as for `kd` on each task; cross-entropy weight 1 (mdistiller's CE_WEIGHT).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.method import Hparams, Method, Term, UsageError, bounded, register


def dkd_terms(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD), each times tau^2."""
    gt = F.one_hot(y, z_s.shape[1]).bool()

    # binary (target, non-target) distributions in log space: log(1 - p) as a log-sum-exp over the non-target
    # classes, so a teacher (or student) sure of the target gives 0 * log 0 = 0, never nan (mdistiller: log(0))
    def binary(z):
        logp = F.log_softmax(z / tau, dim=1)
        return torch.stack([logp[gt], torch.logsumexp(logp.masked_fill(gt, float("-inf")), dim=1)], 1)

    lb_s, lb_t = binary(z_s), binary(z_t)
    b_t = lb_t.exp()
    tckd = (b_t * (lb_t.masked_fill(b_t == 0, 0.0) - lb_s)).sum(1)
    # non-target distributions: the target logit masked out (mdistiller subtracts 1000; -inf is exact)
    log_q_s = F.log_softmax((z_s / tau).masked_fill(gt, float("-inf")), dim=1)
    log_q_t = F.log_softmax((z_t / tau).masked_fill(gt, float("-inf")), dim=1)
    q_t = log_q_t.exp()
    nckd = (q_t * (log_q_t - log_q_s)).masked_fill(gt, 0.0).sum(1)
    return tckd * tau * tau, nckd * tau * tau


@dataclass
class DKDHparams(Hparams):
    ce_weight: float = bounded(1.0, 0, None)
    dkd_alpha: float = bounded(1.0, 0, None)  # TCKD weight
    dkd_beta: float = bounded(8.0, 0, None)  # NCKD weight
    temperature: float = bounded(4.0, 0, None, lo_open=True)
    dkd_warmup_fraction: float = bounded(20 / 240, 0, 1)  # share of the run's steps over which w ramps 0 -> 1


@register("dkd", "decoupled KD: target (alpha 1) and non-target (beta 8) KL terms on teacher logits, T=4, warm-up")
class DKD(Method):
    teacher_reads = frozenset({"logits"})
    Hparams = DKDHparams
    search_space = {"dkd_beta": ("float", 1.0, 10.0), "temperature": ("float", 1.0, 8.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.warmup_steps = round(hp.dkd_warmup_fraction * dims.total_steps)
        self.step = 0  # optimiser steps taken; checkpointed through get_extra_state

    def warm(self) -> float:
        return 1.0 if self.warmup_steps == 0 else min((self.step + 1) / self.warmup_steps, 1.0)

    def terms(self, s, t, y):
        if t.logits is None:
            raise UsageError("method 'dkd' needs teacher logits; this task/teacher provides none")
        tckd, nckd = dkd_terms(s.logits, t.logits, y, self.hp.temperature)
        w = self.warm()
        return {"dkd_tckd": Term(tckd, w * self.hp.dkd_alpha), "dkd_nckd": Term(nckd, w * self.hp.dkd_beta)}

    def post_step(self) -> None:
        self.step += 1

    def get_extra_state(self):
        return {"step": self.step}

    def set_extra_state(self, state) -> None:
        self.step = int(state["step"])

    def run_params(self):
        return {"dkd_warmup_steps": self.warmup_steps}
