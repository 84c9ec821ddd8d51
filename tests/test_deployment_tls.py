"""Deployment with TLS and SuperNode authentication: only SuperNodes whose public keys were registered join."""

import datetime
import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from benchmarks.harness import BIN, ROOT, Processes, flwr_run, read_metrics, start_superlink, start_supernode


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """Write a CA (ca.crt) and a server certificate and key for 127.0.0.1/localhost signed by it; return the paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warmfed test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def write_node_key(private_key_path: Path) -> Path:
    """Write a SuperNode key pair as Flower expects it (EC P-384, OpenSSH format); return the public key's path."""
    key = ec.generate_private_key(ec.SECP384R1())
    private_key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public_key_path = private_key_path.with_suffix(".pub")
    public_key_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return public_key_path


def flwr_json(procs: Processes, *args: str) -> dict:
    """Run `flwr <args> test --format json` through the Control API and return its JSON answer."""
    done = subprocess.run([str(BIN / "flwr"), *args, "test", "--format", "json"], env=procs.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def online_node_ids(procs: Processes) -> set[str]:
    """The ids of the SuperNodes the SuperLink lists as online."""
    return {node["node-id"] for node in flwr_json(procs, "supernode", "list")["nodes"] if node["status"] == "online"}


def wait_until_online(procs: Processes, node_ids: set[str], timeout: float = 120.0) -> None:
    """Block until exactly ``node_ids`` are online."""
    deadline = time.time() + timeout
    while (online := online_node_ids(procs)) != node_ids:
        if time.time() > deadline:
            raise TimeoutError(f"online SuperNodes {sorted(online)}, expected {sorted(node_ids)} after {timeout} s")
        time.sleep(1.0)


@pytest.fixture
def tls_deployment(tmp_path_factory) -> Iterator[tuple[Processes, int, set[str]]]:
    """A TLS SuperLink with SuperNode auth and two registered SuperNodes; yields processes, port and node ids."""
    procs = Processes(tmp_path_factory.mktemp("flwr-tls"))
    ca_cert, server_cert, server_key = write_tls_files(procs.home)
    port = start_superlink(procs, simulation=False, extra=(
        "--ssl-ca-certfile", str(ca_cert), "--ssl-certfile", str(server_cert), "--ssl-keyfile", str(server_key),
        "--enable-supernode-auth"))
    node_ids = set()
    for partition_id in range(2):
        private_key = procs.home / f"supernode-{partition_id}"
        registered = flwr_json(procs, "supernode", "register", str(write_node_key(private_key)))
        node_ids.add(str(registered["node-id"]))
        start_supernode(procs, port, partition_id, 2, extra=(
            "--root-certificates", str(ca_cert), "--auth-supernode-private-key", str(private_key)))
    wait_until_online(procs, node_ids)
    yield procs, port, node_ids
    procs.stop()


def test_registered_supernodes_run_warmfed_over_tls_and_an_unregistered_one_is_refused(
    tls_deployment, tmp_path, shared_cache, tiny_pipeline_dir
):
    """The unregistered SuperNode exits at activation and never comes online; the two registered ones run WarmFed."""
    procs, port, registered_ids = tls_deployment
    intruder_key = procs.home / "intruder"
    write_node_key(intruder_key)
    intruder = start_supernode(procs, port, 2, 3, extra=(
        "--root-certificates", str(procs.home / "ca.crt"), "--auth-supernode-private-key", str(intruder_key)))
    assert intruder.wait(timeout=60) == 1, "Flower exits 1 when the SuperLink does not know the node's key"
    intruder_log = (procs.home / "supernode-2.log").read_text()
    assert "Failed to activate SuperNode" in intruder_log and "Exit Code: 305" in intruder_log
    assert "No SuperNode found with the given public key" in (procs.home / "superlink.log").read_text()
    assert online_node_ids(procs) == registered_ids

    config = {"algorithm": "warmfed", "data.domains": "mnist,digits", "data.num-clients": 2,
              "data.max-per-domain": 300, "train.rounds": 1, "generator.base": str(tiny_pipeline_dir),
              "lora.steps": 2, "lora.batch-size": 8, "synthesis.images-per-class": 4, "synthesis.steps": 2,
              "warmfed.warm-epochs": 1, "device": "cpu", "output-dir": str(tmp_path), "run-name": "tls",
              "cache-dir": str(shared_cache)}
    done = flwr_run(procs, config, None, 600)
    run = tmp_path / "tls"
    assert (run / "metrics.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    rounds = {r["round"]: r for r in read_metrics(run)["rounds"]}
    assert sorted(rounds) == [0, 1]
    assert rounds[0]["clients_accepted"] == 2 and rounds[1]["clients_ok"] == 2
    assert all(rounds[r]["clients_sampled"] == rounds[r]["clients_evaluated"] == 2 for r in rounds)
    assert all(0.0 <= rounds[r]["global_acc_pooled"] <= 1.0 for r in rounds)
