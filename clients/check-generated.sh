#!/usr/bin/env bash
# Fails when the committed generated client code differs from what
# scripts/gen-clients produces from proto/ now (stale after a proto change, or
# edited by hand). Regenerates into a temporary directory; changes nothing.
#
# Usage: clients/check-generated.sh [python|typescript|go]...   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
langs=("$@")
((${#langs[@]})) || langs=(python typescript go)

scripts/gen-clients --out "$tmp" "$@"

declare -A dirs=(
  [python]=clients/python/src/stormlock_client/v1
  [typescript]=clients/typescript/src/gen
  [go]=clients/go/stormlockv1
)
stale=()
for lang in "${langs[@]}"; do
  dir=${dirs[$lang]:?unknown language $lang}
  if [[ ! -d $tmp/$dir ]]; then
    echo "check-generated: $lang not generated here (see above), not checked" >&2
    continue
  fi
  if ! diff -ru --exclude=__pycache__ "$dir" "$tmp/$dir"; then
    stale+=("$lang")
  fi
done
if ((${#stale[@]})); then
  echo "check-generated: the generated ${stale[*]} code is out of date: run scripts/gen-clients and commit the result" >&2
  exit 1
fi
echo "check-generated: ${langs[*]}: up to date" >&2
