#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root) for building and testing gapforge:
# Debian packages, a running Docker engine, and a venv with the builder and nox.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in dockerd:docker.io mmdebstrap:mmdebstrap skopeo:skopeo unshare:util-linux \
            docker-registry:docker-registry openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
if ((${#need_apt[@]})); then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup: starting the Docker engine (log: /var/log/gapforge-dockerd.log)"
  setsid dockerd >/var/log/gapforge-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "setup: the Docker engine did not start; see /var/log/gapforge-dockerd.log" >&2; exit 1; }
fi

if [ ! -x .venv/bin/nox ] || [ pyproject.toml -nt .venv/.gapforge-installed ]; then
  echo "setup: creating the venv .venv (builder, nox, test tools)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,lint]' nox
  touch .venv/.gapforge-installed
fi
echo "setup: ready (docker $(docker version --format '{{.Server.Version}}'), $(.venv/bin/nox --version 2>&1))"
