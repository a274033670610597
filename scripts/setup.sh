#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root) for building and testing gapforge:
# Debian packages, a running Docker engine, and .venv with the builder, nox and the test tools
# installed from lockfiles/builder.txt (hash-checked) plus gapforge itself and its runtime package
# (both editable, --no-deps: the builder imports the recipe schema from gapforge_runtime).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in dockerd:docker.io mmdebstrap:mmdebstrap skopeo:skopeo unshare:util-linux \
            docker-registry:docker-registry openssl:openssl bwrap:bubblewrap clamscan:clamav shellcheck:shellcheck; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
# `python3 -m venv` needs ensurepip, which Debian ships in python3-venv (it pulls in python3).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
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

python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  { echo "setup: lockfiles/builder.txt is for Python 3.11; python3 is $(python3 -V 2>&1)" >&2; exit 1; }
if [ ! -x .venv/bin/nox ] || [ lockfiles/builder.txt -nt .venv/.gapforge-installed ] ||
   [ pyproject.toml -nt .venv/.gapforge-installed ] ||
   [ runtime/pyproject.toml -nt .venv/.gapforge-installed ] ||
   ! .venv/bin/python -c 'import gapforge_runtime.recipe_schema' >/dev/null 2>&1; then
  echo "setup: creating .venv from lockfiles/builder.txt (hash-checked), gapforge and its runtime (editable)"
  python3 -m venv --clear .venv
  # This machine's pip settings (find-links, constraints, extra indexes) stay out: the lock decides.
  pip=(env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT -u PIP_NO_INDEX
       PIP_CONFIG_FILE=/dev/null .venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --require-hashes -r lockfiles/builder.txt
  "${pip[@]}" --no-deps --no-build-isolation -e .
  "${pip[@]}" --no-deps --no-build-isolation -e runtime
  touch .venv/.gapforge-installed
fi
echo "setup: ready (docker $(docker version --format '{{.Server.Version}}'), $(.venv/bin/nox --version 2>&1))"
