#!/usr/bin/env bash
# A headless browser for the page tests: Debian's chromium.
#   scripts/browser.sh install   install it if it is missing (idempotent)
#   scripts/browser.sh path      print the binary's path
set -euo pipefail

find_chromium() {
  command -v chromium || command -v chromium-browser || true
}

case "${1:-install}" in
  install)
    if [ -n "$(find_chromium)" ]; then
      exit 0
    fi
    echo "browser.sh: installing Debian's chromium (once)"
    if [ "$(id -u)" -ne 0 ]; then
      echo "browser.sh: installing packages needs root; run: apt-get install -y --no-install-recommends chromium" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    [ -n "$(find_chromium)" ] || { echo "browser.sh: chromium did not install" >&2; exit 1; }
    ;;
  path)
    find_chromium
    ;;
  *)
    echo "usage: $0 install|path" >&2
    exit 2
    ;;
esac
