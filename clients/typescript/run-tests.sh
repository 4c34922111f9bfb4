#!/usr/bin/env bash
# TypeScript client: generated code up to date, tsc --strict, and the node
# test suite against a real stormlockd over mutual TLS. Uses the packages
# that scripts/setup installs (npm ci here and in tools/); runs npm ci itself
# only if they are missing.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)

for dir in "$root/tools" "$PWD"; do
  if [[ ! -d $dir/node_modules ]]; then
    echo "typescript client: npm ci in $dir" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

"$root/clients/check-generated.sh" typescript

bin_dir=${STORMLOCK_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}
if [[ ! -x $bin_dir/stormlockd ]]; then
  if [[ -n ${STORMLOCK_BIN_DIR:-} ]]; then
    echo "typescript client: no stormlockd in STORMLOCK_BIN_DIR=$STORMLOCK_BIN_DIR" >&2
    exit 1
  fi
  echo "typescript client: building stormlockd" >&2
  (cd "$root" && cargo build -p stormlockd)
fi

echo "typescript client: tsc --strict" >&2
rm -rf dist
node_modules/.bin/tsc -p tsconfig.json --strict
echo "typescript client: node --test" >&2
node --test --test-reporter=spec dist/test/*.test.js
