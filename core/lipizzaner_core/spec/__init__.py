"""The `LipizzanerRun` manifest: pydantic models of its sections, one module each.

- `run.py`: the envelope, grid, output, failure policy and exchange, the rules across
  sections, and parsing, loading and dumping a manifest;
- `datasets.py`: the `dataset` kinds; `training.py`: how cells train (networks, loss,
  co-evolution, semi-supervision, batches, checkpoints); `outcome.py`: what a run is scored
  by and ends with (mixture, scores, ensemble); `kubernetes.py`: the operator-only `cell`
  and `scheduling` sections;
- `base.py`: the sections' common model; `errors.py`: validation errors as one line each.
"""

from lipizzaner_core.spec.errors import SpecError
from lipizzaner_core.spec.run import (
    API_VERSION,
    KIND,
    MAX_CELLS,
    NAME_PATTERN,
    LipizzanerRun,
    RunSpecBody,
    dump_run,
    load_run,
    parse_run,
)

__all__ = [
    "API_VERSION",
    "KIND",
    "MAX_CELLS",
    "NAME_PATTERN",
    "LipizzanerRun",
    "RunSpecBody",
    "SpecError",
    "dump_run",
    "load_run",
    "parse_run",
]
