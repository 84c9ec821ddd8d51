"""TLS files, SuperNode keys and the SuperLink's node list: what a deployment run with SuperNode authentication
needs (the deployment tests and the fault matrix's deployment cases)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from benchmarks.harness import BIN, ROOT, Processes, start_superlink, start_supernode


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """Write a CA (ca.crt) and a server certificate and key for 127.0.0.1/localhost signed by it; return the paths."""
    now = datetime.datetime.now(datetime.UTC)
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
    """The ids of the SuperNodes the SuperLink lists as online (none when the Control API did not answer)."""
    try:
        nodes = flwr_json(procs, "supernode", "list")["nodes"]
    except (subprocess.SubprocessError, ValueError, KeyError):
        return set()
    return {node["node-id"] for node in nodes if node["status"] == "online"}


def wait_until_online(procs: Processes, node_ids: set[str], timeout: float = 120.0) -> None:
    """Block until exactly ``node_ids`` are online."""
    deadline = time.time() + timeout
    while (online := online_node_ids(procs)) != node_ids:
        if time.time() > deadline:
            raise TimeoutError(f"online SuperNodes {sorted(online)}, expected {sorted(node_ids)} after {timeout} s")
        time.sleep(1.0)


def wait_until_count_online(procs: Processes, count: int, timeout: float = 120.0) -> None:
    """Block until ``count`` SuperNodes are online."""
    deadline = time.time() + timeout
    while len(online := online_node_ids(procs)) < count:
        if time.time() > deadline:
            raise TimeoutError(f"{len(online)} of {count} SuperNodes online after {timeout} s")
        time.sleep(1.0)


def start_authenticated_deployment(
    procs: Processes, partitions: list[int], num_partitions: int, node_configs: dict[int, str] | None = None
) -> tuple[int, list[str]]:
    """A TLS SuperLink with SuperNode auth and one registered SuperNode per entry of ``partitions`` (a partition may
    repeat; ``node_configs`` adds node config to the SuperNode at that index); return its port and their node ids,
    in that order, once all are online."""
    ca_cert, server_cert, server_key = write_tls_files(procs.home)
    port = start_superlink(procs, simulation=False, extra=(
        "--ssl-ca-certfile", str(ca_cert), "--ssl-certfile", str(server_cert), "--ssl-keyfile", str(server_key),
        "--enable-supernode-auth"))
    node_ids = []
    for index, partition_id in enumerate(partitions):
        private_key = procs.home / f"supernode-key-{index}"
        node_ids.append(str(flwr_json(procs, "supernode", "register", str(write_node_key(private_key)))["node-id"]))
        start_supernode(procs, port, partition_id, num_partitions, extra=(
            "--root-certificates", str(ca_cert), "--auth-supernode-private-key", str(private_key)),
            log_name=f"supernode-{index}", node_config=(node_configs or {}).get(index, ""))
    wait_until_online(procs, set(node_ids))
    return port, node_ids
