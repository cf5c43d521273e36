"""Leader election over a `coordination.k8s.io` Lease: of several replicas, one reconciles.

Every replica runs kopf (so each answers its liveness probe and serves metrics); only the
one whose `leading` is set reconciles runs. As client-go's leader election does it: the
leader renews the Lease every `renew_seconds`; a standby takes the Lease over once its
holder has not renewed it for `lease_seconds`; a leader that has not managed to renew for
`renew_deadline_seconds` (shorter than the lease) stops acting, so the old leader is done
before a new one can begin. Every write
carries the Lease's resourceVersion, so two replicas racing for it cannot both win.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
Claim = Literal["renew", "take", "wait"]


def claim(
    holder: str | None, renewed: datetime | None, me: str, now: datetime, lease_seconds: float
) -> Claim:
    """What this replica may do with the Lease as it stands (pure)."""
    if holder == me:
        return "renew"
    if not holder or renewed is None or now - renewed >= timedelta(seconds=lease_seconds):
        return "take"
    return "wait"


@dataclass
class LeaderElection:
    api: client.CoordinationV1Api
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    renew_seconds: float = 2.0

    def try_lead(self) -> bool:
        """One attempt to take or renew the Lease; True while this replica holds it."""
        now = datetime.now(UTC)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._create(now)
        spec = lease.spec
        renewed = spec.renew_time or spec.acquire_time
        verdict = claim(spec.holder_identity, renewed, self.identity, now, self.lease_seconds)
        if verdict == "wait":
            return False
        if verdict == "take":
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            log.info(
                "taking the lease %s/%s over from %s",
                self.namespace,
                self.name,
                spec.holder_identity,
            )
        spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = int(self.lease_seconds)
        try:  # the resourceVersion in `lease` makes a raced write fail with 409
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _create(self, now: datetime) -> bool:
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                acquire_time=now,
                renew_time=now,
                lease_duration_seconds=int(self.lease_seconds),
                lease_transitions=0,
            ),
        )
        try:
            self.api.create_namespaced_lease(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:  # another replica created it first
                return False
            raise
        return True

    def __post_init__(self) -> None:
        self.leading = threading.Event()  # set while this replica may act

    def start(self, stop: threading.Event) -> threading.Thread:
        """Contend for the Lease in the background until `stop`: `leading` is set from the
        first success, and cleared once renewing has failed for the renew deadline."""

        def contend() -> None:
            last_success = time.monotonic()
            while not stop.is_set():
                if self._attempt():
                    last_success = time.monotonic()
                    if not self.leading.is_set():
                        log.info(
                            "leading as %s (lease %s/%s)", self.identity, self.namespace, self.name
                        )
                        self.leading.set()
                elif (
                    self.leading.is_set()
                    and time.monotonic() - last_success > self.renew_deadline_seconds
                ):
                    log.error("lost the lease %s/%s: standing by", self.namespace, self.name)
                    self.leading.clear()
                stop.wait(self.renew_seconds)
            self.leading.clear()

        thread = threading.Thread(target=contend, name="leader-election", daemon=True)
        thread.start()
        return thread

    def _attempt(self) -> bool:
        try:
            return self.try_lead()
        except (ApiException, OSError) as exc:  # the API server away: not the leader now
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            return False
