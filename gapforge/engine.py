"""The local Docker engine, through the docker SDK: load an image archive, run it with no network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gapforge.errors import BuildError, EnvironmentProblem
from gapforge.progress import byte_progress, note, step

CHUNK = 4 * 1024 * 1024


def connect() -> Any:
    """A client for the engine at $DOCKER_HOST (or the default socket); a clear error if none answers."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as exc:
        raise EnvironmentProblem(
            f"no Docker engine answers ({exc}): run 'bash scripts/setup.sh' to install and start "
            "one, or start dockerd yourself (or use --no-load to only write the image archive)"
        ) from None
    return client


def _chunks(path: Path, advance: Any) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            advance(len(chunk))
            yield chunk


def load(client: Any, tar_path: Path, config_digest: str) -> str:
    """`docker load` the archive; check that the engine's image ID is the config digest we wrote."""
    step(f"loading {tar_path.name} into the Docker engine")
    with byte_progress("docker load", tar_path.stat().st_size) as advance:
        images = client.images.load(_chunks(tar_path, advance))
    ids = {image.id for image in images}
    if config_digest not in ids:
        raise BuildError(
            f"the engine loaded {tar_path} as {sorted(ids)}, not as {config_digest}: the archive and "
            "its config disagree; delete the build folder and build again"
        )
    note(f"loaded as image ID {config_digest}")
    return config_digest


def smoke_run(client: Any, ref: str) -> str:
    """Run the image's `info` with the network cut, read-only, as its non-root user."""
    from docker.errors import ContainerError

    step(f"smoke run: {ref} info (--network none --read-only)")
    try:
        output = client.containers.run(
            ref, ["info"], network_mode="none", read_only=True, remove=True,
            tmpfs={"/tmp": "rw,size=64m"}, stdout=True, stderr=True,
        )  # fmt: skip
    except ContainerError as exc:
        stderr = (
            exc.stderr.decode(errors="replace")
            if isinstance(exc.stderr, bytes)
            else str(exc.stderr)
        )
        raise BuildError(
            f"the image's `info` failed with status {exc.exit_status}:\n{stderr[-2000:]}"
        ) from None
    text: str = output.decode(errors="replace")
    for line in text.strip().splitlines():
        note(line)
    return text
