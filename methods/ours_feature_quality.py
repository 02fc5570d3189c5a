from dataclasses import dataclass

from benchmark.method import Term, bounded, choice, register
from methods._projection import OursBase, OursHparams
from methods._quality import QualityWeights


@dataclass
class QualityHparams(OursHparams):
    w_base: float = bounded(1.0, 0, None)
    quality_h: float = bounded(1 / 3, 0, None, lo_open=True)
    quality_source: str = choice("both_mean", "teacher", "student", "both_min",
                                 help="whose norm is Q_i (A7 in methods/README.md)")
    quality_sigma: str = choice("std", "variance", help="sigma_q (A8 in methods/README.md)")
    quality_momentum: float = bounded(0.01, 0, 1)
    quality_clip: bool = True


@register("ours_feature_quality", "proposed: margin feature loss weighted per sample by feature-norm quality")
class OursFeatureQuality(OursBase):
    teacher_reads = frozenset({"embedding"})
    Hparams = QualityHparams
    search_space = {"alpha": ("float", 0.0, 1.0), "margin": ("float", 0.0, 0.25), "quality_h": ("float", 0.1, 1.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.quality = QualityWeights(hp.quality_source, hp.w_base, hp.quality_h, hp.quality_momentum,
                                      hp.quality_sigma, hp.quality_clip)

    def terms(self, s, t, y):
        w = self.quality(t.embedding, s.embedding)
        return {"feature": Term(w * self.feature_loss(s, self.head(t.embedding)), self.hp.feature_weight)}
