"""Mutual TLS on loopback: the run's own peers get in, everyone else is refused."""

from __future__ import annotations

import re
import stat
import textwrap
from pathlib import Path

import grpc
import pytest
import torch
import yaml
from lipizzaner_cell.exchange.client import centre_call
from lipizzaner_cell.exchange.server import CellService, CentreBoard, start_server
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.channels import channel
from lipizzaner_core.wire.status import get_status, status_call
from lipizzaner_core.wire.tls import (
    CertificateAuthority,
    TlsError,
    TlsMaterial,
    generate,
    run_identity,
)
from test_wire import centre, puller_for

RUN_A, RUN_B = run_identity("alpha", "ml"), run_identity("beta", "ml")


@pytest.fixture(scope="module")
def material() -> TlsMaterial:
    return generate(RUN_A)


@pytest.fixture
def secured(material):
    """A cell of run alpha serving over mutual TLS; yields its service and address."""
    board = CentreBoard()
    board.publish(centre(cell=1, generation=2))
    service = CellService(
        board, lambda: cell_pb2.CellStatus(cell=1, generation=2), identity=material.identity
    )
    server, port = start_server(service, 0, "127.0.0.1", tls=material)
    yield service, f"127.0.0.1:{port}"
    server.stop(None)


def status_code(grpc_channel: grpc.Channel) -> grpc.StatusCode:
    try:
        status_call(grpc_channel)(cell_pb2.StatusRequest(), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_a_peer_of_the_same_run_pulls_its_state(secured, material):
    service, address = secured
    puller = puller_for(centre(cell=1, generation=0), address, tls=material)
    with channel(address, tls=material) as grpc_channel:
        assert puller.pull_once(centre_call(grpc_channel))
        assert get_status(grpc_channel, timeout=10).generation == 2
    assert puller.latest.generation == 2
    assert torch.equal(puller.latest.generator["0.weight"], centre(1, 2).generator["0.weight"])
    assert service.refused == {"malformed": 0, "peer": 0}


def test_a_peer_without_a_certificate_is_refused(secured, material):
    _, address = secured
    with grpc.insecure_channel(address) as plaintext:
        assert status_code(plaintext) == grpc.StatusCode.UNAVAILABLE
    # TLS that trusts the run's CA but shows no client certificate of its own
    anonymous = grpc.ssl_channel_credentials(root_certificates=material.ca)
    options = material.channel_options()
    with grpc.secure_channel(address, anonymous, options=options) as no_certificate:
        assert status_code(no_certificate) == grpc.StatusCode.UNAVAILABLE


def test_a_peer_with_another_runs_certificate_is_refused(secured):
    _, address = secured
    with channel(address, tls=generate(RUN_B)) as other_run:
        assert status_code(other_run) == grpc.StatusCode.UNAVAILABLE


def test_a_cell_does_not_pull_from_a_server_of_another_run(material):
    """The client checks the server too: a look-alike of another run gives nothing."""
    other = generate(RUN_B)
    board = CentreBoard()
    board.publish(centre(cell=1, generation=5))
    server, port = start_server(
        CellService(board, lambda: cell_pb2.CellStatus(), identity=other.identity),
        0,
        "127.0.0.1",
        tls=other,
    )
    try:
        puller = puller_for(centre(cell=1, generation=0), f"127.0.0.1:{port}", tls=material)
        with channel(f"127.0.0.1:{port}", tls=material) as grpc_channel:
            assert not puller.pull_once(centre_call(grpc_channel))
    finally:
        server.stop(None)
    assert puller.latest is None and puller.stats.failures == 1
    assert puller.stats.last_error.startswith("UNAVAILABLE")


def test_a_shared_issuer_does_not_let_another_run_in():
    """cert-manager with one ClusterIssuer: the chain is valid, the identity is not."""
    issuer = CertificateAuthority.new("cluster issuer")
    alpha, beta = issuer.issue(RUN_A), issuer.issue(RUN_B)
    service = CellService(CentreBoard(), lambda: cell_pb2.CellStatus(), identity=RUN_A)
    server, port = start_server(service, 0, "127.0.0.1", tls=alpha)
    address = f"127.0.0.1:{port}"
    try:
        with channel(address, tls=alpha) as same_run:
            assert status_code(same_run) == grpc.StatusCode.OK
        # beta's certificate, dressed up to expect alpha's server name
        options = alpha.channel_options()
        with grpc.secure_channel(address, beta.channel_credentials(), options) as other_run:
            assert status_code(other_run) == grpc.StatusCode.PERMISSION_DENIED
            stream = centre_call(other_run)(cell_pb2.CentreRequest(newer_than_generation=-1))
            with pytest.raises(grpc.RpcError) as refused:
                list(stream)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        server.stop(None)
    assert service.refused == {"malformed": 0, "peer": 2}


def test_a_long_namespace_still_gets_a_certificate():
    identity = run_identity("r" * 42, "n" * 63)
    assert generate(identity).identity == identity


def test_material_round_trips_through_a_private_directory(material, tmp_path):
    folder = material.write(tmp_path / "tls")
    assert TlsMaterial.read(folder) == material
    assert material.identity == RUN_A == "alpha.ml.lipizzaner"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "tls.key").stat().st_mode) == 0o600


def test_missing_or_broken_material_is_named(material, tmp_path):
    with pytest.raises(TlsError, match="not a directory"):
        TlsMaterial.read(tmp_path / "absent")
    folder = material.write(tmp_path / "tls")
    (folder / "tls.key").unlink()
    with pytest.raises(TlsError, match=r"missing tls\.key"):
        TlsMaterial.read(folder)
    with pytest.raises(TlsError, match=r"^Secret demo-tls: "):
        TlsMaterial.from_files(
            {"ca.crt": material.ca, "tls.crt": b"not a certificate", "tls.key": material.key},
            "Secret demo-tls",
        )


def test_the_documented_cert_manager_certificate_names_the_runs_identity():
    """docs/exchange.md's Certificate: its first DNS name is what the run's cells expect."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "exchange.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    certificate = next(
        d
        for d in map(yaml.safe_load, map(textwrap.dedent, blocks))
        if d.get("kind") == "Certificate"
    )
    identity = certificate["spec"]["dnsNames"][0]
    assert identity == run_identity("demo", certificate["metadata"]["namespace"])
    assert certificate["spec"]["secretName"] == certificate["metadata"]["name"]
    issued = CertificateAuthority.new("lipizzaner-ca").issue(identity)
    assert issued.identity == identity
