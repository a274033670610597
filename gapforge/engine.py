"""The local Docker engine, through the docker SDK: load an image archive, run it with no network."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.errors import BuildError, EnvironmentProblem
from gapforge.fetch.rootfs import HOME, IMAGE_USER
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


# --- sealed runs (pretest, and `gapforge run` inside the gap) ------------------------------------------


@dataclass(frozen=True)
class SealedRun:
    """`docker run --network none --read-only` as a non-root user, with tmpfs scratch and explicit
    mounts only, no capabilities and no privilege gain: how a sealed image is always run."""

    image: str
    command: list[str]
    mounts: dict[str, str] = field(default_factory=dict)
    """host path → container path (read-write)."""
    read_only_mounts: dict[str, str] = field(default_factory=dict)
    """host path → container path (read-only)."""
    user: str = IMAGE_USER
    home: str = HOME
    gpus: bool = False
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def tmpfs(self) -> dict[str, str]:
        uid, _, gid = self.user.partition(":")
        return {
            "/tmp": "rw,nosuid,nodev,exec,mode=1777",
            self.home: f"rw,nosuid,nodev,mode=0700,uid={uid},gid={gid or uid}",
        }

    def describe(self) -> dict[str, Any]:
        """The sandbox, as evidence: what the image could and could not touch."""
        return {
            "network": "none",
            "read_only_rootfs": True,
            "user": self.user,
            "tmpfs": sorted(self.tmpfs),
            "mounts": sorted(self.mounts.values()),
            "read_only_mounts": sorted(self.read_only_mounts.values()),
            "cap_drop": ["ALL"],
            "no_new_privileges": True,
            "gpus": "all" if self.gpus else "none",
        }


def run_sealed(
    client: Any, run: SealedRun, on_output: Callable[[bytes], None], timeout: float | None = None
) -> int:
    """Run the image to the end, streaming its output; return its exit status. The container is
    removed afterwards, also when interrupted; after `timeout` seconds it is killed (status 137)."""
    import docker.types

    volumes = {host: {"bind": inside, "mode": "rw"} for host, inside in run.mounts.items()}
    volumes |= {
        host: {"bind": inside, "mode": "ro"} for host, inside in run.read_only_mounts.items()
    }
    requests = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if run.gpus else []
    container = client.containers.run(
        run.image, run.command, detach=True, network_mode="none", read_only=True, user=run.user,
        tmpfs=run.tmpfs, volumes=volumes, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        device_requests=requests, environment=run.environment,
    )  # fmt: skip
    timer = threading.Timer(timeout, container.kill) if timeout else None
    try:
        if timer is not None:
            timer.start()
        for chunk in container.logs(stream=True, follow=True):
            on_output(chunk)
        status: int = container.wait()["StatusCode"]
        return status
    finally:
        if timer is not None:
            timer.cancel()
        container.remove(force=True)


def engine_version(client: Any) -> str:
    try:
        return str(client.version().get("Version", "unknown"))
    except Exception:  # evidence only: never fail a run over it
        return "unknown"


PROFILE_LABEL = "io.gapforge.profile"
"""Every sealed image carries it (its profile's name): how gapforge finds its own images."""


def stale_images(client: Any) -> list[tuple[str, int]]:
    """Sealed images that lost their tag to a newer build of the same name: (image ID, size)."""
    images = client.images.list(filters={"dangling": True, "label": PROFILE_LABEL})
    return [(image.id, int(image.attrs.get("Size", 0))) for image in images]


def remove_images(client: Any, ids: list[str]) -> list[str]:
    """Remove these images; one a container still uses is kept and named in the result."""
    from docker.errors import APIError

    kept = []
    for image_id in ids:
        try:
            client.images.remove(image_id)
        except APIError as exc:
            kept.append(f"{image_id[:19]} ({exc.explanation or exc})")
    return kept
