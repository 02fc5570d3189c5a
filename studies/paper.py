"""The paper's ablations as named grid studies (Tables 5, 6, 10, 11, 12), each on its task and student."""

from __future__ import annotations

PAPER_STUDIES: dict[str, dict] = {
    "table5": {
        "task": "voxceleb",
        "method": "ours_feature",
        "grid": {"alpha": [0.2, 0.4, 0.5, 0.6, 0.8]},
        "paper_student": "resnet34_asp",
        "what": "speaker: alpha of the projection head",
    },
    "table6": {
        "task": "voxceleb",
        "method": "ours_feature",
        "grid": {"margin_deg": [0, 10, 20, 30, 40, 50]},
        "paper_student": "resnet34_asp",
        "what": "speaker: cosine margin angle",
    },
    "table10": {
        "task": "cifar100",
        "method": "ours_feature",
        "grid": {"alpha": [0.2, 0.4, 0.5, 0.6, 0.8]},
        "paper_student": "resnet34",
        "what": "CIFAR-100 R34: alpha",
        "fixed": {"margin": 0.04},
    },
    "table11": {
        "task": "cifar100",
        "method": "ours_classifier",
        "grid": {"beta": [0.0, 1.0, 2.0]},
        "paper_student": "resnet34",
        "what": "CIFAR-100 R34: beta of the logit term",
    },
    "table12": {
        "task": "cifar100",
        "method": "ours_feature",
        "grid": {"margin": [0.0, 0.01, 0.04, 0.09, 0.16]},
        "paper_student": "resnet18",
        "what": "CIFAR-100: squared-radius margin r^2 (R18; R34 with --student)",
    },
}
