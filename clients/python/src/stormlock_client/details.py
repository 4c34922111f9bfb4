"""Typed details of the daemon's error answers.

The daemon puts them in the standard ``google.rpc.Status`` of an error (the
``grpc-status-details-bin`` trailer), read here with ``grpcio-status``, so
that callers never parse the message text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from grpc_status import rpc_status

from stormlock_client.v1 import lock_pb2

_Detail = TypeVar("_Detail", bound=Message)


def lease_evicted(error: grpc.RpcError) -> lock_pb2.LeaseEvicted | None:
    """Who broke a lease and why, from the ``FAILED_PRECONDITION`` error of
    ``Renew`` or ``IsHeld`` for a lease that an administrator force-released.

    None when the error carries no such detail: the lease expired or was
    released by its holder, the error is of another kind, or its status
    trailer does not match its code and message.

    >>> try:                                                  # doctest: +SKIP
    ...     locks.Renew(lock_pb2.RenewRequest(resource=r, lease_id=lease_id))
    ... except grpc.RpcError as error:
    ...     if evicted := lease_evicted(error):
    ...         print(f"{evicted.actor} broke the lease: {evicted.reason}")
    """
    return _detail(error, lock_pb2.LeaseEvicted)


def refusing_window(error: grpc.RpcError) -> lock_pb2.Window | None:
    """The window that refused a renewal, from the ``FAILED_PRECONDITION``
    error of ``Renew`` while a freeze window or someone's reservation that
    refuses the caller is in force on the resource, or starts within a
    second: its ``kind`` (``Window.KIND_FREEZE`` or
    ``Window.KIND_RESERVATION``), ``name``, ``reason``, ``starts_at`` and
    ``ends_at`` (and, for a reservation, ``owner`` and ``resource``).

    None when the error carries no such detail: the lease is not current
    (expired, released or broken; see :func:`lease_evicted`), the error is of
    another kind, or its status trailer does not match its code and message.
    (``Acquire`` is not refused with an error: its answer has ``acquired``
    false and the window in ``AcquireResponse.window``.)

    >>> try:                                                  # doctest: +SKIP
    ...     locks.Renew(lock_pb2.RenewRequest(resource=r, lease_id=lease_id, ttl=ttl))
    ... except grpc.RpcError as error:
    ...     if window := refusing_window(error):
    ...         until = window.ends_at.ToDatetime(datetime.timezone.utc)
    ...         print(f"{window.name} until {until:%H:%M}: {window.reason}")
    """
    return _detail(error, lock_pb2.Window)


def _detail(error: grpc.RpcError, kind: type[_Detail]) -> _Detail | None:
    """The first detail of type ``kind`` in the status of ``error``."""
    # The errors that synchronous stubs raise are also the finished call
    # (typeshed does not know it, hence the widening to object).
    call: object = error
    if not isinstance(call, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        # A trailer that contradicts the call's status is not the daemon's.
        return None
    details: Iterable[any_pb2.Any] = status.details if status is not None else ()
    for detail in details:
        found = kind()
        if detail.Unpack(found):  # False for a detail of another type
            return found
    return None
