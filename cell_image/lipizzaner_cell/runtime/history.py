"""A cell's per-generation record, `cells/<i>/history.jsonl`: one JSON line per generation.

It outlives the pods and Prometheus' retention. Lines are kept in memory and the file is
rewritten whole just before each checkpoint (object stores cannot append), so after a
restart the history holds exactly the generations the checkpoint holds: lines past the
restored generation are dropped.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

from lipizzaner_core.layout import CellLayout
from lipizzaner_core.storage import Storage, finite, join

from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.report import FIGURES, GenerationReport

log = logging.getLogger(__name__)


def record(engine: CellEngine, report: GenerationReport) -> dict[str, Any]:
    """One generation: losses, fitness, rates, score and the best kept so far, acceptance,
    step timings, weights."""
    line = asdict(report)
    line["score"] = line.pop("mixture_score")
    line["score_name"] = engine.scorer.objective_name if engine.scorer else None
    line["mixture_weights"] = {str(c): w for c, w in engine.mixture.weights.items()}
    return line


class History:
    def __init__(self, layout: CellLayout) -> None:
        self.layout = layout
        self.lines: list[dict[str, Any]] = []

    def load(self, generation: int) -> None:
        """The history up to `generation` (the restored checkpoint's), from the output."""
        self.lines = [
            line for line in read_history(self.layout) if line["generation"] <= generation
        ]

    def append(self, line: dict[str, Any]) -> None:
        self.lines.append(line)

    def write(self) -> None:
        text = "".join(
            json.dumps(finite(line), sort_keys=True, allow_nan=False) + "\n" for line in self.lines
        )
        self.layout.storage.write_bytes(self.layout.history, text.encode())


# The keys every line has, as `record` writes it: the report's fields without a default
# (a field added later, with one, is absent from an older run's lines).
REQUIRED = {
    f.name
    for f in fields(GenerationReport)
    if f.default is MISSING and f.default_factory is MISSING
} - {"mixture_score"} | {
    "score",
    "score_name",
    "mixture_weights",
}


def read_history(layout: CellLayout) -> list[dict[str, Any]]:
    """A cell's history lines, oldest first; empty when it has none yet. A line that is
    not a generation's record (the torn end a kill leaves, a flipped byte) is skipped
    with a warning naming the file and the line."""
    if not layout.storage.exists(layout.history):
        return []
    text = layout.storage.read_bytes(layout.history).decode(errors="replace")
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not all(k in record for k in REQUIRED):
                raise ValueError("not a generation's record")
            int(record["generation"])
        except (ValueError, TypeError) as exc:
            log.warning("%s line %d: skipped, damaged (%s)", layout.history, number, exc)
            continue
        lines.append(record)
    return lines


def run_histories(storage: Storage, output: str) -> dict[int, list[dict[str, Any]]]:
    """Every cell's history under a run's output, by cell index."""
    cells = join(output, "cells")
    indices = sorted(int(name) for name in storage.list_dir(cells) if name.isdigit())
    histories = {i: read_history(CellLayout(join(cells, str(i)), storage)) for i in indices}
    return {i: lines for i, lines in histories.items() if lines}


def render_curves(histories: dict[int, list[dict[str, Any]]], title: str) -> bytes:
    """The score and both training losses over the generations, a line per cell."""
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = [("score", "score (dashed: best kept)"), ("generator_loss", "generator loss")]
    panels.append(("discriminator_loss", "discriminator loss"))
    if any(line.get("accuracy") is not None for lines in histories.values() for line in lines):
        panels.append(("accuracy", "held-out accuracy (semi-supervised)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), dpi=100)
    for ax, (key, label) in zip(axes, panels, strict=True):
        for cell, lines in histories.items():
            points = [
                (line["generation"], line[key]) for line in lines if line.get(key) is not None
            ]
            if not points:
                continue
            (drawn,) = ax.plot(*zip(*points, strict=True), label=f"cell {cell}")
            kept = [(line["generation"], line.get("kept_score")) for line in lines]
            kept = [point for point in kept if point[1] is not None]
            if key == "score" and kept:  # keep-best: the best so far, dashed
                ax.plot(*zip(*kept, strict=True), "--", color=drawn.get_color(), linewidth=0.8)
        ax.set_xlabel("generation")
        ax.set_title(label)
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def scalars(line: dict[str, Any]) -> dict[str, float]:
    """One history line as TensorBoard scalars, grouped by tag prefix."""
    plain = (f for f in FIGURES if f.tensorboard and line.get(f.field) is not None)
    values = {figure.tensorboard: line[figure.field] for figure in plain}
    if line["score"] is not None:
        values[f"score/{line['score_name']}"] = line["score"]
    if line.get("kept_score") is not None:
        values[f"score/{line['score_name']}_kept"] = line["kept_score"]
    if line["offspring_offered"]:
        values["selection/offspring_accepted"] = (
            line["offspring_accepted"] / line["offspring_offered"]
        )
    values.update({f"seconds/{step}": s for step, s in line["seconds"].items()})
    values.update({f"mixture_weight/cell_{c}": w for c, w in line["mixture_weights"].items()})
    return values


def write_tensorboard(
    histories: dict[int, list[dict[str, Any]]], storage: Storage, target: str
) -> list[str]:
    """TensorBoard event files, one run per cell (`<target>/cell-<i>/`), local or remote.

    Written to a local folder first and then copied, so any fsspec URI works as the
    target (`tensorboard --logdir s3://...` reads them where they land).
    """
    from tensorboardX import SummaryWriter

    written = []
    with tempfile.TemporaryDirectory(prefix="lipizzaner-tensorboard-") as local:
        for cell, lines in histories.items():
            folder = Path(local) / f"cell-{cell}"
            with SummaryWriter(str(folder)) as writer:
                for line in lines:
                    for tag, value in scalars(line).items():
                        writer.add_scalar(tag, value, line["generation"])
            for path in sorted(folder.iterdir()):
                uri = join(target, f"cell-{cell}", path.name)
                storage.write_bytes(uri, path.read_bytes())
                written.append(uri)
    return written
