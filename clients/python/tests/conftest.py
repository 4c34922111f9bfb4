"""Fixtures: one real ``stormlockd`` for the session, on a free loopback port
with its own data directory (and so its own development PKI), stopped at the
end; channels and stubs that talk to it over mutual TLS."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from stormlock_client import connect
from stormlock_client.v1 import lock_pb2_grpc

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Daemon:
    """A running daemon started by the tests."""

    address: str
    """``127.0.0.1:PORT``."""
    data_dir: Path
    """Its data directory; the development PKI is in ``tls/``."""
    log: Path
    """Its stderr."""

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"


def daemon_binary() -> Path:
    """``$STORMLOCK_BIN_DIR/stormlockd``, else ``$CARGO_TARGET_DIR/debug``,
    else the repository's ``target/debug``."""
    if bin_dir := os.environ.get("STORMLOCK_BIN_DIR"):
        candidates = [Path(bin_dir)]
    elif target := os.environ.get("CARGO_TARGET_DIR"):
        candidates = [Path(target) / "debug"]
    else:
        candidates = [REPO / "target" / "debug"]
    for directory in candidates:
        binary = directory / "stormlockd"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    pytest.fail(
        f"stormlockd not found in {', '.join(map(str, candidates))}: build it with "
        "`cargo build --bin stormlockd` or set STORMLOCK_BIN_DIR",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    binary = daemon_binary()
    root = tmp_path_factory.mktemp("stormlockd")
    data_dir = root / "data"
    log = root / "stormlockd.log"
    # The daemon must not pick up the caller's configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORMLOCK_")}
    port = free_port()
    address = f"127.0.0.1:{port}"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [str(binary), "--listen", address, "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "listening" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                pytest.fail(f"stormlockd exited with {proc.returncode}:\n{log_tail(log)}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"stormlockd not ready after {START_TIMEOUT}s:\n{log_tail(log)}", pytrace=False)
            time.sleep(0.05)
        yield Daemon(address=address, data_dir=data_dir, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def channel(daemon: Daemon) -> Iterator[grpc.Channel]:
    """A mutual-TLS channel with the daemon's development client certificate,
    given explicitly."""
    with connect(
        daemon.address,
        ca=daemon.tls_dir / "ca.crt",
        cert=daemon.tls_dir / "client.crt",
        key=daemon.tls_dir / "client.key",
    ) as ch:
        yield ch


@pytest.fixture(scope="session")
def locks(channel: grpc.Channel) -> lock_pb2_grpc.LockServiceStub:
    return lock_pb2_grpc.LockServiceStub(channel)


@pytest.fixture
def resource() -> str:
    """A resource name no other test uses."""
    return f"py-tests/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def copy_of_package(tmp_path: Path) -> Path:
    """The Python package's sources, copied so a build leaves no files behind."""
    src = REPO / "clients" / "python"
    dest = tmp_path / "python"
    shutil.copytree(
        src,
        dest,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".mypy_cache", ".pytest_cache"),
    )
    return dest
