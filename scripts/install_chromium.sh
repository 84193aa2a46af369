#!/usr/bin/env bash
# Headless Chromium for the search page's end-to-end test, from Debian's packages (never a browser download).
#
#   scripts/install_chromium.sh         install Debian's `chromium` when no chromium is found (needs root)
#   scripts/install_chromium.sh path    print the chromium executable the tests will use, or fail
#
# Settings (environment):
#   CHROMIUM   a chromium executable to use instead of searching PATH (the tests read it too)
set -euo pipefail

say() { echo "chromium: $*"; }
die() { echo "chromium: error: $*" >&2; exit 1; }

find_chromium() {
    if [[ -n "${CHROMIUM:-}" ]]; then
        [[ -x $CHROMIUM ]] || return 1
        echo "$CHROMIUM"; return
    fi
    local name
    for name in chromium chromium-browser; do
        if command -v "$name" >/dev/null; then command -v "$name"; return; fi
    done
    return 1
}

install() {
    if find_chromium >/dev/null; then
        say "found $(find_chromium) ($("$(find_chromium)" --version 2>/dev/null || echo 'version unknown'))"
        return
    fi
    [[ -z "${CHROMIUM:-}" ]] || die "CHROMIUM=$CHROMIUM is not an executable file"
    [[ $(id -u) == 0 ]] || die "chromium is not installed: run 'sudo apt-get install -y chromium' (or this script as root)"
    say "installing chromium from Debian's packages"
    apt-get update -qq
    # Recommends would pull in desktop extras a headless test never uses.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    find_chromium >/dev/null || die "apt-get installed chromium but no chromium executable is on PATH"
    say "installed $(find_chromium) ($("$(find_chromium)" --version 2>/dev/null || echo 'version unknown'))"
}

case "${1:-install}" in
    install) install ;;
    path) find_chromium || die "no chromium found: run scripts/install_chromium.sh (as root)" ;;
    *) echo "usage: $0 [install|path]" >&2; exit 2 ;;
esac
