from benchmark.method import Method, register


@register("baseline", "no distillation: the task loss only (the paper's 'w/o dist.' rows)")
class Baseline(Method):
    teacher_reads = frozenset()  # reads nothing of the teacher: the trainer runs no live teacher for it

    def terms(self, s, t, y):
        return {}
