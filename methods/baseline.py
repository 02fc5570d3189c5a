from benchmark.method import Method, register


@register("baseline", "no distillation: the task loss only (the paper's 'w/o dist.' rows)")
class Baseline(Method):
    def terms(self, s, t, y):
        return {}
