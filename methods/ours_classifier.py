from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.method import Term, bounded, choice, l2n, register
from methods._projection import OursBase, OursHparams


@dataclass
class ClassifierHparams(OursHparams):
    beta: float = bounded(1.0, 0, None)                       # weight of the logit l2 term (1 CIFAR, 0 speaker; Table 11)
    classifier_ce: str = choice("add", "replace",
                                help="shared-classifier CE adds to the task CE, or replaces it (A4 in methods/README.md)")
    with_feature_loss: bool = False          # A5 in methods/README.md: also add the margin feature loss
    shared_classifier: str = choice("raw", "cosine", help="A6 in methods/README.md: raw W F, or cosine classifier with scale 10")


@register("ours_classifier", "proposed: projection head + shared-classifier CE on [F_S; F_T] + beta * logit MSE")
class OursClassifier(OursBase):
    teacher_reads = frozenset({"embedding"})
    Hparams = ClassifierHparams
    search_space = {"alpha": ("float", 0.0, 1.0), "beta": ("float", 0.0, 3.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        if hp.shared_classifier == "cosine":
            self.cos_scale = torch.nn.Parameter(torch.tensor(10.0))

    @property
    def ce_weight(self) -> float:
        return 0.0 if self.hp.classifier_ce == "replace" else self.hp.ce_weight

    def _classify(self, s, f: torch.Tensor) -> torch.Tensor:
        if self.hp.shared_classifier == "raw":
            return s.classifier(f.to(s.embedding.dtype))
        return self.cos_scale * l2n(f) @ l2n(s.classifier.weight).t()

    def terms(self, s, t, y):
        f_t = self.head(t.embedding)
        z_s, z_t = self._classify(s, s.embedding), self._classify(s, f_t)
        out = {
            # CE over the 2B rows [F_S; F_T] with labels [y; y]: each half carries weight 1/2
            "cls_ce_student": Term(F.cross_entropy(z_s, y, reduction="none"), 0.5),
            "cls_ce_teacher": Term(F.cross_entropy(z_t, y, reduction="none"), 0.5),
            "logit_mse": Term(((z_s - z_t) ** 2).mean(1), self.hp.beta),
        }
        if self.hp.with_feature_loss:
            out["feature"] = Term(self.feature_loss(s, f_t), self.hp.feature_weight)
        return out
