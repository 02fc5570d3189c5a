"""The teacher-type gap at equal student budget: the same methods with an image teacher (`cifar100-kd`) and a
text teacher (`cifar100`), from a report's runs.csv (one code version). The text teacher over class-name
prompts gives every image of a class the same target (label-level knowledge only); the image teacher gives
each image its own. Where the runs hold the image teacher's class-mean control (`teacher_control=class_mean`
on `cifar100-kd`: every image given its class's mean teacher outputs), two more columns split the image
teacher's gain: its label-level part (class-mean - baseline) against the text teacher's gain (class-mean -
text: near 0 when the text teacher's deficit is the per-sample part), and its per-sample part (image -
class-mean).

    python scripts/teacher_modality.py reports/example/evidence/runs.csv

Per method: its gain over the baseline with each teacher (paired by seed, the baseline of the same task), and
image - text (the method's test top-1 with the image teacher minus with the text teacher, paired by seed: the
same seed is the same student initialisation and data order on both tasks, whose baselines are the same
computation). Holm over the image - text comparisons of the table. A method whose form differs between the two
teachers (FitNet, SP and ICKD read the image teacher's stage maps but the text teacher's embedding: the
`params.<method>_form` of its runs) is named with both forms: its image - text difference is then also a
difference of loss, not of the teacher alone."""

from __future__ import annotations

import sys

import pandas as pd

from benchmark.stats import holm, paired_difference, per_seed

TEXT, IMAGE = "cifar100", "cifar100-kd"
METRIC = "metrics.test_top1"


def _named(runs: pd.DataFrame, method: str) -> str:
    """The method, with its form per teacher where its runs record different forms ('fitnet (maps on the image
    teacher, vector on the text teacher)')."""
    column = f"params.{method}_form"
    if column not in runs:
        return method
    form = {
        t: sorted(set(runs.loc[(runs["params.task"] == t) & (runs["params.method"] == method), column].dropna()))
        for t in (IMAGE, TEXT)
    }
    if form[IMAGE] == form[TEXT]:
        return method
    image, text = "/".join(form[IMAGE]) or "n/a", "/".join(form[TEXT]) or "n/a"
    return f"{method} ({image} on the image teacher, {text} on the text teacher)"


def table(runs: pd.DataFrame) -> str:
    control = runs["params.teacher_control"].astype(object).where(runs["params.teacher_control"].notna(), "none")
    study = runs["tags.xkd.study"].astype(object).where(runs["tags.xkd.study"].notna(), "")
    means = runs[(control == "class_mean") & (study == "") & (runs["params.task"] == IMAGE)]
    runs = runs[(control == "none") & (study == "")]
    if runs["params.code_version"].nunique() > 1:
        sys.exit(f"runs of {runs['params.code_version'].nunique()} code versions: pass the runs of one")

    def seeds(task, method):
        g = runs[(runs["params.task"] == task) & (runs["params.method"] == method)]
        return per_seed(g[METRIC], g["params.seed"])

    base = {t: seeds(t, "baseline") for t in (TEXT, IMAGE)}
    methods = sorted(
        set(runs.loc[runs["params.task"] == TEXT, "params.method"])
        & set(runs.loc[runs["params.task"] == IMAGE, "params.method"]) - {"baseline"}
    )
    rows = [
        (
            _named(runs, m),
            paired_difference(seeds(TEXT, m), base[TEXT]),
            paired_difference(seeds(IMAGE, m), base[IMAGE]),
            paired_difference(seeds(IMAGE, m), seeds(TEXT, m)),
        )
        for m in methods
    ]
    holm([r[3] for r in rows])
    same = paired_difference(base[IMAGE], base[TEXT])
    out = [
        f"baselines: text task {base[TEXT].mean():.2f}, image task {base[IMAGE].mean():.2f} "
        f"(image - text {same}; the same computation on both tasks)",
        "",
        "| method | gain, text teacher (cifar100) | gain, image teacher (cifar100-kd) | image − text, 95% CI, p_Holm |"
        + (
            " label-level part: image class-mean − baseline | image class-mean − text, p_Holm | per-sample part: "
            "image − image class-mean, p_Holm |"
            if len(means)
            else ""
        ),
        "|---|---|---|---|" + ("---|---|---|" if len(means) else ""),
    ]
    split = {}
    if len(means):
        for m in methods:
            g = means[means["params.method"] == m]
            cm = per_seed(g[METRIC], g["params.seed"])
            split[m] = (
                paired_difference(cm, base[IMAGE]),
                paired_difference(cm, seeds(TEXT, m)),
                paired_difference(seeds(IMAGE, m), cm),
            )
        holm([v[1] for v in split.values()]), holm([v[2] for v in split.values()])
    for m, (name, t, i, d) in zip(methods, rows):
        line = f"| {name} | {str(t).removesuffix(' *')} | {str(i).removesuffix(' *')} | {d} |"
        if len(means):
            level, versus_text, per_sample = split[m]
            line += "".join(
                f" {str(x).removesuffix(' *') if k == 0 else x} |" if x is not None else " no class-mean runs |"
                for k, x in enumerate((level, versus_text, per_sample))
            )
        out.append(line)
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(table(pd.read_csv(sys.argv[1], low_memory=False)))
