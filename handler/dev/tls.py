"""TLS for the tests and the benchmarks: a private CA with server certificates made by openssl, and Debian's
redis-server 7.0.15 (the one build here with TLS, handler/dev/redis_binaries.py) serving them, as one node
or as a cluster."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, free_port

Binary = tuple[Path, dict[str, str]]  # redis-server and the environment it needs (redis_binaries.py)
BOTH_VERSIONS = "TLSv1.2 TLSv1.3"


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    other_host_cert: Path
    other_host_key: Path
    untrusted_ca: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue_certificate(folder: Path, name: str, san: str) -> tuple[Path, Path]:
    """A server certificate `<name>.pem` (and key) signed by the CA in `folder`, with `san` as its
    subjectAltName (e.g. `DNS:localhost`: a host name only, no IP address)."""
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.pem",
        cwd=folder,
    )
    return folder / f"{name}.pem", folder / f"{name}.key"


def make_ca(folder: Path, name: str = "ca") -> Path:
    """A private CA, `<name>.pem` and its key, in `folder` (openssl)."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        cwd=folder,
    )
    return folder / f"{name}.pem"


def make_certificates(folder: Path) -> Certificates:
    """A private CA, a server certificate for localhost/127.0.0.1, one for another host, another CA."""
    for ca in ("ca", "untrusted-ca"):
        make_ca(folder, ca)
    for name, san in (("server", "DNS:localhost,IP:127.0.0.1"), ("other", "DNS:other.example")):
        issue_certificate(folder, name, san)
    return Certificates(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "other.pem",
        folder / "other.key",
        folder / "untrusted-ca.pem",
    )


def _tls_only(port: str, cert: Path, key: Path, ca: Path) -> list[str]:
    """A server's arguments to speak only TLS on `port`, serving `cert`, clients not asked for theirs."""
    return [
        "--tls-port",
        port,
        "--port",
        "0",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
    ]


def tls_server(binary: Binary, cert: Path, key: Path, ca: Path, protocols: str = BOTH_VERSIONS) -> LocalRedis:
    """A started server that speaks only TLS, serving `cert`; the caller cleans it up."""
    port = free_port()
    args = [*_tls_only(str(port), cert, key, ca), "--tls-protocols", protocols]
    probe = {"ssl": True, "ssl_ca_certs": str(ca), "ssl_check_hostname": False}
    return LocalRedis(binary[0], port=port, extra_args=args, env=binary[1], probe_options=probe).start()


def local_tls_cluster(
    binary: Binary,
    cert: Path,
    key: Path,
    ca: Path,
    *,
    replicas_per_master: int = 1,
    client_options: dict[str, Any] | None = None,
) -> LocalCluster:
    """Debian's Redis 7.0.15 as a cluster (not started) that speaks only TLS: to clients, on its bus and to
    replicas, every node serving `cert`. `client_options` are the set-up and probe clients' (default:
    verified against the CA and 127.0.0.1, the address each node is dialled at)."""
    args = [*_tls_only("{port}", cert, key, ca), "--tls-cluster", "yes", "--tls-replication", "yes"]
    options = client_options or {"ssl": True, "ssl_ca_certs": str(ca)}
    return LocalCluster(
        binary[0],
        replicas_per_master=replicas_per_master,
        extra_args=args,
        env=binary[1],
        client_options=options,
    )
