"""KD (Hinton et al. 2015): tau^2 * KL(p_T^tau || p_S^tau), batch mean. Defaults: RepDistiller/mdistiller CIFAR."""

from dataclasses import dataclass

import torch.nn.functional as F

from benchmark.method import Hparams, Method, Term, UsageError, bounded, register


@dataclass
class KDHparams(Hparams):
    ce_weight: float = bounded(0.1, 0, None)
    kd_weight: float = bounded(0.9, 0, None)
    temperature: float = bounded(4.0, 0, None, lo_open=True)


@register("kd", "Hinton KD on teacher logits (zero-shot or linear-probe teacher logits, see the task), T=4, 0.1/0.9")
class KD(Method):
    teacher_reads = frozenset({"logits"})
    Hparams = KDHparams
    search_space = {"temperature": ("float", 1.0, 8.0), "kd_weight": ("float", 0.1, 1.0)}

    def terms(self, s, t, y):
        if t.logits is None:
            raise UsageError("method 'kd' needs teacher logits; this task/teacher provides none")
        tau = self.hp.temperature
        log_ps = F.log_softmax(s.logits / tau, dim=1)
        p_t = F.softmax(t.logits / tau, dim=1)
        kl = F.kl_div(log_ps, p_t, reduction="none").sum(1) * tau * tau
        return {"kd": Term(kl, self.hp.kd_weight)}
