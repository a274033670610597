# Thin aliases: each target is one documented command.
.PHONY: setup build test lint lock bench repro

setup:  ## install Debian packages, start the Docker engine, make .venv with nox
	bash scripts/setup.sh

build: setup  ## build the default recipe into a sealed image and load it
	.venv/bin/nox -s build

test: setup  ## run the test suite
	.venv/bin/nox -s lint typecheck test

lock: setup  ## rewrite the lockfiles (needs the network)
	.venv/bin/nox -s lock

bench: setup  ## print build and layer-writing figures
	.venv/bin/nox -s bench

repro: setup  ## build twice with two empty caches and compare byte for byte
	.venv/bin/nox -s repro
