"""The `LipizzanerRun` manifest as pydantic models: the run's envelope, grid, output,
failure policy and exchange, and the rules across sections. The other sections have
modules of their own: `datasets.py`, `training.py` (networks, co-evolution,
semi-supervision, batches), `outcome.py` (mixture, scores, ensemble) and
`kubernetes.py`.

Torch-free on purpose: the operator image validates and renders runs without torch.
Field names are camelCase on the wire (as in every Kubernetes manifest) and snake_case
in Python. Unknown fields are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from lipizzaner_core.placement import process_groups
from lipizzaner_core.spec.base import SpecModel
from lipizzaner_core.spec.datasets import (
    DATASET_NAMES,
    LABELLED_DATASETS,
    DatasetSpec,
)
from lipizzaner_core.spec.errors import SpecError, describe_errors
from lipizzaner_core.spec.kubernetes import CellTemplateSpec, SchedulingSpec
from lipizzaner_core.spec.outcome import OBJECTIVE_DATA, EnsembleSpec, MixtureSpec, ScoreSpec
from lipizzaner_core.spec.training import (
    ARCHITECTURE_DATA,
    DEFAULT_LEARNING_RATES,
    CheckpointSpec,
    CoevolutionSpec,
    LossName,
    MustangsSpec,
    NetworkSpec,
    SemiSupervisedSpec,
    TrainingSpec,
)
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
    lost_node_seconds: int = Field(
        300,
        ge=0,
        description="Kubernetes: a cell pod terminating this long on a node that is not Ready "
        "is force-deleted and recreated elsewhere (a disruption): a lost node never confirms "
        "the deletion. More than the pods' 120 s grace, so a cell that still runs has written "
        "its checkpoint",
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
    neighbour_wait_seconds: float = Field(
        30.0,
        ge=0,
        description="Before each generation, wait up to this long for every neighbour to "
        "finish the generation this cell has finished, so that it selects from and mixes "
        "the same fresh neighbours the in-process runner gives it (measured better, "
        "docs/algorithm.md); a neighbour that misses it is not waited for again until it "
        "publishes. 0: take each neighbour's newest state there is, as the original does",
    )
    tls: ExchangeTlsSpec = Field(default_factory=ExchangeTlsSpec)


class RunSpecBody(SpecModel):
    grid: GridSpec = Field(default_factory=GridSpec)
    generations: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    dataset: DatasetSpec
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    loss: LossName = "bce"
    mustangs: MustangsSpec = Field(default_factory=MustangsSpec)
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
        # A lone cell (1x1) is a plain GAN: its tournaments shrink to its pool.
        if self.coevolution.tournament_size > pool and neighbours > 0:
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
        if self.mustangs.draw != "per-batch" and self.loss != "mustangs":
            raise ValueError(
                f"mustangs.draw: only loss: mustangs draws losses, got loss {self.loss}"
            )
        stacked = self.training.stacking.cells
        if self.cell.cells_per_pod % stacked:
            raise ValueError(
                f"cell.cellsPerPod: training.stacking.cells {stacked} stacks the cells of one "
                f"process, so cellsPerPod must be a multiple of it, got {self.cell.cells_per_pod}"
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
