#!/usr/bin/env bash
# Makes sure a Chromium for headless browser tests is installed, installing
# Debian's chromium package when it is missing and we are allowed to. Test
# tools cannot download a browser of their own here (no network but the
# package registries), so this is the one way to get one.
#
# Idempotent: prints what it found or did on stderr; exits 0 with the
# browser's path on stdout, or non-zero with the reason on stderr.
# CHROMIUM, when set, names a browser binary to use instead.
set -euo pipefail

say() { echo "ensure-chromium: $*" >&2; }

find_chromium() {
  local c
  for c in "${CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    if [ -n "$c" ] && [ -x "$c" ]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

if path=$(find_chromium); then
  say "found $path ($("$path" --version 2>/dev/null || echo 'version unknown'))"
  echo "$path"
  exit 0
fi

say "chromium not found: installing Debian's chromium package"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    say "error: chromium is missing and I am not root; install it with: apt-get install chromium"
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "error: chromium is missing and this is not a Debian/Ubuntu system; install Chromium and set CHROMIUM=/path/to/it"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq >&2; then
  say "error: apt-get update failed (see above)"
  exit 1
fi
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2; then
  say "error: apt-get install chromium failed (see above)"
  exit 1
fi
if ! path=$(find_chromium); then
  say "error: chromium still missing after apt-get install"
  exit 1
fi
say "installed $path ($("$path" --version 2>/dev/null || echo 'version unknown'))"
echo "$path"
