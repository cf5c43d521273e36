"""What `lipizzaner run` prints at the end: each cell's scores beside the yardsticks, which
mixture is the ensemble, the classifier's accuracy, and where everything is."""

from __future__ import annotations

from typing import Any

from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun
from rich.console import Console
from rich.table import Table

from lipizzaner_cell.commands.output import print_whole

# Scores where more is better; every other score is a distance.
HIGHER_IS_BETTER = {
    "precision",
    "recall",
    "inception_score",
    "modes_covered",
    "high_quality_fraction",
}
# Facts about the data, not scores: neither better high nor low.
NOT_SCORES = {"modes_total"}


def print_results(
    out: Console, manifest: dict[str, Any], layout: RunLayout, run: LipizzanerRun
) -> None:
    """Each cell's final mixture scores beside what real data and noise score, which one
    is the ensemble, and where it is."""
    from lipizzaner_cell.ensembles.samples import describe_score
    from lipizzaner_cell.scores.yardsticks import YARDSTICKS, yardsticks

    ends = yardsticks(run, layout)

    names = sorted({name for cell in manifest["cells"] for name in cell["scores"]})
    data = "the held-out data" if manifest.get("scoredOn") == "validation" else "the training data"
    table = Table(title=f"cells: scores of each cell's mixture on {data}")
    for column in ["cell", "row", "col", "from generation", *names]:
        table.add_column(column, justify="right", min_width=len(column), no_wrap=True)
    for cell in manifest["cells"]:
        marker = " *" if cell["cell"] == manifest["bestCell"] else ""
        table.add_row(
            f"{cell['cell']}{marker}",
            str(cell["row"]),
            str(cell["col"]),
            str(cell.get("mixtureGeneration") or cell["generation"]),
            *(number(cell["scores"].get(n)) for n in names),
        )
    for label, part in YARDSTICKS:
        if part in ends:
            table.add_row(label, "", "", "", *(number(ends[part].get(n)) for n in names))
    print_whole(out, table)
    out.print(score_directions(names))
    if manifest.get("trainScores"):
        pairs = ", ".join(
            f"{n} {manifest['scores'][n]:.4g} / {manifest['trainScores'][n]:.4g}"
            for n in names
            if n in manifest["trainScores"]
        )
        out.print(f"the ensemble on held-out / training data: {pairs}")
    objective = manifest.get("objective")
    if objective:
        out.print(
            f"* the ensemble: the mixture with the best "
            f"{describe_score(objective['name'], objective['value'], ends)}"
        )
    else:
        out.print("no score for this dataset (spec.mixture.scoreType is none); * the ensemble")
    if "classifier" in manifest:
        out.print(describe_classifier(manifest))
    generators = len(manifest["generators"])
    out.print(
        f"ensemble: cell {manifest['bestCell']}'s mixture of {generators} "
        f"generator{'' if generators == 1 else 's'}: {layout.ensemble_manifest}\n"
        f"preview: {layout.preview}\n"
        f"cell logs: {layout.cells}/<i>/logs/"
    )


def number(value: float | None) -> str:
    """A score as shown; '-' where there is none (null in the JSON: NaN is never written)."""
    return "-" if value is None else f"{value:.4g}"


def score_directions(names: list[str]) -> str:
    """Which of `names` are better high, which low, and which are no score at all."""
    higher = [n for n in names if n in HIGHER_IS_BETTER]
    facts = [n for n in names if n in NOT_SCORES]
    lower = [n for n in names if n not in HIGHER_IS_BETTER and n not in NOT_SCORES]
    parts = [f"{', '.join(higher)}: higher is better"] if higher else []
    parts += [f"{', '.join(lower)}: lower is better"] if lower else []
    parts += [f"{', '.join(facts)}: the data's own count"] if facts else []
    return "; ".join(parts)


def describe_classifier(manifest: dict[str, Any]) -> str:
    """A semi-supervised run's classifier and its accuracies, per cell and the run's."""
    found = manifest["classifier"]
    data = "held-out" if found["scoredOn"] == "validation" else "training"
    per_cell = ", ".join(
        f"{cell['cell']}: {cell['accuracy']['discriminator']:.4f}"
        for cell in manifest["cells"]
        if cell.get("accuracy")
    )
    own, vote = found["accuracy"]["discriminator"], found["accuracy"]["neighbourhood"]
    distinct = found.get("distinctLabelled")
    in_all = "" if distinct is None else f", {distinct} distinct in the run"
    return (
        f"classifier accuracy on the {data} data ({found['classes']} classes, "
        f"{found['labelled']} labelled samples a cell{in_all}): cell {manifest['bestCell']}'s "
        f"discriminator {own:.4f}, its neighbourhood's vote {vote:.4f}; each cell's own: "
        f"{per_cell} (lipizzaner classify)"
    )
