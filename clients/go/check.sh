#!/usr/bin/env bash
# Go stubs: checks they are up to date with proto/ and compile (with go vet)
# against Debian's packaged Go libraries, offline, in GOPATH mode; then, when
# a stormlockd binary is there ($STORMLOCK_BIN_DIR, else
# $CARGO_TARGET_DIR/debug, else target/debug), runs the example and the tests
# of the details package against a daemon it starts on a free loopback port
# over mutual TLS, and lets the tests of freeze windows start one of their own
# with a [[freezes]] configuration (without a daemon, only the tests that need
# none).
#
# Needs Debian's packages (bookworm): golang-go, golang-google-grpc-dev,
# golang-google-protobuf-dev, protobuf-compiler, protoc-gen-go,
# protoc-gen-go-grpc, and golang-github-golang-protobuf-1-5-dev: grpc 1.33's
# codec marshals through github.com/golang/protobuf, and only its 1.5 line
# (not the 1.3 one that apt picks by default) handles the messages that
# protoc-gen-go 1.28 generates; with 1.3 the first call panics.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
gocode=/usr/share/gocode

packages=(golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
  protobuf-compiler protoc-gen-go protoc-gen-go-grpc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "go check: missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
  exit 1
fi

../check-generated.sh go

module=$(sed -n 's/^module //p' go.mod)
gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/$(dirname "$module")"
cp -r "$here" "$gopath/src/$module"
cd "$gopath/src/$module"
export GO111MODULE=off GOPATH="$gopath:$gocode" GOFLAGS= GOTOOLCHAIN=local
go vet ./...
go build -o "$gopath/example" ./example
go test -c -o "$gopath/details.test" ./details
echo "go check: stormlockv1, details and example compile and vet clean ($(go version | cut -d' ' -f3))"

root=$(cd "$here/../.." && pwd)
bin=${STORMLOCK_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}/stormlockd
if [[ ! -x $bin ]]; then
  echo "go check: no daemon at $bin; example and live tests not run" >&2
  "$gopath/details.test"
  exit 0
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$gopath/data
env -u STORMLOCK_CONFIG "$bin" --listen "127.0.0.1:$port" --data-dir "$data" 2>"$gopath/daemon.log" &
daemon=$!
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$gopath"' EXIT
for _ in $(seq 600); do
  grep -q listening "$gopath/daemon.log" && break
  kill -0 "$daemon" 2>/dev/null || { tail "$gopath/daemon.log" >&2; exit 1; }
  sleep 0.1
done
out=$(STORMLOCK_DATA_DIR=$data "$gopath/example" -addr "127.0.0.1:$port" -resource go-check/example)
echo "$out"
[[ $out =~ ^acquired\ go-check/example,\ fence\ [1-9][0-9]*$ ]] || { echo "go check: unexpected example output" >&2; exit 1; }
echo "go check: example acquired and released a lock over mutual TLS"
# The live tests of freeze windows start a daemon of their own (STORMLOCK_TEST_DAEMON),
# with a configuration timed to their start.
STORMLOCK_TEST_ADDR=127.0.0.1:$port STORMLOCK_DATA_DIR=$data STORMLOCK_TEST_DAEMON=$bin "$gopath/details.test" -test.v
