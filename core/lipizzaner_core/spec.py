"""The `LipizzanerRun` manifest as pydantic models (the dataset and Kubernetes sections
in `spec_datasets.py` and `spec_kubernetes.py`).

Torch-free on purpose: the operator image validates and renders runs without torch.
Field names are camelCase on the wire (as in every Kubernetes manifest) and snake_case
in Python. Unknown fields are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from lipizzaner_core.placement import process_groups
from lipizzaner_core.spec_base import SpecModel
from lipizzaner_core.spec_datasets import (
    DATASET_NAMES,
    IMAGE_DATASETS,
    LABELLED_DATASETS,
    SEQUENCE_DATASETS,
    DatasetSpec,
)
from lipizzaner_core.spec_errors import describe_errors
from lipizzaner_core.spec_kubernetes import CellTemplateSpec, SchedulingSpec
from lipizzaner_core.topology import Grid, neighbourhood_size

API_VERSION = "lipizzaner.io/v1alpha1"
KIND = "LipizzanerRun"
NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$"


MAX_CELLS = 1024


class GridSpec(SpecModel):
    rows: int = Field(2, ge=1, le=64)
    cols: int = Field(2, ge=1, le=64)
    neighbourhood: Literal["von-neumann", "moore"] = "von-neumann"

    @model_validator(mode="after")
    def _bounded(self) -> GridSpec:
        if self.rows * self.cols > MAX_CELLS:
            raise ValueError(f"rows * cols: must be <= {MAX_CELLS}, got {self.rows * self.cols}")
        return self

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def topology(self) -> Grid:
        return Grid(self.rows, self.cols, self.neighbourhood)


class NetworkPartSpec(SpecModel):
    architecture: Literal["mlp", "dcgan", "rnn"] = "mlp"
    hidden_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [256, 256],
        min_length=1,
        description="mlp: the hidden layers' widths; rnn: the stacked recurrent layers' sizes",
    )
    cell: Literal["lstm", "gru"] = Field("lstm", description="rnn: the recurrent layer")
    width: int = Field(64, ge=1, description="dcgan: channels of the widest conv layer")
    output: Literal["tanh", "linear"] = Field(
        "tanh", description="generator output layer; linear suits low-dimensional data"
    )


# The data an architecture needs: (what kind, which datasets); mlp takes any.
ARCHITECTURE_DATA: dict[str, tuple[str, tuple[str, ...]]] = {
    "dcgan": ("an image dataset", IMAGE_DATASETS),
    "rnn": ("a sequence dataset", SEQUENCE_DATASETS),
}


# Measured on MNIST at this project's budgets (docs/algorithm.md, "The default learning
# rate"): perceptrons learn fastest at 1e-3, in a grid and alone; 2e-4 is DCGAN's own.
# Recurrent networks take the perceptrons' rate (the sequences example trains at it; not swept).
DEFAULT_LEARNING_RATES = {"mlp": 1e-3, "dcgan": 2e-4, "rnn": 1e-3}


class NetworkSpec(SpecModel):
    latent_size: int = Field(64, ge=1)
    generator: NetworkPartSpec = Field(default_factory=NetworkPartSpec)
    discriminator: NetworkPartSpec = Field(default_factory=NetworkPartSpec)


# The original's names and meanings (see the cell's losses.py); minimax and wgan-gp are ours.
LossName = Literal["bce", "heuristic", "minimax", "mse", "wgan", "wgan-gp", "mustangs"]


class FitnessSpec(SpecModel):
    sample_size: int = Field(500, ge=1)
    mode: Literal["worst", "best", "average"] = "average"


class MutationSpec(SpecModel):
    probability: float = Field(0.5, ge=0.0, le=1.0)
    alpha: float = Field(1e-4, ge=0.0)


class CoevolutionSpec(SpecModel):
    population_size: int = Field(1, ge=1)
    tournament_size: int = Field(2, ge=1)
    replacements: int = Field(1, ge=0)
    replacement_rule: Literal["faithful", "offspring"] = "faithful"
    selection: bool = True
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Both players' initial rate (default: 1e-3 for a perceptron, 2e-4 for a "
        "DCGAN, each player by its own network)",
    )
    generator_learning_rate: float | None = Field(
        None, gt=0, description="The generators' initial rate (default: learningRate)"
    )
    discriminator_learning_rate: float | None = Field(
        None, gt=0, description="The discriminators' initial rate (default: learningRate)"
    )
    mutation: MutationSpec = Field(default_factory=MutationSpec)
    fitness: FitnessSpec = Field(default_factory=FitnessSpec)
    discriminator_skip_every_nth: int = Field(
        0,
        ge=0,
        description="The original's discriminator_skip_each_nth_step: the discriminator "
        "trains on batches where batch % (n + 1) == 0 (0: every batch, 1: every other)",
    )

    @model_validator(mode="after")
    def _replacements_fit_population(self) -> CoevolutionSpec:
        if self.replacements > self.population_size:
            raise ValueError(
                f"replacements: must be <= populationSize ({self.population_size}), "
                f"got {self.replacements}"
            )
        return self


class MixtureSpec(SpecModel):
    sigma: float = Field(0.01, gt=0)
    score_type: Literal["auto", "fid", "tvd", "mode-kl", "swd", "spectrum", "none"] = "auto"
    score_sample_size: int = Field(1000, ge=10)
    es_generations_at_end: int = Field(0, ge=0)
    keep: Literal["best", "last"] = Field(
        "best",
        description="best: each cell keeps its best-scoring mixture (weights and generators) "
        "over the run and ends with it if it still scores better than the last; last: the "
        "last generation's mixture",
    )


FEATURE_NETWORK = r"^(auto|mnist-cnn|inception-v3|\S+\.safetensors)$"


# What each objective needs of the data (the cell builds the scorer and says the rest).
OBJECTIVE_DATA: dict[str, tuple[str, tuple[str, ...]]] = {
    "spectrum": ("a sequence dataset", SEQUENCE_DATASETS),
    "mode-kl": ("a dataset with known modes", ("gaussian-ring", "gaussian-grid")),
}


class EnsembleSpec(SpecModel):
    """The run's final step: which ensemble to build from the finished cells."""

    method: Literal["best-cell", "greedy", "ga"] = Field(
        "best-cell",
        description="best-cell: the best cell's neighbourhood mixture (always written to "
        "<output>/ensemble); greedy or ga: also search every cell's generators for a better "
        "ensemble, written to <output>/ensemble-<method> (docs/ensembles.md)",
    )
    max_size: int = Field(8, ge=1, le=256, description="greedy, ga: generators at most")
    objective: Literal["auto", "fid", "tvd", "mode-kl", "swd", "spectrum"] = Field(
        "auto", description="greedy, ga: the score to minimise; auto: mixture.scoreType's"
    )
    samples: int = Field(2000, ge=10, description="greedy, ga: samples per candidate generator")
    seed: int | None = Field(None, ge=0, description="greedy, ga: default: spec.seed")

    @property
    def searched(self) -> bool:
        return self.method != "best-cell"


class SemiSupervisedSpec(SpecModel):
    """Semi-supervised training (SGAN): discriminators also classify (docs/semi-supervised.md)."""

    enabled: bool = Field(
        False,
        description="true: each discriminator outputs the dataset's classes plus fake, trains "
        "on the labelled samples' cross-entropy too, and its fitness counts both",
    )
    weights: Literal["fixed", "spread"] = Field(
        "fixed",
        description="fixed: every cell weighs its losses by unsupervisedWeight and "
        "supervisedWeight; spread: as the original, cell i of n by i/(n-1) and 1-i/(n-1)",
    )
    unsupervised_weight: float = Field(
        1.0, ge=0.0, description="fixed: the weight of the discriminator's GAN loss"
    )
    supervised_weight: float = Field(
        1.0, ge=0.0, description="fixed: the weight of its classification loss"
    )
    labelled_batch_size: int = Field(
        100, ge=1, description="labelled samples in each discriminator step, drawn anew"
    )

    def weights_of(self, cell: int, cells: int) -> tuple[float, float]:
        """(unsupervised, supervised) weights of a cell's discriminator losses."""
        if self.weights == "fixed":
            return self.unsupervised_weight, self.supervised_weight
        unsupervised = 0.5 if cells == 1 else cell / (cells - 1)
        return unsupervised, 1.0 - unsupervised


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


class TrainingSpec(SpecModel):
    batch_size: int = Field(100, ge=1)
    batches_per_generation: int = Field(0, ge=0, description="0 = one pass over the cell's data")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cuda_graphs: bool = Field(
        True,
        description="On CUDA, replay each training step as a captured CUDA graph (the same "
        "numbers, several times faster for small networks); false: plain PyTorch steps",
    )


class CheckpointSpec(SpecModel):
    every: int = Field(5, ge=1, description="Checkpoint every N generations")
    keep: int = Field(2, ge=1, description="How many checkpoints each cell keeps")


class OutputSpec(SpecModel):
    uri: str = Field("./runs/{name}", min_length=1)
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint; else AWS_ENDPOINT_URL or AWS's default"
    )
    credentials_secret: str | None = Field(
        None,
        description="Kubernetes: a Secret whose keys (AWS_ACCESS_KEY_ID, ...) become the "
        "cells' environment",
    )


class FailurePolicySpec(SpecModel):
    max_restarts_per_cell: int = Field(
        3,
        ge=0,
        description="Restarts after failures; disruptions (preemption, eviction) do not count",
    )
    max_failed_cells: int = Field(
        0,
        ge=0,
        description="Cells that may be given up past their restarts while the others go on "
        "(the ensemble comes from the cells that finish); 0: one such cell fails the run",
    )


class ExchangeTlsSpec(SpecModel):
    enabled: bool = Field(
        False, description="Mutual TLS between the cells (and the operator's status calls)"
    )
    secret_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$",
        description="Kubernetes: a Secret with ca.crt, tls.crt and tls.key (a cert-manager "
        "Certificate's); default: the operator creates <run>-tls with a CA of the run's own",
    )


class ExchangeSpec(SpecModel):
    first_state_timeout_seconds: float = Field(
        60.0, ge=0, description="How long a starting cell waits for its neighbours' first states"
    )
    max_state_megabytes: int = Field(512, ge=1, description="Larger neighbour states are rejected")
    optimizer_state: bool = Field(
        False,
        description="true: send each centre's optimizer moments with its weights (three times "
        "the bytes with Adam), so a selected neighbour continues its own moments, as in the "
        "original; false (measured better, docs/algorithm.md): it continues those of the "
        "local individual it replaces",
    )
    tls: ExchangeTlsSpec = Field(default_factory=ExchangeTlsSpec)


class RunSpecBody(SpecModel):
    grid: GridSpec = Field(default_factory=GridSpec)
    generations: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    dataset: DatasetSpec
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    loss: LossName = "bce"
    coevolution: CoevolutionSpec = Field(default_factory=CoevolutionSpec)
    mixture: MixtureSpec = Field(default_factory=MixtureSpec)
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec)
    semi_supervised: SemiSupervisedSpec = Field(default_factory=SemiSupervisedSpec)
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    failure_policy: FailurePolicySpec = Field(default_factory=FailurePolicySpec)
    exchange: ExchangeSpec = Field(default_factory=ExchangeSpec)
    cell: CellTemplateSpec = Field(default_factory=CellTemplateSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    managed_by: str | None = Field(
        None,
        max_length=63,
        description="Kubernetes: the controller that runs this run (as Job's, for MultiKueue); "
        "unset or lipizzaner.io/operator: this operator; anything else: it leaves the run "
        "alone. Immutable",
    )
    suspend: bool = Field(
        False, strict=True, description="Kubernetes: true stops the cells, keeping checkpoints"
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Kubernetes: fail the run once it has run this long"
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Kubernetes: delete the finished run after this many seconds"
    )

    def process_groups(self) -> list[range]:
        """The cells each process (pod) hosts, `cell.cellsPerPod` at a time."""
        return process_groups(self.grid.size, self.cell.cells_per_pod)

    def initial_rate(self, role: str) -> float:
        """A player's initial learning rate, also the scale of its rate mutation: its own
        rate, else `learningRate`, else its network's default (`DEFAULT_LEARNING_RATES`)."""
        co = self.coevolution
        own = co.generator_learning_rate if role == "generator" else co.discriminator_learning_rate
        for rate in (own, co.learning_rate):
            if rate is not None:
                return rate
        return DEFAULT_LEARNING_RATES[getattr(self.network, role).architecture]

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunSpecBody:
        grid = self.grid
        neighbours = neighbourhood_size(grid.rows, grid.cols, grid.neighbourhood) - 1
        pool = self.coevolution.population_size + neighbours
        if self.coevolution.tournament_size > pool:
            raise ValueError(
                "coevolution.tournamentSize: must be <= the selection pool, the local "
                f"populationSize ({self.coevolution.population_size}) plus one centre per "
                f"neighbour ({neighbours}) = {pool}, got {self.coevolution.tournament_size}"
            )
        if self.failure_policy.max_failed_cells >= grid.rows * grid.cols:
            raise ValueError(
                "failurePolicy.maxFailedCells: must be less than the number of cells "
                f"({grid.rows * grid.cols}), got {self.failure_policy.max_failed_cells}"
            )
        ensemble = self.ensemble
        objective = ensemble.objective if ensemble.searched else None
        if objective == "auto" and self.mixture.score_type == "none":
            raise ValueError(
                f"ensemble.objective: method {ensemble.method} needs a score to search by, "
                "and mixture.scoreType is none: set ensemble.objective"
            )
        self._labels_fit_data()
        for field, name, needs in (
            (
                "network.generator.architecture",
                self.network.generator.architecture,
                ARCHITECTURE_DATA,
            ),
            (
                "network.discriminator.architecture",
                self.network.discriminator.architecture,
                ARCHITECTURE_DATA,
            ),
            ("mixture.scoreType", self.mixture.score_type, OBJECTIVE_DATA),
            ("ensemble.objective", objective, OBJECTIVE_DATA),
        ):
            self._fits_data(field, name, needs)
        return self

    def _labels_fit_data(self) -> None:
        dataset = self.dataset.name
        if self.semi_supervised.enabled and dataset not in LABELLED_DATASETS:
            raise ValueError(
                f"semiSupervised.enabled: needs a dataset with classes "
                f"({', '.join(LABELLED_DATASETS)}), got dataset {dataset}"
            )
        if (
            getattr(self.dataset, "label_rate", None) is not None
            and not self.semi_supervised.enabled
        ):
            raise ValueError(
                "dataset.labelRate: only semi-supervised runs use labels: set "
                "semiSupervised.enabled: true"
            )

    def _fits_data(
        self, field: str, name: str | None, needs: dict[str, tuple[str, tuple[str, ...]]]
    ) -> None:
        """`name` (an architecture, an objective) works on the run's dataset."""
        if name not in needs:
            return
        kind, datasets = needs[name]
        if self.dataset.name not in datasets:
            raise ValueError(
                f"{field}: {name} needs {kind} ({', '.join(datasets)}), "
                f"got dataset {self.dataset.name}"
            )


class Metadata(SpecModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    # Starts with a letter and stays short: `<name>-cells` must be a valid Service name
    # and `<name>-cell-<index>` a valid pod hostname.
    name: str = Field(..., pattern=NAME_PATTERN)
    namespace: str | None = None


class LipizzanerRun(SpecModel):
    api_version: Literal["lipizzaner.io/v1alpha1"]
    kind: Literal["LipizzanerRun"]
    metadata: Metadata
    spec: RunSpecBody

    def output_uri(self) -> str:
        return self.spec.output.uri.replace("{name}", self.metadata.name)


class SpecError(ValueError):
    """A run manifest that does not validate; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def parse_run(document: Any) -> LipizzanerRun:
    """Validate a manifest dict; raise SpecError naming every bad field."""
    if not isinstance(document, dict):
        raise SpecError([f"manifest must be a mapping, got {type(document).__name__}"])
    try:
        return LipizzanerRun.model_validate(document)
    except ValidationError as exc:
        raise SpecError(describe_errors(exc.errors(), LipizzanerRun, DATASET_NAMES)) from None


def load_run(path: str | Path) -> LipizzanerRun:
    """Read and validate a YAML manifest from a local path."""
    with Path(path).open() as stream:  # YAML errors then name the file, not "<unicode string>"
        try:
            document = yaml.safe_load(stream)
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise SpecError([f"not valid YAML: {reason}"]) from None
    return parse_run(document)


def dump_run(run: LipizzanerRun) -> dict[str, Any]:
    """The manifest as plain camelCase data, defaults filled in."""
    return run.model_dump(by_alias=True, mode="json")
