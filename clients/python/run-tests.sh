#!/usr/bin/env bash
# Python client: generated code up to date, mypy (strict), and the pytest suite
# against a real stormlockd over mutual TLS. Uses the project venv
# (scripts/setup); installs requirements-dev.txt into it only if missing.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
venv=${STORMLOCK_VENV:-$HOME/.cache/stormlock/venv}
py=$venv/bin/python

if ! [[ -x $py ]] || ! "$py" -c 'import grpc_tools, grpc_health, grpc_status, mypy, pytest, mypy_protobuf' 2>/dev/null; then
  echo "python client: installing requirements-dev.txt into $venv" >&2
  [[ -x $py ]] || python3 -m venv "$venv"
  "$py" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
fi

"$root/clients/check-generated.sh" python

bin_dir=${STORMLOCK_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}
if [[ ! -x $bin_dir/stormlockd ]]; then
  if [[ -n ${STORMLOCK_BIN_DIR:-} ]]; then
    echo "python client: no stormlockd in STORMLOCK_BIN_DIR=$STORMLOCK_BIN_DIR" >&2
    exit 1
  fi
  echo "python client: building stormlockd" >&2
  (cd "$root" && cargo build -p stormlockd)
fi

echo "python client: mypy" >&2
"$py" -m mypy
echo "python client: pytest" >&2
"$py" -m pytest -p no:cacheprovider
