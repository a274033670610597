"""The local Docker engine, through the docker SDK: load an image archive, run it with no network."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapforge.errors import BuildError, EnvironmentProblem, GapforgeError
from gapforge.fetch.rootfs import HOME, IMAGE_USER
from gapforge.progress import byte_progress, note, step


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


class ImageMismatch(GapforgeError):
    """The engine loaded something other than what was verified: it was not tagged (exit 1)."""

    exit_status = 1


def split_ref(ref: str) -> tuple[str, str]:
    """`repo[:tag]` → (repo, tag), the tag `latest` when none; a registry port is not a tag."""
    repo, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:
        return ref, "latest"
    return repo, tag


def _has_image(client: Any, image_id: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image_id)
    except ImageNotFound:
        return False
    return True


def load(
    client: Any, tar_path: Path, config_digest: str, ref: str | None = None, sha256: str = ""
) -> str:
    """`docker load` the archive untagged, check what was loaded, and only then tag it.

    The archive streams to the engine with its tags taken out (gapforge.oci.untag), hashed in the
    same pass. The engine's image ID must be `config_digest`, and with `sha256` the bytes sent must
    hash to it; otherwise what this call loaded is removed again, untagged, and ImageMismatch is
    raised. Then the image is tagged `ref` (default: the tag the archive carries). Returns the ref."""
    from gapforge.oci.untag import ArchiveFormatError, UntaggedStream

    step(f"loading {tar_path.name} into the Docker engine (untagged until checked)")
    had = _has_image(client, config_digest)
    with (
        open(tar_path, "rb") as handle,
        byte_progress("docker load", tar_path.stat().st_size) as advance,
    ):
        stream = UntaggedStream(handle, advance)
        try:
            images = client.images.load(stream.chunks())
        except ArchiveFormatError as exc:
            raise ImageMismatch(f"{tar_path}: not a readable image archive ({exc})") from None
    ids = {image.id for image in images}
    problems = []
    if config_digest not in ids:
        problems.append(
            f"the engine loaded it as {sorted(ids) or 'nothing'}, not as {config_digest}"
        )
    if sha256 and stream.finished and stream.sha256 != sha256:
        problems.append(f"the bytes sent hash to sha256:{stream.sha256}, not the verified {sha256}")
    if problems:
        remove_images(client, sorted(ids - ({config_digest} if had else set())))
        raise ImageMismatch(
            f"{tar_path}: {'; '.join(problems)}. Nothing was tagged (what this load added was "
            "removed): the archive changed on disk after it was checked, or the archive and its "
            "config disagree. Copy the bundle again and verify it before loading."
        )
    chosen = ref or (stream.tags[0] if stream.tags else "")
    if chosen:
        repo, tag = split_ref(chosen)
        client.images.get(config_digest).tag(repo, tag)
    note(f"loaded as image ID {config_digest}" + (f", then tagged {chosen}" if chosen else ""))
    return chosen


def smoke_run(client: Any, image_id: str, ref: str = "") -> str:
    """Run the image's `info` with the network cut, read-only, as its non-root user: by image ID,
    never by tag (the tag could have moved since the load checked the ID)."""
    from docker.errors import ContainerError

    step(f"smoke run: {ref or image_id} info (--network none --read-only, image {image_id[:19]}…)")
    try:
        output = client.containers.run(
            image_id, ["info"], network_mode="none", read_only=True, remove=True,
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
    network: str | None = None
    """An internal Docker network (a node of a job across nodes, gapforge.multinode); else none."""
    hostname: str | None = None
    """The container's host name and its alias on `network`, by which the other nodes reach it."""

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
            "network": f"internal:{self.network}" if self.network else "none",
            "read_only_rootfs": True,
            "user": self.user,
            "tmpfs": sorted(self.tmpfs),
            "mounts": sorted(self.mounts.values()),
            "read_only_mounts": sorted(self.read_only_mounts.values()),
            "cap_drop": ["ALL"],
            "no_new_privileges": True,
            "gpus": "all" if self.gpus else "none",
        }


def start_sealed(client: Any, run: SealedRun) -> Any:
    """Start the image detached, sealed as `SealedRun` says; the caller removes the container."""
    import docker.types

    volumes = {host: {"bind": inside, "mode": "rw"} for host, inside in run.mounts.items()}
    volumes |= {
        host: {"bind": inside, "mode": "ro"} for host, inside in run.read_only_mounts.items()
    }
    requests = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if run.gpus else []
    network: dict[str, Any] = {"network_mode": "none"}
    if run.network:  # one node of a job across nodes: an internal network, reachable by its name
        endpoint = client.api.create_endpoint_config(
            aliases=[run.hostname] if run.hostname else None
        )
        network = {"network": run.network, "networking_config": {run.network: endpoint}}
        if run.hostname:
            network["hostname"] = run.hostname
    return client.containers.run(
        run.image, run.command, detach=True, read_only=True, user=run.user,
        tmpfs=run.tmpfs, volumes=volumes, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        device_requests=requests, environment=run.environment, **network,
    )  # fmt: skip


def run_sealed(
    client: Any, run: SealedRun, on_output: Callable[[bytes], None], timeout: float | None = None
) -> int:
    """Run the image to the end, streaming its output; return its exit status. The container is
    removed afterwards, also when interrupted; after `timeout` seconds it is killed (status 137)."""
    container = start_sealed(client, run)
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
