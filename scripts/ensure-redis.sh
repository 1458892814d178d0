#!/usr/bin/env bash
# Makes sure redis-server (>= 6, for RESP3 client-side caching) is on PATH,
# installing Debian's package when it is missing and we are allowed to.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server not found: installing Debian's redis-server package" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: redis-server is missing and I am not root; install it with: apt-get install redis-server" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: redis-server is missing and this is not a Debian/Ubuntu system; install Redis >= 6 yourself" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq redis-server >/dev/null
# The package starts a system service on :6379 where systemd runs; we start
# our own instances, so leave the system one alone.
command -v redis-server >/dev/null 2>&1 || { echo "error: redis-server still missing after install" >&2; exit 1; }
echo "installed $(redis-server --version)" >&2
