"""What the teacher feeds a training step (benchmark/teacher_feed.py) under the negative controls: shuffled (a
permutation of the teacher's outputs fixed per seed; a live teacher sees another sample's image), class-mean
(each class's mean teacher outputs) and label smoothing (no teacher, matched to its mean target entropy)."""

import pytest
import torch

from conftest import run_context


def _teacher_logits_of_one_epoch(ctx):
    """(sample index, the teacher logits KD was given for it) over one epoch of training steps."""
    seen, terms = {}, ctx.method.terms

    def spy(s, t, y, **kw):
        seen.setdefault("logits", []).append(t.logits.detach().clone())
        return terms(s, t, y, **kw)

    ctx.method.terms = spy
    order = []
    for idx in ctx.task.epoch_batches(ctx.data.train, ctx.cfg.batch_size, ctx.gen):
        order.append(idx)
        ctx.train_step(idx)
    return torch.cat(order), torch.cat(seen["logits"])


def test_a_shuffled_table_teacher_gives_a_permutation_of_its_outputs_fixed_per_seed(tmp_path):
    """synthetic (a cached table teacher): under teacher_control=shuffled each training sample i is given the
    teacher's logits of sample shuffle[i]; the shuffle is a permutation of the training set, the same for a
    seed and another for another seed; the real teacher's outputs for evaluation are untouched."""
    ctx = run_context("synthetic", "smoke", "shuffled", cache=tmp_path / "c")
    n = len(ctx.data.train.y)
    assert sorted(ctx.feed.shuffle.tolist()) == list(range(n))
    assert (ctx.feed.shuffle != torch.arange(n)).float().mean() > 0.9
    idx, given = _teacher_logits_of_one_epoch(ctx)
    table = ctx.tables.logits[:, 0]
    torch.testing.assert_close(given, table[ctx.data.train.key[ctx.feed.shuffle[idx]]])
    assert not torch.allclose(given, table[ctx.data.train.key[idx]])
    again = run_context("synthetic", "smoke", "shuffled", cache=tmp_path / "c")
    other = run_context("synthetic", "smoke", "shuffled", cache=tmp_path / "c", seed=1)
    assert torch.equal(again.feed.shuffle, ctx.feed.shuffle) and not torch.equal(other.feed.shuffle[:n], ctx.feed.shuffle)
    real = run_context("synthetic", "smoke", "none", cache=tmp_path / "c")
    assert real.feed.shuffle is None and torch.equal(real.tables.logits, ctx.tables.logits)


def test_the_class_mean_control_gives_every_sample_its_class_mean_teacher_outputs(tmp_path):
    """synthetic (a table teacher): under teacher_control=class_mean sample i is given the mean of the teacher's
    logits over the training samples of its class (hand-computed here from the table), the same for every
    sample of a class; the student's data stream is the real-teacher run's."""
    ctx = run_context("synthetic", "smoke", "class_mean", cache=tmp_path / "c")
    train = ctx.data.train
    rows = ctx.tables.logits[train.key].mean(1)
    want = torch.stack([rows[train.y == c].mean(0) for c in range(ctx.data.num_classes)])
    idx, given = _teacher_logits_of_one_epoch(ctx)
    torch.testing.assert_close(given, want[train.y[idx]])
    real = run_context("synthetic", "smoke", "none", cache=tmp_path / "c")
    assert torch.equal(torch.cat(real.task.epoch_batches(real.data.train, real.cfg.batch_size, real.gen)), idx)
    assert real.feed.class_targets is None and torch.equal(real.tables.logits, ctx.tables.logits)


def test_the_label_smoothing_control_matches_the_teachers_mean_target_entropy(tmp_path):
    """teacher_control=label_smoothing (no teacher): KD at T = 4 is given, for a sample of class y, logits whose
    softmax at T is the smoothed one-hot (1 - eps) onehot(y) + eps / K, with eps chosen so that its entropy is
    the teacher's mean entropy of softmax(z / T) over the training rows (computed here by hand)."""
    from benchmark.registry import UsageError

    ctx = run_context("synthetic", "smoke", "label_smoothing", cache=tmp_path / "c")
    train, k, t = ctx.data.train, ctx.data.num_classes, 4.0
    probs = torch.softmax(ctx.tables.logits[train.key].double() / t, -1)
    want_h = float(-(probs * probs.log()).sum(-1).mean())
    eps = ctx.feed.control_params["smoothing_eps"]
    assert 0 < eps < (k - 1) / k and ctx.feed.control_params["teacher_mean_target_entropy"] == pytest.approx(want_h, rel=1e-5)
    idx, given = _teacher_logits_of_one_epoch(ctx)
    target = torch.softmax(given.double() / t, -1)
    smoothed = torch.full((len(idx), k), eps / k, dtype=torch.float64)
    smoothed[torch.arange(len(idx)), train.y[idx]] += 1 - eps
    torch.testing.assert_close(target, smoothed, rtol=1e-5, atol=1e-6)
    assert float(-(target * target.log()).sum(-1).mean()) == pytest.approx(want_h, rel=1e-4)
    with pytest.raises(UsageError, match="replaces the teacher's logits only; method 'pkt' reads its embedding"):
        run_context("synthetic", "smoke", "label_smoothing", cache=tmp_path / "c", method="pkt")


def test_the_class_mean_control_refuses_a_method_reading_stage_maps(tmp_path, cifar_dir):
    from benchmark.registry import UsageError

    with pytest.raises(UsageError, match="class_mean .* reads the teacher's stage maps"):
        run_context(
            "cifar100-kd",
            "smoke",
            "class_mean",
            str(cifar_dir),
            cache=tmp_path / "c",
            sets={"teacher_data_fraction": "0.02"},
            method="at",
        )


def test_a_shuffled_live_teacher_sees_another_samples_image_and_the_student_its_own(tmp_path, cifar_dir):
    """cifar100-kd (the image teacher runs in the loop): the teacher's input for sample i is sample
    shuffle[i]'s image, augmented from a generator of its own; the student's batch is the one the
    real-teacher run of that seed sees (the data stream is unchanged)."""
    sets = {"teacher_data_fraction": "0.02"}
    ctx = run_context("cifar100-kd", "smoke", "shuffled", str(cifar_dir), cache=tmp_path / "c", sets=sets)
    real = run_context("cifar100-kd", "smoke", "none", str(cifar_dir), cache=tmp_path / "c", sets=sets)
    seen = {}
    for c, name in ((ctx, "shuffled"), (real, "real")):
        live, fwd = c.tables.live, c.forward
        c.tables.live = lambda x, live=live, name=name: seen.setdefault(name + "_teacher", x) is None or live(x)
        c.forward = lambda x, fwd=fwd, name=name: seen.setdefault(name + "_student", x) is None or fwd(x)
    idx = ctx.task.epoch_batches(ctx.data.train, ctx.cfg.batch_size, ctx.gen)[0]
    g = torch.Generator()
    g.set_state(ctx.feed.shuffle_gen.get_state())
    want = ctx.task.augment(ctx.task.train_inputs(ctx.train_split, ctx.feed.shuffle[idx], g, ctx.cfg), g, True, ctx.cfg)
    assert torch.equal(real.task.epoch_batches(real.data.train, real.cfg.batch_size, real.gen)[0], idx)
    for c in (ctx, real):
        c.train_step(idx)
    assert torch.equal(seen["shuffled_teacher"], want)
    assert torch.equal(seen["shuffled_student"], seen["real_student"])
    assert torch.equal(seen["real_teacher"], seen["real_student"])
    assert not torch.equal(seen["shuffled_teacher"], seen["shuffled_student"])
