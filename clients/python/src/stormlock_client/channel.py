"""Opening a gRPC channel to ``stormlockd`` the way the ``stormlock`` CLI does.

The settings are the CLI's: the daemon address (``host:port``,
``https://host[:port]``, or ``http://host[:port]`` for a daemon started with
``--insecure``; default ``$STORMLOCK_ADDR``, else ``127.0.0.1:7466``), a CA
certificate, and a client certificate and key for mutual TLS.

With a loopback address and no TLS settings at all, the channel uses the
development PKI that a local daemon without TLS configuration creates in its
data directory (``$STORMLOCK_DATA_DIR``, else ``$XDG_STATE_HOME/stormlock``,
else ``~/.local/state/stormlock``; files under ``tls/``). For a loopback IP
address the TLS server name is ``localhost``, the name in the daemon's
development certificate.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import grpc

DEFAULT_PORT = 7466
"""The daemon's default gRPC port."""

DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
"""Where the daemon listens when started without configuration."""

StrPath = Union[str, os.PathLike[str]]
ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class Target:
    """A parsed daemon address."""

    host: str
    """Host name or IP address (IPv6 without brackets)."""
    port: int
    """TCP port."""
    tls: bool = True
    """False only for an explicit ``http://`` address (a daemon run with ``--insecure``)."""

    @property
    def grpc_target(self) -> str:
        """The address in the form gRPC expects: ``host:port`` or ``[v6]:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """True for ``localhost`` and loopback IP addresses."""
        return self.host.lower() == "localhost" or _is_loopback_ip(self.host)


def parse_address(address: str) -> Target:
    """Parses ``host``, ``host:port``, ``[v6]:port`` or the same after
    ``https://`` (TLS) or ``http://`` (plain text). The port defaults to 7466.

    Raises ``ValueError`` for anything else.
    """
    text = address.strip()
    tls = True
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme.lower() == "http":
            tls = False
        elif scheme.lower() != "https":
            raise ValueError(f"unsupported scheme in daemon address {address!r}: use https:// or http://")
        text = text.rstrip("/")
        if "/" in text:
            raise ValueError(f"daemon address {address!r} has a path; give only host and port")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"daemon address {address!r}: missing ']' after the IPv6 address")
        if rest and not rest.startswith(":"):
            raise ValueError(f"daemon address {address!r}: expected ':port' after ']'")
        port = _port(rest[1:], address) if rest else DEFAULT_PORT
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, address)
    else:
        # No colon, or a bare IPv6 address.
        host, port = text, DEFAULT_PORT
    if not host:
        raise ValueError(f"daemon address {address!r} has no host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"daemon address {address!r}: {host!r} is not an IPv6 address") from None
    return Target(host=host, port=port, tls=tls)


def default_data_dir() -> Path:
    """The daemon's default data directory: ``$STORMLOCK_DATA_DIR``, else
    ``$XDG_STATE_HOME/stormlock``, else ``~/.local/state/stormlock``."""
    if data_dir := os.environ.get("STORMLOCK_DATA_DIR"):
        return Path(data_dir)
    if state := os.environ.get("XDG_STATE_HOME"):
        return Path(state) / "stormlock"
    if home := os.environ.get("HOME"):
        return Path(home) / ".local" / "state" / "stormlock"
    return Path("stormlock-state")


@dataclass(frozen=True)
class ChannelSettings:
    """Everything needed to open a channel, resolved by :func:`resolve`."""

    target: Target
    """Where the daemon is."""
    ca: Path | None
    """CA certificate (PEM) that signed the daemon's certificate; None: the system's roots."""
    cert: Path | None
    """Client certificate chain (PEM) for mutual TLS; None: no client certificate."""
    key: Path | None
    """Private key (PEM) of ``cert``."""
    server_name: str | None
    """Name to verify the daemon's certificate against, when not the address's host."""

    def channel(self, options: ChannelOptions = ()) -> grpc.Channel:
        """Opens a channel with these settings (gRPC connects lazily)."""
        target = self.target.grpc_target
        if not self.target.tls:
            return grpc.insecure_channel(target, options=list(options))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )
        all_options = list(options)
        if self.server_name is not None:
            all_options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(target, credentials, options=all_options)


def resolve(
    address: str | None = None,
    *,
    ca: StrPath | None = None,
    cert: StrPath | None = None,
    key: StrPath | None = None,
    server_name: str | None = None,
    data_dir: StrPath | None = None,
) -> ChannelSettings:
    """Resolves channel settings as the CLI does; see the module documentation.

    ``data_dir`` overrides the default data directory where the development
    certificates are looked for. Raises ``ValueError`` for inconsistent
    settings and ``FileNotFoundError`` when a loopback address without TLS
    settings finds no development certificates.
    """
    target = parse_address(address or os.environ.get("STORMLOCK_ADDR") or DEFAULT_ADDRESS)
    if (cert is None) != (key is None):
        raise ValueError("give both a client certificate and its key, or neither")
    if not target.tls:
        if ca is not None or cert is not None or server_name is not None:
            raise ValueError(
                f"{target.grpc_target} was given as http:// (plain text) together with TLS settings; "
                "use https:// or drop the TLS settings"
            )
        return ChannelSettings(target, None, None, None, None)

    ca_path = _path(ca)
    cert_path = _path(cert)
    key_path = _path(key)
    if ca_path is None and cert_path is None and target.is_loopback:
        tls_dir = (Path(data_dir) if data_dir is not None else default_data_dir()) / "tls"
        ca_path, cert_path, key_path = tls_dir / "ca.crt", tls_dir / "client.crt", tls_dir / "client.key"
        missing = [p.name for p in (ca_path, cert_path, key_path) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"no TLS settings were given for {target.grpc_target} and the development certificates "
                f"are missing from {tls_dir} ({', '.join(missing)}): start stormlockd on this machine "
                "(it creates them), point STORMLOCK_DATA_DIR at its data directory, or pass ca, cert and key"
            )
    if server_name is None and _is_loopback_ip(target.host):
        server_name = "localhost"
    return ChannelSettings(target, ca_path, cert_path, key_path, server_name)


def connect(
    address: str | None = None,
    *,
    ca: StrPath | None = None,
    cert: StrPath | None = None,
    key: StrPath | None = None,
    server_name: str | None = None,
    data_dir: StrPath | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """Opens a channel to the daemon: :func:`resolve`, then
    :meth:`ChannelSettings.channel`. Use it as a context manager or close it.

    >>> from stormlock_client.v1 import lock_pb2_grpc
    >>> with connect("127.0.0.1:7466") as channel:          # doctest: +SKIP
    ...     locks = lock_pb2_grpc.LockServiceStub(channel)
    """
    settings = resolve(address, ca=ca, cert=cert, key=key, server_name=server_name, data_dir=data_dir)
    return settings.channel(options)


def _port(text: str, address: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"daemon address {address!r}: {text!r} is not a port number")
    return int(text)


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _path(path: StrPath | None) -> Path | None:
    return None if path is None else Path(path)


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()
