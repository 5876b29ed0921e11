#!/usr/bin/env bash
# Install the Debian 12 packages muxtunnel's tests, benchmarks and CI use. Idempotent: when every
# package is already installed it changes nothing and needs no network.
#
#   golang-go, golang-github-hashicorp-yamux-dev   build the Go yamux peer of tests/interop
#   iperf3, socat, openssh-server, openssh-client  traffic and the ssh -R baseline for benchmarks
#   nftables, iproute2                             network namespaces and impaired links in tests
#   curl, ca-certificates, make, python3-venv      the Makefile and the project's .venv
#   redis-server                                   the cluster registry's store; tests start their
#                                                  own throwaway server on a free loopback port
#   nginx                                          a real PROXY protocol reader for tests/vhost
#                                                  and tests/web, and the fast static backend of
#                                                  the HTTP benchmark (started by the tests and
#                                                  the bench on loopback, never as a system
#                                                  service: see below)
#   wrk                                            the HTTP load generator of `python -m bench`
#                                                  (requests/s and latency percentiles through
#                                                  --http, --tcp and direct)
#   chromium, chromium-driver                      a real browser (headless, driven by Selenium)
#                                                  for the dashboard and inspector tests in
#                                                  tests/web/test_browser.py; Debian's build, so
#                                                  nothing is downloaded at test time
#
# Runs apt-get as root, or through sudo when run as another user.
set -euo pipefail

PACKAGES=(
    golang-go golang-github-hashicorp-yamux-dev
    iperf3 socat openssh-server openssh-client
    nftables iproute2
    curl ca-certificates make python3-venv
    redis-server nginx wrk
    chromium chromium-driver
)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system-deps: all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "install-system-deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
    as_root=(sudo)
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages such as nginx start a system service on install; the tests start their own copies,
# so keep the package scripts from starting anything (exit code 101: "action forbidden").
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 755 "$policy"
    trap '"${as_root[@]}" rm -f "$policy"' EXIT
fi
"${as_root[@]}" apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
