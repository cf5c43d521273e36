"""Where everything of a run lives under its output URI: the one place that knows.

<output>/cells/<i>/checkpoints/<generation>/state.{safetensors,json}   a cell's state
<output>/cells/<i>/checkpoints/<generation>/digests.json   written last: the files' SHA-256
<output>/cells/<i>/result.json, mixture/generator-<cell>.safetensors    its mixture
<output>/cells/<i>/logs/attempt-<k>.log                                 its logs (local)
<output>/ensemble/manifest.json, generator-<k>.safetensors             the ensemble
<output>/samples.png                                                   a preview
<output>/lease.json                               the local run training it now, if any
<output>/run.yaml                     the manifest a local run trains (its overrides in)
<output>/references/<digest>.safetensors                 real data's embeddings (a cache)
"""

from __future__ import annotations

from dataclasses import dataclass

from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.storage import Storage, join

ENSEMBLE_MANIFEST = "manifest.json"  # inside an ensemble's directory
CHECKPOINT_FILES = ("state.safetensors", "state.json")  # a checkpoint's state, in write order
CHECKPOINT_MARKER = "digests.json"  # written last: marks it complete and verifies the rest


@dataclass(frozen=True)
class CellLayout:
    uri: str
    storage: Storage

    @property
    def checkpoints(self) -> str:
        return join(self.uri, "checkpoints")

    def checkpoint(self, name: str) -> str:
        return join(self.checkpoints, name)

    @staticmethod
    def checkpoint_name(generation: int) -> str:
        return f"{generation:06d}"

    def completed_checkpoints(self) -> list[str]:
        """Names of the checkpoints whose marker exists (it is written last), oldest
        first; a name is the generation it was written at. Complete is not intact: the
        marker's digests say that (`lipizzaner_cell.runtime.checkpoint`)."""
        return [
            name
            for name in self.storage.list_dir(self.checkpoints)
            if name.isdigit()
            and self.storage.exists(join(self.checkpoint(name), CHECKPOINT_MARKER))
        ]

    def log(self, attempt: int) -> str:
        return join(self.logs, f"{LOG_PREFIX}{attempt}{LOG_SUFFIX}")

    def attempts(self) -> list[int]:
        """The starts (0 = the first) whose logs the output holds, in order."""
        names = self.storage.list_dir(self.logs)
        found = [n.removeprefix(LOG_PREFIX).removesuffix(LOG_SUFFIX) for n in names]
        return sorted(int(n) for n in found if n.isdigit())

    def next_attempt(self) -> int:
        """The number of the next start: one past the last kept log, never reusing one."""
        return max(self.attempts(), default=-1) + 1

    @property
    def result(self) -> str:
        return join(self.uri, "result.json")

    @property
    def history(self) -> str:
        return join(self.uri, "history.jsonl")

    @property
    def mixture(self) -> str:
        return join(self.uri, "mixture")

    def mixture_generator(self, source_cell: int) -> str:
        """Relative to the cell: result.json names its files this way."""
        return f"mixture/generator-{source_cell}.safetensors"

    @property
    def classifiers(self) -> str:
        return join(self.uri, "classifier")

    def classifier(self, source_cell: int) -> str:
        """Semi-supervised runs, relative to the cell: the neighbourhood's discriminators."""
        return f"classifier/discriminator-{source_cell}.safetensors"

    @property
    def logs(self) -> str:
        return join(self.uri, "logs")


LOG_PREFIX, LOG_SUFFIX = "attempt-", ".log"


@dataclass(frozen=True)
class RunLayout:
    output: str
    storage: Storage

    @classmethod
    def of(
        cls,
        run: LipizzanerRun,
        output: str | None = None,
        credentials: dict[str, str] | None = None,
    ) -> RunLayout:
        """The run's layout; `output` overrides spec.output.uri (e.g. `--output`);
        `credentials`, the AWS_* keys of its credentialsSecret (else the environment's)."""
        storage = Storage.with_endpoint(run.spec.output.endpoint_url, credentials)
        return cls(output or run.output_uri(), storage)

    @property
    def cells(self) -> str:
        return join(self.output, "cells")

    def cell(self, index: int) -> CellLayout:
        return CellLayout(join(self.cells, str(index)), self.storage)

    @property
    def ensemble(self) -> str:
        return join(self.output, "ensemble")

    @property
    def ensemble_manifest(self) -> str:
        return join(self.ensemble, ENSEMBLE_MANIFEST)

    def optimised_ensemble(self, method: str) -> str:
        """An ensemble searched over the whole grid (`lipizzaner ensemble optimize`),
        beside the run's own, never in place of it."""
        return join(self.output, f"ensemble-{method}")

    @staticmethod
    def ensemble_generator(k: int) -> str:
        """Relative to the ensemble directory: the manifest names its files this way."""
        return f"generator-{k}.safetensors"

    @staticmethod
    def ensemble_classifier(k: int) -> str:
        """Semi-supervised runs, relative to the ensemble directory: the classifiers."""
        return f"discriminator-{k}.safetensors"

    @property
    def preview(self) -> str:
        return join(self.output, "samples.png")

    @property
    def lease(self) -> str:
        """Who is training this output now (`lipizzaner run`): one writer at a time."""
        return join(self.output, "lease.json")

    @property
    def spec(self) -> str:
        """The manifest `lipizzaner run` trains, written first: a local run's status
        and logs read it (on a cluster the run's own object has it)."""
        return join(self.output, "run.yaml")

    @property
    def references(self) -> str:
        """The cache of real-data embeddings every cell of the run shares."""
        return join(self.output, "references")
