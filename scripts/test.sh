#!/usr/bin/env bash
# Runs every test on a fresh machine: the README's test command, and what
# CI runs. Arguments go on to `cargo test` (a filter, `-- --nocapture`...).
#
# Besides Rust (the wasm32-wasip2 target is added by the build itself), the
# tests drive real servers: `redis-server` and `redis-cli` (key-value and
# rate limits shared by many hosts, Redis Cluster), `nginx` (the deployment
# example behind a load balancer), `curl` and `python3` (the deployment
# script). Where one is missing, this installs it with apt-get (Debian's
# packages; through sudo when not root), stops the system services those
# packages start (the tests start their own, on free loopback ports), and
# puts the binaries it found in target/test-bin at the front of PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
unset RUST_BACKTRACE

# command -> Debian package
declare -A package=([redis-server]=redis-server [redis-cli]=redis-tools [nginx]=nginx [curl]=curl [python3]=python3)
bin="$PWD/target/test-bin"
# Where packages put binaries, also when they are not on this PATH; never
# our own links (a PATH that has them already would link them to themselves).
search="$(printf '%s' "$PATH" | tr ':' '\n' | { grep -vxF "$bin" || true; } | paste -sd: -)"
search="$search:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

locate() { PATH="$search" command -v "$1" 2>/dev/null || true; }

missing=()
for tool in "${!package[@]}"; do
    [ -n "$(locate "$tool")" ] || missing+=("${package[$tool]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    wanted=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
    echo "scripts/test.sh: the tests need: $wanted; installing them with apt-get"
    if ! command -v apt-get >/dev/null; then
        echo "scripts/test.sh: no apt-get here: install $wanted with your package manager and run this again" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "scripts/test.sh: not root and no sudo: run 'apt-get install $wanted' as root" >&2
            exit 1
        fi
        sudo=sudo
    fi
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $wanted >/dev/null
    $sudo service redis-server stop >/dev/null 2>&1 || true
    $sudo service nginx stop >/dev/null 2>&1 || true
fi

mkdir -p "$bin"
for tool in "${!package[@]}"; do
    found=$(locate "$tool")
    if [ -z "$found" ]; then
        echo "scripts/test.sh: $tool is still missing after installing ${package[$tool]}" >&2
        exit 1
    fi
    ln -sf "$found" "$bin/$tool"
done
export PATH="$bin:$PATH"
exec cargo test "$@"
