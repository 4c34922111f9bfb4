# Helpers shared by the scripts (sourced, not run): cache paths, free ports,
# waiting for a daemon. Kept small; each script stays readable on its own.

# Where installs, builds and results are kept between runs.
STORMLOCK_CACHE=${STORMLOCK_CACHE:-$HOME/.cache/stormlock}
# A fixed target directory outside the work tree, so every clone (and CI's
# fresh clone) reuses the same build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$STORMLOCK_CACHE/target}

# free_port: prints a TCP port that is free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_daemon STORMLOCK PID LOG [SECONDS]: waits until the daemon that
# STORMLOCK (the CLI, with its address and certificates in the environment)
# talks to answers (`current` exits 1: nothing held), or fails with the tail
# of LOG when process PID dies or SECONDS (default 60) pass.
wait_for_daemon() {
  local cli=$1 pid=$2 log=$3 deadline=$((SECONDS + ${4:-60})) code
  while :; do
    code=0
    "$cli" current stormlock/ready >/dev/null 2>&1 || code=$?
    [[ $code == 1 ]] && return 0
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
      echo "the daemon did not start:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.2
  done
}
