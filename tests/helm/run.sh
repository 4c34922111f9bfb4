#!/usr/bin/env bash
# Runs the Helm chart tests: renders and lints helm/stormlock with the real
# Helm engine and validates the manifests against Kubernetes 1.30.
#
#   tests/helm/run.sh [pytest args…]
#
# Uses the venv at $STORMLOCK_VENV (default ~/.cache/stormlock/venv), creating
# it and installing tests/helm/requirements.txt when something is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${STORMLOCK_VENV:-$HOME/.cache/stormlock/venv}"
requirements="$here/requirements.txt"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# `pip install` is slow even when everything is present; skip it when the
# pinned requirements are already satisfied.
if ! "$venv/bin/python" - "$requirements" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, wanted = line.partition("==")
    try:
        if wanted and version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
fi

cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@" test_chart.py
