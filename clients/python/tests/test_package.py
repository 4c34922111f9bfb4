"""The package installs and imports on its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_installed_package_imports_cleanly(copy_of_package: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(copy_of_package)],
        check=True,
    )
    installed = site / "stormlock_client"
    for name in ("py.typed", "channel.py", "details.py", "v1/lock_pb2.py", "v1/lock_pb2.pyi", "v1/lock_pb2_grpc.py",
                 "v1/lock_pb2_grpc.pyi"):
        assert (installed / name).is_file(), name
    # Run from an empty directory with only the installed copy on the path.
    probe = (
        "import stormlock_client, stormlock_client.v1.lock_pb2_grpc as g, stormlock_client.v1.lock_pb2 as m;"
        "print(stormlock_client.__file__);"
        "print(m.AcquireRequest.DESCRIPTOR.full_name, hasattr(g, 'LockServiceStub'))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    assert Path(out[0]).is_relative_to(site)
    assert out[1] == "stormlock.v1.AcquireRequest True"
