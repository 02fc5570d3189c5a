import torch

from benchmark.resolve import build_config
from tasks.cifar100 import Cifar100
from tasks.image import random_crop


def test_split_is_stratified_seeded_and_fraction_keeps_each_class(cifar_dir):
    task = Cifar100()
    cfg = build_config(task, "quick", {"data_dir": str(cifar_dir)}, {"data_fraction": "0.25"})
    d = task.load(cfg)
    assert d.num_classes == 100 and d.class_names[0] == "apple" and d.class_names[1] == "aquarium fish"
    counts = torch.bincount(d.train.y, minlength=100)
    assert counts.min() >= 112 and counts.max() <= 113  # 25% of the 450 left after the 10% validation split
    assert (torch.bincount(d.val.y, minlength=100) == 50).all() and len(d.test.y) == 10000
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape[1:] == (3, 32, 32)
    again = task.load(cfg)
    assert torch.equal(again.val.y, d.val.y) and torch.equal(again.train.x[:50], d.train.x[:50])


def test_batched_random_crop_matches_per_image_crop():
    g = torch.Generator().manual_seed(3)
    x = torch.arange(2 * 3 * 10 * 10).reshape(2, 3, 10, 10)
    out = random_crop(x, 6, g)
    g = torch.Generator().manual_seed(3)
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    for i in range(2):
        assert torch.equal(out[i], x[i, :, oy[i] : oy[i] + 6, ox[i] : ox[i] + 6])


def test_augment_paper_resolution_and_eval_is_deterministic(cifar_dir):
    task = Cifar100()
    cfg = build_config(task, "paper", {"data_dir": str(cifar_dir)}, {})
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    tr = task.augment(x, torch.Generator().manual_seed(0), True, cfg)
    ev1, ev2 = task.augment(x, None, False, cfg), task.augment(x, None, False, cfg)
    assert tr.shape == (2, 3, 224, 224) and torch.equal(ev1, ev2) and ev1.shape == (2, 3, 224, 224)
