#!/usr/bin/env bash
# Makes sure systemd-analyze is on PATH for deploy's tests (they skip the
# `systemd-analyze verify` and `security` checks without it), installing
# Debian's systemd package when it is missing and we are allowed to.
# With --promtool, also promtool (Debian's prometheus package, ~100 MB
# installed), which the tests use to check the alert rules, run their unit
# tests and parse every dashboard query.
set -euo pipefail
pkgs=()
command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)
if [ "${1:-}" = "--promtool" ] && ! command -v promtool >/dev/null 2>&1; then
  pkgs+=(prometheus)
fi
if [ ${#pkgs[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian's ${pkgs[*]} package(s) for deploy's tests" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: not root; install them with: apt-get install ${pkgs[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: not a Debian/Ubuntu system; install ${pkgs[*]} yourself (deploy's tests skip these checks without them)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# No recommends: the tests need the binaries, not the services. Where
# systemd is not PID 1 (containers, CI), the packages' services do not start.
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
command -v systemd-analyze >/dev/null 2>&1 || { echo "error: systemd-analyze still missing after install" >&2; exit 1; }
echo "have $(systemd-analyze --version | head -n1)" >&2
