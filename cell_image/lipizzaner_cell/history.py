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
from dataclasses import asdict
from typing import Any

from lipizzaner_core.layout import CellLayout
from lipizzaner_core.storage import Storage, join

from lipizzaner_cell.engine import CellEngine, GenerationReport


def record(engine: CellEngine, report: GenerationReport) -> dict[str, Any]:
    """One generation: losses, fitness, rates, score, acceptance, step timings, weights."""
    line = asdict(report)
    line["score"] = line.pop("mixture_score")
    line["score_name"] = engine.scorer.objective_name if engine.scorer else None
    line["mixture_weights"] = {str(c): w for c, w in engine.mixture_weights.items()}
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
        text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in self.lines)
        self.layout.storage.write_bytes(self.layout.history, text.encode())


def read_history(layout: CellLayout) -> list[dict[str, Any]]:
    """A cell's history lines, oldest first; empty when it has none yet."""
    if not layout.storage.exists(layout.history):
        return []
    text = layout.storage.read_bytes(layout.history).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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

    panels = [("score", "score (lower is better)"), ("generator_loss", "generator loss")]
    panels.append(("discriminator_loss", "discriminator loss"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), dpi=100)
    for ax, (key, label) in zip(axes, panels, strict=True):
        for cell, lines in histories.items():
            points = [(line["generation"], line[key]) for line in lines if line[key] is not None]
            if points:
                ax.plot(*zip(*points, strict=True), label=f"cell {cell}")
        ax.set_xlabel("generation")
        ax.set_title(label)
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
