#!/usr/bin/env bash
# Makes sure the TLS terminator that scripts/tls-front.sh runs (haproxy,
# >= 2.0) and openssl (for its self-signed certificate) are installed,
# installing Debian's packages when they are missing and we are allowed to.
#
# Idempotent: prints what it found or did on stderr; exits non-zero with the
# reason on stderr when it cannot.
set -euo pipefail

say() { echo "ensure-tls-front: $*" >&2; }

missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -eq 0 ]; then
  say "found $(haproxy -v 2>/dev/null | head -1) and $(openssl version)"
  exit 0
fi

say "${missing[*]} not found: installing Debian's package(s)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    say "error: ${missing[*]} missing and I am not root; install with: apt-get install ${missing[*]}"
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "error: ${missing[*]} missing and this is not a Debian/Ubuntu system; install them yourself"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq >&2; then
  say "error: apt-get update failed (see above)"
  exit 1
fi
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
  say "error: apt-get install ${missing[*]} failed (see above)"
  exit 1
fi
for c in haproxy openssl; do
  command -v "$c" >/dev/null 2>&1 || { say "error: $c still missing after apt-get install"; exit 1; }
done
# The package may start a system haproxy service where systemd runs; we
# start our own instances in the foreground, so leave it alone.
say "installed $(haproxy -v 2>/dev/null | head -1)"
