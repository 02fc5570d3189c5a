"""How each paper table maps onto logged runs: task, row keys -> run params, our metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TableSpec:
    id: str
    title: str
    csv: str
    task: str
    paper_cols: list[str]  # the paper's value columns shown as they are
    ours: list[tuple[str, str]]  # (column label, our metric name)
    row_params: dict[str, tuple[str, float]] = field(default_factory=dict)  # paper column -> (run param, scale)
    method_alias: dict[str, str] = field(default_factory=dict)
    paired: str | None = None  # metric for the paired difference against the baseline
    lower_is_better: bool = False
    study: bool = False  # an ablation: shows the runs of the `--paper <id>` study only


SPEAKER_EER = [("EER-O %", "eer_o"), ("minDCF-O", "mindcf_o")]
TABLES = [
    TableSpec(
        "table01",
        "Table 1: speaker verification, VoxCeleb1 O/H and noisy O (EER %, minDCF)",
        "table01_speaker_vox1_kd_comparison.csv",
        "voxceleb",
        ["eer_o_pct", "mindcf_o", "eer_h_pct", "eer_snr15_pct", "eer_snr10_pct", "eer_snr5_pct"],
        SPEAKER_EER
        + [("EER-H %", "eer_h"), ("EER 15dB %", "eer_noise15"), ("EER 10dB %", "eer_noise10"), ("EER 5dB %", "eer_noise5")],
        paired="eer_o",
        lower_is_better=True,
    ),
    TableSpec(
        "table02",
        "Table 2: teacher strength and data volume (speaker)",
        "table02_speaker_teacher_and_data_volume.csv",
        "voxceleb",
        ["teacher_eer_pct", "student_eer_pct", "student_mindcf"],
        SPEAKER_EER,
        row_params={"data_fraction_pct": ("data_fraction", 0.01), "teacher": ("teacher_paper_name", 1)},
        lower_is_better=True,
    ),
    TableSpec(
        "table03",
        "Table 3: cross-dataset test on CN-Celeb",
        "table03_speaker_cross_dataset_cnceleb.csv",
        "voxceleb",
        ["eer_pct", "mindcf"],
        [("EER %", "eer_cnceleb"), ("minDCF", "mindcf_cnceleb")],
        method_alias={"ours_unspecified": "ours_feature"},
        lower_is_better=True,
    ),
    TableSpec(
        "table04",
        "Table 4: cross-modal matching, audio-face (A-F) and face-audio (F-A), O and H (%)",
        "table04_speaker_cross_modal_matching.csv",
        "voxceleb",
        ["acc_af_o_pct", "acc_fa_o_pct", "acc_af_h_pct", "acc_fa_h_pct"],
        [("A-F O", "match_af_o"), ("F-A O", "match_fa_o"), ("A-F H", "match_af_h"), ("F-A H", "match_fa_h")],
    ),
    TableSpec(
        "table05",
        "Table 5: ablation of alpha (speaker)",
        "table05_speaker_ablation_alpha.csv",
        "voxceleb",
        ["eer_pct", "mindcf"],
        SPEAKER_EER,
        row_params={"alpha": ("hp.alpha", 1)},
        lower_is_better=True,
        study=True,
    ),
    TableSpec(
        "table06",
        "Table 6: ablation of the cosine margin (speaker)",
        "table06_speaker_ablation_margin.csv",
        "voxceleb",
        ["eer_pct", "mindcf"],
        SPEAKER_EER,
        row_params={"margin_angle_deg": ("hp.margin_deg", 1)},
        lower_is_better=True,
        study=True,
    ),
    TableSpec(
        "table07",
        "Table 7: CIFAR-100 top-1 accuracy (%)",
        "table07_cifar100_accuracy.csv",
        "cifar100",
        ["acc_resnet18_pct", "acc_resnet34_pct"],
        [("top-1 (last ep)", "test_top1"), ("top-1 (best-val ep)", "test_top1_at_best_val")],
        paired="test_top1",
    ),
    TableSpec(
        "table08",
        "Table 8: CIFAR-100 cross-modal matching accuracy (%)",
        "table08_cifar100_cross_modal_matching_r34.csv",
        "cifar100",
        ["match_acc_pct"],
        [("matching (80-template prototypes)", "match_acc"), ("matching ('a photo of a {c}.')", "match_acc_single")],
    ),
    TableSpec(
        "table09",
        "Table 9: Tiny-ImageNet top-1 accuracy (%; the paper column is its ResNet34, ours the student named in each "
        "column block)",
        "table09_tinyimagenet_accuracy_r34.csv",
        "tinyimagenet",
        ["acc_pct"],
        [("top-1", "test_top1")],
        paired="test_top1",
    ),
    TableSpec(
        "kd_cifar100",
        "Same-modality control: CIFAR-100, image teacher -> image student (published: resnet32x4 -> "
        "resnet8x4, 240 epochs; RepDistiller, mdistiller and ICKD READMEs)",
        "kd_cifar100_resnet32x4_resnet8x4.csv",
        "cifar100-kd",
        ["acc_pct"],
        [("top-1 (last ep)", "test_top1"), ("top-1 (best-val ep)", "test_top1_at_best_val")],
        paired="test_top1",
    ),
    TableSpec(
        "table10",
        "Table 10: ablation of alpha, CIFAR-100 (%)",
        "table10_cifar100_ablation_alpha_r34.csv",
        "cifar100",
        ["acc_pct"],
        [("top-1", "test_top1")],
        row_params={"alpha": ("hp.alpha", 1)},
        study=True,
    ),
    TableSpec(
        "table11",
        "Table 11: ablation of beta, CIFAR-100 (%)",
        "table11_cifar100_ablation_beta_r34.csv",
        "cifar100",
        ["acc_pct"],
        [("top-1", "test_top1")],
        row_params={"beta": ("hp.beta", 1)},
        study=True,
    ),
    TableSpec(
        "table12",
        "Table 12: ablation of the margin r^2, CIFAR-100 (%)",
        "table12_cifar100_ablation_margin.csv",
        "cifar100",
        ["acc_resnet18_pct", "acc_resnet34_pct"],
        [("top-1", "test_top1")],
        row_params={"margin_value": ("hp.margin", 1)},
        study=True,
    ),
]

# Ablations are read from the runs of the method named in the paper table; hyperparameter columns must match.
AMBIGUITY_PARAMS = [
    "hp.feat_dist",
    "hp.margin_mode",
    "hp.head_layers",
    "hp.head_hidden",
    "hp.classifier_ce",
    "hp.with_feature_loss",
    "hp.shared_classifier",
    "hp.quality_source",
    "hp.quality_sigma",
    "hp.quality_clip",
    "hp.ickd_mode",
    "hp.hint",
    "hp.sp_input",
    "hp.clip_targets",
    "teacher_logits",
    "match_proto",
    "match_space",
]
