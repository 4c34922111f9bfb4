"""The generated Python stubs against a real stormlockd over mutual TLS."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import Daemon
from stormlock_client import connect, lease_evicted, refusing_window
from stormlock_client.v1 import lock_pb2, lock_pb2_grpc
from stormlock_client.v1.lock_pb2_grpc import LockServiceStub

LEASE_ID = re.compile(r"^[0-9a-f]{32}$")
TIMEOUT = 10.0


def acquire(locks: LockServiceStub, resource: str, ttl: int = 600, reason: str = "") -> lock_pb2.AcquireResponse:
    return locks.Acquire(
        lock_pb2.AcquireRequest(resource=resource, ttl=Duration(seconds=ttl), reason=reason),
        timeout=TIMEOUT,
    )


def status(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, str]:
    """The code and message of a failed call (the raised error is also a grpc.Call)."""
    error: Any = excinfo.value
    return error.code(), error.details() or ""


def test_health_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "stormlock.v1.LockService"):
        # typeshed's HealthStub declares no methods, hence the ignore.
        answer = health.Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_acquire_grants_a_lease(locks: LockServiceStub, resource: str) -> None:
    before = time.time()
    answer = acquire(locks, resource, ttl=600, reason="python suite")
    assert answer.acquired
    assert not answer.HasField("holder")
    lease = answer.lease
    assert lease.resource == resource
    assert LEASE_ID.match(lease.lease_id), lease.lease_id
    assert "@" in lease.principal, lease.principal  # user@host of the client certificate
    assert lease.reason == "python suite"
    assert lease.fence > 0
    assert before - 2 <= lease.acquired_at.ToSeconds() <= time.time() + 2
    assert lease.expires_at.ToSeconds() - lease.acquired_at.ToSeconds() == pytest.approx(600, abs=1)


def test_contention_is_an_answer_naming_the_holder(locks: LockServiceStub, resource: str) -> None:
    first = acquire(locks, resource, reason="deploying")
    assert first.acquired

    second = acquire(locks, resource, reason="me too")
    assert not second.acquired
    assert not second.HasField("lease")
    holder = second.holder
    assert holder.resource == resource
    assert holder.principal == first.lease.principal
    assert holder.reason == "deploying"
    assert holder.fence == first.lease.fence
    assert holder.acquired_at == first.lease.acquired_at
    # The caller is the holder (same client certificate), so it sees the id.
    assert holder.lease_id == first.lease.lease_id


def test_renew_sets_a_new_expiry(locks: LockServiceStub, resource: str) -> None:
    lease = acquire(locks, resource, ttl=60).lease
    renewed = locks.Renew(
        lock_pb2.RenewRequest(resource=resource, lease_id=lease.lease_id, ttl=Duration(seconds=7200)),
        timeout=TIMEOUT,
    ).lease
    assert renewed.lease_id == lease.lease_id
    assert renewed.fence == lease.fence
    assert renewed.expires_at.ToSeconds() == pytest.approx(time.time() + 7200, abs=5)
    current = locks.Current(lock_pb2.CurrentRequest(resource=resource), timeout=TIMEOUT)
    assert current.lease.expires_at == renewed.expires_at


def test_renew_of_a_released_lease_fails_precondition(locks: LockServiceStub, resource: str) -> None:
    lease = acquire(locks, resource).lease
    locks.Release(lock_pb2.ReleaseRequest(resource=resource, lease_id=lease.lease_id), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as excinfo:
        locks.Renew(lock_pb2.RenewRequest(resource=resource, lease_id=lease.lease_id), timeout=TIMEOUT)
    assert status(excinfo)[0] == grpc.StatusCode.FAILED_PRECONDITION


def test_renew_and_is_held_of_a_broken_lease_say_who_broke_it(locks: LockServiceStub, resource: str) -> None:
    lease = acquire(locks, resource, reason="long job").lease
    broken = locks.ForceRelease(
        lock_pb2.ForceReleaseRequest(resource=resource, reason="incident 42"), timeout=TIMEOUT
    ).released
    assert broken.lease_id == lease.lease_id
    renew = lock_pb2.RenewRequest(resource=resource, lease_id=lease.lease_id)
    is_held = lock_pb2.IsHeldRequest(resource=resource, lease_id=lease.lease_id)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("Renew", lambda: locks.Renew(renew, timeout=TIMEOUT)),
        ("IsHeld", lambda: locks.IsHeld(is_held, timeout=TIMEOUT)),
    ]
    for name, call in calls:
        with pytest.raises(grpc.RpcError) as excinfo:
            call()
        assert status(excinfo)[0] == grpc.StatusCode.FAILED_PRECONDITION, name
        evicted = lease_evicted(excinfo.value)
        # The development client certificate is the administrator's.
        assert evicted == lock_pb2.LeaseEvicted(actor=lease.principal, reason="incident 42"), name
        assert refusing_window(excinfo.value) is None, name


def test_an_expired_or_released_lease_has_no_eviction(locks: LockServiceStub, resource: str) -> None:
    expired = acquire(locks, resource, ttl=1).lease
    time.sleep(2.2)
    released = acquire(locks, resource).lease
    locks.Release(lock_pb2.ReleaseRequest(resource=resource, lease_id=released.lease_id), timeout=TIMEOUT)
    for lease in (expired, released):
        with pytest.raises(grpc.RpcError) as excinfo:
            locks.Renew(lock_pb2.RenewRequest(resource=resource, lease_id=lease.lease_id), timeout=TIMEOUT)
        assert status(excinfo)[0] == grpc.StatusCode.FAILED_PRECONDITION
        assert lease_evicted(excinfo.value) is None
        assert refusing_window(excinfo.value) is None


def test_lease_evicted_of_other_errors_is_none(locks: LockServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        locks.Acquire(lock_pb2.AcquireRequest(resource=""), timeout=TIMEOUT)
    assert lease_evicted(excinfo.value) is None
    assert lease_evicted(NotACall()) is None
    assert refusing_window(excinfo.value) is None
    assert refusing_window(NotACall()) is None


def test_a_freeze_in_force_refuses_acquire_with_the_window(frozen_locks: LockServiceStub) -> None:
    answer = acquire(frozen_locks, "frozen/x")
    assert not answer.acquired
    assert not answer.HasField("lease")
    assert not answer.HasField("holder"), "no lease holds it"
    window = answer.window
    assert window.kind == lock_pb2.Window.KIND_FREEZE
    assert (window.name, window.reason) == ("release-freeze", "release week")
    assert window.starts_at.ToSeconds() <= time.time() < window.ends_at.ToSeconds()
    assert window.ends_at.ToSeconds() - window.starts_at.ToSeconds() == 3600


def test_renew_into_a_freeze_is_refused_with_the_window(frozen_locks: LockServiceStub) -> None:
    answer = acquire(frozen_locks, "soon/x", ttl=600)
    assert answer.acquired, (
        f"soon-freeze began before the lease was taken (the daemon started too slowly?): {answer.window}"
    )
    cut = answer.cut_short_by
    assert (cut.kind, cut.name) == (lock_pb2.Window.KIND_FREEZE, "soon-freeze")
    start = cut.starts_at.ToSeconds()
    assert answer.lease.expires_at.ToSeconds() <= start, "never granted past the start"

    # Until the daemon says the window is in force (bounded).
    deadline = time.monotonic() + 30
    while not frozen_locks.Current(lock_pb2.CurrentRequest(resource="soon/x"), timeout=TIMEOUT).HasField("window"):
        assert time.monotonic() < deadline, f"soon-freeze not in force by {start}"
        time.sleep(0.1)
    # With a TTL: the daemon weighs the window before the lease, which ended
    # at the start (without one it would look up the lease's own TTL first,
    # and answer that the lease is not current).
    with pytest.raises(grpc.RpcError) as excinfo:
        frozen_locks.Renew(
            lock_pb2.RenewRequest(resource="soon/x", lease_id=answer.lease.lease_id, ttl=Duration(seconds=60)),
            timeout=TIMEOUT,
        )
    code, message = status(excinfo)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    window = refusing_window(excinfo.value)
    assert window is not None, message
    assert window.kind == lock_pb2.Window.KIND_FREEZE
    assert (window.name, window.reason) == ("soon-freeze", "starting soon")
    assert window.starts_at == cut.starts_at
    assert window.ends_at.ToSeconds() == start + 3600
    assert lease_evicted(excinfo.value) is None


class NotACall(grpc.RpcError):
    """An RpcError that is not a finished call, as an interceptor may raise."""

    def __init__(self) -> None:
        super().__init__("not a call")


def test_is_held_tells_current_from_stale(locks: LockServiceStub, resource: str) -> None:
    lease = acquire(locks, resource).lease

    def held(lease_id: str) -> bool:
        answer = locks.IsHeld(lock_pb2.IsHeldRequest(resource=resource, lease_id=lease_id), timeout=TIMEOUT)
        return answer.held

    assert held(lease.lease_id)
    assert not held(uuid.uuid4().hex)
    locks.Release(lock_pb2.ReleaseRequest(resource=resource, lease_id=lease.lease_id), timeout=TIMEOUT)
    assert not held(lease.lease_id)


def test_release_frees_the_resource_and_is_idempotent(locks: LockServiceStub, resource: str) -> None:
    lease = acquire(locks, resource).lease
    request = lock_pb2.ReleaseRequest(resource=resource, lease_id=lease.lease_id)
    assert locks.Release(request, timeout=TIMEOUT).released
    assert not locks.Current(lock_pb2.CurrentRequest(resource=resource), timeout=TIMEOUT).HasField("lease")
    assert not locks.Release(request, timeout=TIMEOUT).released
    assert acquire(locks, resource).acquired


def test_current_shows_the_holder(locks: LockServiceStub, resource: str) -> None:
    assert not locks.Current(lock_pb2.CurrentRequest(resource=resource), timeout=TIMEOUT).HasField("lease")
    lease = acquire(locks, resource, reason="looking").lease
    current = locks.Current(lock_pb2.CurrentRequest(resource=resource), timeout=TIMEOUT)
    assert current.lease == lease


def test_list_pages_through_a_prefix(locks: LockServiceStub) -> None:
    prefix = f"py-list-{uuid.uuid4().hex[:8]}/"
    names = [f"{prefix}{i}" for i in (3, 0, 4, 1, 2)]
    for name in names:
        assert acquire(locks, name).acquired
    assert acquire(locks, f"{prefix[:-1]}-outside").acquired  # shares the text, not the prefix

    pages: list[list[str]] = []
    token = ""
    while True:
        page = locks.List(lock_pb2.ListRequest(prefix=prefix, page_size=2, page_token=token), timeout=TIMEOUT)
        pages.append([lease.resource for lease in page.leases])
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 10, "List keeps returning a next page"
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [name for p in pages for name in p] == sorted(names)


def test_fence_increases_with_every_acquisition(locks: LockServiceStub, resource: str) -> None:
    fences = []
    for _ in range(3):
        lease = acquire(locks, resource).lease
        fences.append(lease.fence)
        assert locks.Release(
            lock_pb2.ReleaseRequest(resource=resource, lease_id=lease.lease_id), timeout=TIMEOUT
        ).released
    assert fences[0] < fences[1] < fences[2], fences


@pytest.mark.parametrize(
    ("request_", "word"),
    [
        (lock_pb2.AcquireRequest(resource="", ttl=Duration(seconds=60)), "resource"),
        (lock_pb2.AcquireRequest(resource="py-tests/zero-ttl", ttl=Duration(seconds=0)), "ttl"),
        (lock_pb2.AcquireRequest(resource="py-tests/bad\nname"), "control"),
    ],
    ids=["empty-resource", "zero-ttl", "control-character"],
)
def test_bad_input_is_invalid_argument(locks: LockServiceStub, request_: lock_pb2.AcquireRequest, word: str) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        locks.Acquire(request_, timeout=TIMEOUT)
    code, message = status(excinfo)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert word in message, message


def test_connect_without_tls_settings_uses_the_dev_certificates(
    daemon: Daemon, resource: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORMLOCK_DATA_DIR", str(daemon.data_dir))
    port = daemon.address.rsplit(":", 1)[1]
    for address in (daemon.address, f"https://127.0.0.1:{port}", f"localhost:{port}"):
        with connect(address) as channel:
            answer = LockServiceStub(channel).Current(lock_pb2.CurrentRequest(resource=resource), timeout=TIMEOUT)
            assert not answer.HasField("lease"), address


def test_stormlock_addr_is_the_default_address(
    daemon: Daemon, resource: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORMLOCK_DATA_DIR", str(daemon.data_dir))
    monkeypatch.setenv("STORMLOCK_ADDR", daemon.address)
    with connect() as channel:
        assert acquire(LockServiceStub(channel), resource).acquired


def test_refused_without_a_client_certificate(daemon: Daemon, locks: LockServiceStub, resource: str) -> None:
    with connect(daemon.address, ca=daemon.tls_dir / "ca.crt") as channel:
        stub = lock_pb2_grpc.LockServiceStub(channel)
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Acquire(lock_pb2.AcquireRequest(resource=resource), timeout=TIMEOUT)
    assert status(excinfo)[0] == grpc.StatusCode.UNAVAILABLE
    # Nothing was taken on the refused connection.
    assert not locks.Current(lock_pb2.CurrentRequest(resource=resource), timeout=TIMEOUT).HasField("lease")


def test_refused_when_the_daemon_is_not_trusted(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> None:
    # The client certificate is fine, but the CA is not the daemon's: the
    # client must not talk to a server it cannot verify.
    other = tmp_path_factory.mktemp("other-ca")
    (other / "ca.crt").write_bytes((daemon.tls_dir / "client.crt").read_bytes())
    with connect(
        daemon.address,
        ca=other / "ca.crt",
        cert=daemon.tls_dir / "client.crt",
        key=daemon.tls_dir / "client.key",
    ) as channel:
        with pytest.raises(grpc.RpcError) as excinfo:
            LockServiceStub(channel).Current(lock_pb2.CurrentRequest(resource="py-tests/x"), timeout=TIMEOUT)
    code, message = status(excinfo)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in message, message
