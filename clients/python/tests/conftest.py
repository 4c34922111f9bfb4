"""Fixtures: one real ``stormlockd`` for the session, on a free loopback port
with its own data directory (and so its own development PKI), stopped at the
end; channels and stubs that talk to it over mutual TLS. The tests of freeze
windows get a daemon of their own, started with ``[[freezes]]``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
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


@contextmanager
def running_daemon(root: Path, config: str | None = None) -> Iterator[Daemon]:
    """A daemon with its data directory and log in ``root`` and, when given,
    the configuration file ``config`` (else none: the defaults), from when it
    listens until the end of the block."""
    binary = daemon_binary()
    data_dir = root / "data"
    log = root / "stormlockd.log"
    args = []
    if config is not None:
        (root / "stormlockd.toml").write_text(config)
        args = ["--config", str(root / "stormlockd.toml")]
    # The daemon must not pick up the caller's configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORMLOCK_")}
    port = free_port()
    address = f"127.0.0.1:{port}"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [str(binary), *args, "--listen", address, "--data-dir", str(data_dir)],
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
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("stormlockd")) as d:
        yield d


def dev_channel(daemon: Daemon) -> grpc.Channel:
    """A mutual-TLS channel with the daemon's development client certificate,
    given explicitly."""
    return connect(
        daemon.address,
        ca=daemon.tls_dir / "ca.crt",
        cert=daemon.tls_dir / "client.crt",
        key=daemon.tls_dir / "client.key",
    )


@pytest.fixture(scope="session")
def channel(daemon: Daemon) -> Iterator[grpc.Channel]:
    """A mutual-TLS channel with the daemon's development client certificate,
    given explicitly."""
    with dev_channel(daemon) as ch:
        yield ch


@pytest.fixture(scope="session")
def locks(channel: grpc.Channel) -> lock_pb2_grpc.LockServiceStub:
    return lock_pb2_grpc.LockServiceStub(channel)


SOON_LEAD = 5
"""Seconds from writing the configuration of ``frozen_locks`` to the start of
its ``soon-freeze``: time for the daemon to start and a lease to be taken
before it (a lease is refused from one second before the start)."""


def rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def freezes_config(now: float) -> str:
    """Two freeze windows that exempt nobody (the development client is
    refused like anyone): ``release-freeze`` on ``frozen/**``, in force since a
    minute ago for an hour, and ``soon-freeze`` on ``soon/**``, from
    ``SOON_LEAD`` seconds after ``now`` (whole seconds) for an hour."""
    start = int(now)
    return f"""\
[[freezes]]
name = "release-freeze"
match = ["frozen/**"]
start = "{rfc3339(start - 60)}"
duration = "1h"
reason = "release week"

[[freezes]]
name = "soon-freeze"
match = ["soon/**"]
start = "{rfc3339(start + SOON_LEAD)}"
duration = "1h"
reason = "starting soon"
"""


@pytest.fixture(scope="module")
def frozen_locks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lock_pb2_grpc.LockServiceStub]:
    """A stub of a daemon of its own, started with ``freezes_config`` (so
    ``soon-freeze`` starts ``SOON_LEAD`` seconds after this fixture)."""
    config = freezes_config(time.time())
    with running_daemon(tmp_path_factory.mktemp("stormlockd-freezes"), config) as d, dev_channel(d) as ch:
        yield lock_pb2_grpc.LockServiceStub(ch)


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
