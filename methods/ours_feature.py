from benchmark.method import Term, register
from methods._projection import OursBase


@register("ours_feature", "proposed: projection head + soft-constrained (margin) feature-level loss")
class OursFeature(OursBase):
    teacher_reads = frozenset({"embedding"})
    def terms(self, s, t, y):
        return {"feature": Term(self.feature_loss(s, self.head(t.embedding)), self.hp.feature_weight)}
