"""How connect() resolves its settings, without a daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from stormlock_client import DEFAULT_PORT, Target, default_data_dir, parse_address, resolve


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:7000", Target("127.0.0.1", 7000)),
        ("locks.example.org", Target("locks.example.org", DEFAULT_PORT)),
        ("https://locks.example.org:443/", Target("locks.example.org", 443)),
        ("HTTPS://locks.example.org", Target("locks.example.org", DEFAULT_PORT)),
        ("http://127.0.0.1:7000", Target("127.0.0.1", 7000, tls=False)),
        ("[::1]:7000", Target("::1", 7000)),
        ("https://[::1]", Target("::1", DEFAULT_PORT)),
        ("::1", Target("::1", DEFAULT_PORT)),
    ],
)
def test_parse_address(address: str, expected: Target) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address",
    ["", "ftp://host", "host:port", "host:0", "host:70000", "https://host/api", "[::1", "[::1]x", ":7466", "a:b:c"],
)
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


def test_grpc_target_brackets_ipv6() -> None:
    assert Target("::1", 7466).grpc_target == "[::1]:7466"
    assert Target("localhost", 7466).grpc_target == "localhost:7466"


def test_default_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("STORMLOCK_DATA_DIR", raising=False)
    assert default_data_dir() == tmp_path / "home" / ".local" / "state" / "stormlock"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_data_dir() == tmp_path / "state" / "stormlock"
    monkeypatch.setenv("STORMLOCK_DATA_DIR", str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data"
    monkeypatch.setenv("STORMLOCK_DATA_DIR", "")
    assert default_data_dir() == tmp_path / "state" / "stormlock"


def make_dev_pki(data_dir: Path) -> Path:
    tls = data_dir / "tls"
    tls.mkdir(parents=True)
    for name in ("ca.crt", "client.crt", "client.key"):
        (tls / name).write_text("PEM")
    return tls


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "[::1]", "localhost"])
def test_loopback_without_tls_settings_uses_the_dev_pki(tmp_path: Path, host: str) -> None:
    tls = make_dev_pki(tmp_path)
    settings = resolve(f"{host}:7000", data_dir=tmp_path)
    assert (settings.ca, settings.cert, settings.key) == (tls / "ca.crt", tls / "client.crt", tls / "client.key")
    # The development certificate names localhost; gRPC would otherwise check the IP.
    assert settings.server_name == (None if host == "localhost" else "localhost")


def test_dev_pki_found_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORMLOCK_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    tls = make_dev_pki(tmp_path / "stormlock")
    assert resolve("127.0.0.1").ca == tls / "ca.crt"


def test_missing_dev_pki_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tls")):
        resolve("127.0.0.1:7000", data_dir=tmp_path)


def test_remote_address_uses_system_roots_and_its_own_name(tmp_path: Path) -> None:
    make_dev_pki(tmp_path)
    settings = resolve("locks.example.org", data_dir=tmp_path)
    assert (settings.ca, settings.cert, settings.key, settings.server_name) == (None, None, None, None)


def test_explicit_settings_win_over_the_dev_pki(tmp_path: Path) -> None:
    make_dev_pki(tmp_path)
    settings = resolve("127.0.0.1:7000", ca="my-ca.pem", data_dir=tmp_path)
    assert (settings.ca, settings.cert, settings.key) == (Path("my-ca.pem"), None, None)
    assert resolve("127.0.0.1", ca="ca.pem", server_name="locks").server_name == "locks"


def test_address_defaults_to_stormlock_addr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORMLOCK_ADDR", "http://127.0.0.1:7001")
    assert resolve().target == Target("127.0.0.1", 7001, tls=False)
    monkeypatch.delenv("STORMLOCK_ADDR")
    assert resolve(ca="ca.pem").target == Target("127.0.0.1", DEFAULT_PORT)


def test_inconsistent_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        resolve("locks.example.org", cert="client.crt")
    with pytest.raises(ValueError, match="plain text"):
        resolve("http://127.0.0.1", ca="ca.pem")
