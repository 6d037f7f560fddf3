#!/usr/bin/env bash
# ToneGuard set-up and run, for a fresh Debian 12 machine with Python 3.11.
#   ./dev.sh demo [ARGS]   install, then run the embedded demo (toneguard demo)
#   ./dev.sh test [ARGS]   install, then lint (ruff), type-check (mypy) and run the whole test
#                          suite (ARGS go to pytest)
#   ./dev.sh bench         install, then run the benchmarks and print their tables
#   ./dev.sh fuzz [ARGS]   install, then the fuzzing campaign at length (TONEGUARD_FUZZ_SEED=…)
#   ./dev.sh mutate [MOD]  install (+ mutmut), then mutation-test the security-critical modules
#   ./dev.sh install       install only (Debian packages when root or with sudo, then .venv)
#   ./dev.sh vendor-js     rebuild proxy/static/jssip.min.js (the panel softphone's SIP library)
#                          from npm at the versions pinned in scripts/jssip (needs node, npm)
set -euo pipefail
cd "$(dirname "$0")"

# Real peers the tests start on loopback, and the talk-off material they render.
APT_PACKAGES=(
    python3-venv python3-dev build-essential
    rtpengine-daemon rtpengine-utils kamailio sip-tester baresip-core multimon-ng libspandsp2
    espeak-ng chromium codec2-examples
    fluidsynth timgm6mb-soundfont openttd-openmsx
    redis-server sox libsox-fmt-all kamailio-websocket-modules kamailio-tls-modules
)
VENV=${TONEGUARD_VENV:-.venv}
PYTHON=${PYTHON:-python3}

install_system() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "dev.sh: installing Debian packages: ${missing[*]}" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
    # The packaged daemons must not hold the ports tests use; tests start their own.
    for svc in rtpengine-daemon kamailio redis-server; do
        $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
}

install_python() {
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[test]'
}

# The softphone's JsSIP bundle is committed (proxy/static/jssip.min.js + jssip.LICENSE.txt):
# installing it from npm on every CI run would make the tests depend on npm's registry and on
# esbuild's native binary. This rebuilds it, reproducibly, from scripts/jssip/package-lock.json
# (install scripts off: esbuild's binary comes from its pinned @esbuild/<platform> package).
vendor_js() {
    (cd scripts/jssip && npm ci --no-audit --no-fund --ignore-scripts \
        && node build.mjs ../../proxy/static && rm -rf node_modules)
    echo "dev.sh: rebuilt proxy/static/jssip.min.js ($(git diff --quiet -- proxy/static \
        && echo unchanged || echo changed: commit it))" >&2
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
    install)
        install_system; install_python ;;
    demo)
        install_system; install_python
        exec "$VENV/bin/toneguard" demo "$@" ;;
    test)
        install_system; install_python
        "$VENV/bin/ruff" check .
        "$VENV/bin/mypy"  # files and strictness: [tool.mypy] in pyproject.toml
        exec "$VENV/bin/python" -m pytest "$@" ;;
    fuzz)  # the fuzzing campaign at length: 250 000 inputs per surface (1 000 000 in all)
        install_system; install_python
        TONEGUARD_FUZZ_INPUTS=${TONEGUARD_FUZZ_INPUTS:-250000} exec "$VENV/bin/python" -m pytest \
            -p no:cacheprovider -o timeout=7200 tests/proxy/control/test_fuzz_ng.py \
            tests/proxy/media/test_fuzz_datagrams.py tests/proxy/api/test_fuzz_http.py \
            tests/gateway/test_fuzz_http.py "$@" ;;
    bench)
        install_system; install_python
        exec "$VENV/bin/python" -m loadtest.bench "$@" ;;
    vendor-js)
        vendor_js ;;
    mutate)
        # Not part of `test`: minutes of CPU, run by hand (docs/mutation.md).
        install_system; install_python
        "$VENV/bin/python" -c 'import mutmut' 2>/dev/null \
            || "$VENV/bin/pip" install -q -e '.[test,mutate]'
        exec "$VENV/bin/python" scripts/mutate.py "$@" ;;
    *)
        sed -n '2,11p' "$0"; exit 2 ;;
esac
