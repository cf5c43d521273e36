"""What a run is scored by and ends with: the mixture, the scores and the ensemble step
(a section of the `LipizzanerRun` spec, `run.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lipizzaner_core.spec.base import SpecModel
from lipizzaner_core.spec.datasets import SEQUENCE_DATASETS


class MixtureSpec(SpecModel):
    sigma: float = Field(0.01, gt=0)
    score_type: Literal["auto", "fid", "tvd", "mode-kl", "swd", "spectrum", "none"] = "auto"
    score_sample_size: int = Field(
        1000,
        ge=10,
        description="samples each ES candidate is scored on (the original's effective 1,000: "
        'docs/algorithm.md, "The mixture\'s score")',
    )
    schedule: Literal["every-generation", "end"] = Field(
        "every-generation",
        description="every-generation: one ES step after each generation (Lipizzaner 1.0); "
        "end: no ES and no score while training, esGenerationsAtEnd steps after the last "
        "generation (Lipizzaner 2.0's optimize_mixture)",
    )
    es_generations_at_end: int = Field(
        0, ge=0, description="ES steps after the last generation (2.0's es_generations: 10)"
    )
    keep: Literal["best", "last"] = Field(
        "best",
        description="best: each cell keeps its best-scoring mixture (weights and generators) "
        "over the run and ends with it if it still scores better than the last; last: the "
        "last generation's mixture",
    )

    @model_validator(mode="after")
    def _kept_mixtures_are_scored(self) -> MixtureSpec:
        if self.schedule == "end" and self.keep == "best":
            raise ValueError(
                "keep: best compares a score taken every generation, and schedule: "
                "end scores only at the end: set keep: last"
            )
        return self

    @property
    def es_steps_per_generation(self) -> int:
        """ES steps in step 6 of each generation: none when the ES runs only at the end."""
        return 1 if self.schedule == "every-generation" else 0


FEATURE_NETWORK = r"^(auto|mnist-cnn|inception-v3|\S+\.safetensors)$"


# What each objective needs of the data (the cell builds the scorer and says the rest).
OBJECTIVE_DATA: dict[str, tuple[str, tuple[str, ...]]] = {
    "spectrum": ("a sequence dataset", SEQUENCE_DATASETS),
    "mode-kl": ("a dataset with known modes", ("gaussian-ring", "gaussian-grid")),
}


class EnsembleSpec(SpecModel):
    """The run's final step: which ensemble to build from the finished cells."""

    method: Literal["best-cell", "greedy", "ga", "greedy-grid", "reo-gen", "nreo-gen"] = Field(
        "best-cell",
        description="best-cell: the best cell's neighbourhood mixture (always written to "
        "<output>/ensemble); the others also search every cell's generators for a better "
        "ensemble, written to <output>/ensemble-<method>: greedy and ga are this project's, "
        "greedy-grid, reo-gen and nreo-gen the original's (docs/ensembles.md)",
    )
    max_size: int = Field(
        8, ge=1, le=256, description="generators at most; reo-gen: exactly (as candidates allow)"
    )
    min_size: int = Field(2, ge=1, le=256, description="nreo-gen: generators at least")
    evaluations: int = Field(
        600, ge=1, description="reo-gen, nreo-gen: offspring scored before the search stops"
    )
    patience: int = Field(
        0,
        ge=0,
        description="greedy-grid: stop after more than this many candidates in a row that "
        "did not help (0: try every candidate)",
    )
    objective: Literal["auto", "fid", "tvd", "mode-kl", "swd", "spectrum"] = Field(
        "auto", description="a search's score to minimise; auto: mixture.scoreType's"
    )
    samples: int = Field(2000, ge=10, description="a search's samples per candidate generator")
    seed: int | None = Field(None, ge=0, description="a search's seed; default: spec.seed")

    @model_validator(mode="after")
    def _sizes_in_order(self) -> EnsembleSpec:
        if self.min_size > self.max_size:
            raise ValueError(f"minSize: must be <= maxSize ({self.max_size}), got {self.min_size}")
        return self

    @property
    def searched(self) -> bool:
        return self.method != "best-cell"


class ScoreSpec(SpecModel):
    """Which feature networks score a run: a cheap one every generation, maybe a standard
    one for the final report."""

    features: str = Field(
        "auto",
        pattern=FEATURE_NETWORK,
        description="the feature space of the per-generation objective (fid, tvd) and of "
        "keep-best: auto (mnist-cnn for 28x28 grey images, else none: the ES uses swd), "
        "mnist-cnn, inception-v3, or the safetensors URI of a 28x28 classifier "
        "(`lipizzaner train-classifier`)",
    )
    final: str | None = Field(
        None,
        pattern=FEATURE_NETWORK,
        description="the feature space of the final report (FID, precision, recall; with "
        "inception-v3 also KID and the Inception Score); default: features",
    )
    inception_weights: str | None = Field(
        None,
        min_length=1,
        description="safetensors URI of the Inception-v3 weights (see docs/scores.md); "
        "default: $LIPIZZANER_INCEPTION_WEIGHTS",
    )
    final_samples: int = Field(
        10_000, ge=100, description="samples per final score (50,000 in published FIDs)"
    )

    @property
    def final_network(self) -> str:
        return self.final or self.features
