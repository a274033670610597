#!/usr/bin/env bash
# Run a command as another machine would: another host name, one CPU core, umask 077, another time
# zone, locale, HOME and working folder, and the host's compilers hidden behind failing stubs.
# `nox -s repro` and the test suite rebuild with it and compare the archives byte for byte.
set -euo pipefail
scratch=$(mktemp -d /tmp/another-machine.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/stubs" "$scratch/home" "$scratch/cwd"
for tool in cc c++ gcc g++ cpp ld as cmake make ninja clang; do
  printf '#!/bin/sh\necho "another-machine: the host %s was used" >&2\nexit 97\n' "$tool" >"$scratch/stubs/$tool"
  chmod 755 "$scratch/stubs/$tool"
done
cd "$scratch/cwd"
export PATH="$scratch/stubs:$PATH" HOME="$scratch/home" TZ="Pacific/Chatham" LANG="de_DE.UTF-8"
unset LC_ALL SOURCE_DATE_EPOCH CC CXX CFLAGS CXXFLAGS
unshare --uts /bin/sh -c 'hostname another-machine && umask 077 && exec taskset -c 0 "$@"' sh "$@"
