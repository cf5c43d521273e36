"""What a score means on this data: the real data and pure noise, scored as a mixture is.

A score alone (`swd 0.374`) says nothing to someone who does not know the data. Two
yardsticks put it between its ends: real training samples scored against the held-out
data (as good as a generator can get: two draws of the same data), and uniform noise
over the data's range (a generator that learned nothing). They are computed once per
data set and score settings, the same way the cells' final scores are, and kept with the
run (`<output>/references/yardsticks.json`).
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.storage import DamagedFile, join

from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.scores.choice import build_report_scorer, build_scorer
from lipizzaner_cell.scores.references import ReferenceCache

log = logging.getLogger(__name__)
Yardsticks = dict[str, dict[str, float]]  # "real" and "noise": their scores by name
FILE = "yardsticks.json"
SEED = 0


def yardstick_key(run: LipizzanerRun) -> str:
    """What the yardsticks depend on: the data and how it is scored."""
    spec = run.spec
    parts = [spec.dataset, spec.mixture.score_type, spec.score, spec.seed]
    text = json.dumps(
        [p if isinstance(p, (str, int)) else p.model_dump(mode="json") for p in parts]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def compute_yardsticks(run: LipizzanerRun, layout: RunLayout) -> Yardsticks:
    """{"real": scores, "noise": scores}; empty for a run without scores."""
    spec = run.spec
    dataset = load_dataset(spec.dataset, spec.seed, layout.storage)
    training, held_out = dataset.split(spec.dataset.validation_fraction)
    reference, cache = held_out or training, ReferenceCache.of(layout)
    score_type = spec.mixture.score_type
    objective = build_scorer(score_type, reference, None, spec.score, layout.storage, None, cache)
    scorer = build_report_scorer(
        objective, score_type, reference, None, spec.score, layout.storage, cache
    )
    if scorer is None:
        return {}
    count = min(spec.score.final_samples, len(training))
    rng = torch.Generator().manual_seed(SEED)
    real = training.data[torch.randperm(len(training), generator=rng)[:count]]
    noise = torch.rand((count, *dataset.shape), generator=rng) * 2 - 1
    return {
        "real": scorer.final_scores(scorer.embed(real)),
        "noise": scorer.final_scores(scorer.embed(noise)),
    }


def kept_yardsticks(layout: RunLayout, key: str | None = None) -> Yardsticks | None:
    """The yardsticks kept in a run's output (for `key`, if given); None if there are
    none, or they are unreadable (a cache: never a reason to fail)."""
    uri = join(layout.references, FILE)
    try:
        if layout.storage.exists(uri):
            kept = layout.storage.read_json(uri)
            if key is None or kept.get("key") == key:
                return {part: dict(kept["scores"][part]) for part in kept["scores"]}
    except (DamagedFile, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s unreadable (%s): the yardsticks are computed again", uri, exc)
    return None


def yardsticks(run: LipizzanerRun, layout: RunLayout) -> Yardsticks:
    """The run's yardsticks, from its output when kept there, else computed and kept."""
    key = yardstick_key(run)
    found = kept_yardsticks(layout, key)
    if found is None:
        found = compute_yardsticks(run, layout)
        layout.storage.write_json(join(layout.references, FILE), {"key": key, "scores": found})
    return found


def beside(name: str, value: float, found: Yardsticks) -> str:
    """`0.374 (real data 0.051, noise 1.92)`: a score between its yardsticks."""
    ends = [(label, found.get(part, {}).get(name)) for label, part in YARDSTICKS]
    known = ", ".join(f"{label} {end:.4g}" for label, end in ends if end is not None)
    return f"{value:.4g} ({known})" if known else f"{value:.4g}"


YARDSTICKS = (("real data", "real"), ("noise", "noise"))
