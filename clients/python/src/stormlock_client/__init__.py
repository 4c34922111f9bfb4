"""Python client for Stormlock, the lease-based lock service.

- :func:`connect` opens a gRPC channel to ``stormlockd`` with the settings the
  ``stormlock`` CLI uses (address, CA, client certificate and key; the local
  daemon's development certificates for a loopback address).
- :func:`lease_evicted` reads who broke a lease and why from the
  ``FAILED_PRECONDITION`` error of ``Renew`` or ``IsHeld``.
- :func:`refusing_window` reads the freeze window or reservation that refused
  a renewal from the ``FAILED_PRECONDITION`` error of ``Renew``.
- :mod:`stormlock_client.v1` holds the generated modules: ``lock_pb2``
  (messages) and ``lock_pb2_grpc`` (``LockServiceStub``).
"""

from stormlock_client.channel import (
    DEFAULT_ADDRESS,
    DEFAULT_PORT,
    ChannelSettings,
    Target,
    connect,
    default_data_dir,
    parse_address,
    resolve,
)
from stormlock_client.details import lease_evicted, refusing_window

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_PORT",
    "ChannelSettings",
    "Target",
    "connect",
    "default_data_dir",
    "lease_evicted",
    "parse_address",
    "refusing_window",
    "resolve",
]
