"""The ensemble steps of a finished run, as the operator takes them: reach the run's
output, assemble the best cell's ensemble, and read back what a search's Job wrote.
"""

from __future__ import annotations

import logging
from datetime import datetime

import kopf
from lipizzaner_core.ensemble import assemble_ensemble
from lipizzaner_core.layout import ENSEMBLE_MANIFEST, RunLayout
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.status import RunStatus
from lipizzaner_core.storage import S3_CREDENTIALS, join

from lipizzaner_operator.kube import KubeClient
from lipizzaner_operator.reconcile import fail, succeed


def output_layout(run: LipizzanerRun, namespace: str, kube: KubeClient) -> RunLayout:
    """The run's output as its cells reach it: with the keys of its credentialsSecret when
    it names one (else the operator's own environment, `storage.secretName`). Its own
    storage options: no lock, nothing global."""
    name = run.spec.output.credentials_secret
    found = kube.read_secret(namespace, name) if name else None
    credentials = {k: v.decode() for k, v in (found or {}).items() if k in S3_CREDENTIALS}
    return RunLayout.of(run, credentials=credentials)


def assembled(
    run: LipizzanerRun,
    layout: RunLayout,
    status: RunStatus,
    now: datetime,
    logger: logging.Logger | kopf.Logger,
    final: bool,
) -> RunStatus:
    """Assemble the run's ensemble; succeed if it is the `final` step."""
    try:
        assemble_ensemble(run, layout)
    except Exception as exc:  # storage errors come in many types; all end the run the same way
        logger.exception("assembling the ensemble failed")
        return fail(status, "EnsembleFailed", f"assembling the ensemble failed: {exc}", now)
    return succeed(status, layout.ensemble, now) if final else status


def search_finished(
    run: LipizzanerRun, layout: RunLayout, status: RunStatus, now: datetime
) -> RunStatus:
    """The search's Job completed: succeed with the ensemble it wrote, said in a line."""
    searched = layout.optimised_ensemble(run.spec.ensemble.method)
    try:
        manifest = layout.storage.read_json(join(searched, ENSEMBLE_MANIFEST))
        found, own = manifest["objective"], manifest["search"]["bestCell"]["objective"]
    except Exception as exc:  # missing, unreadable or not a search's manifest: all the same
        message = f"the ensemble search's Job completed, but {searched} has no ensemble: {exc}"
        return fail(status, "EnsembleSearchFailed", message, now)
    said = (
        f"the {run.spec.ensemble.method} search's ensemble, {found['name']} "
        f"{found['value']:.4g} (the best cell's {own:.4g}), written to {searched}"
    )
    return succeed(status, layout.ensemble, now, searched, said)
