"""The site's registry, with everything attached: a small OCI distribution client (client.py) and
OCI 1.1 referrers (referrers.py): the bundle's SBOM, provenance and signature pushed as artifact
manifests whose `subject` is the image, listed through the referrers API or, where the registry
has none, the referrers tag schema (`sha256-<hex>`), and verified from the registry alone
(verify.py).
"""

from __future__ import annotations

import ipaddress

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
"""What a manifest GET accepts."""

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DATA = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
"""The image spec's empty descriptor: the config of an artifact that has none."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: Docker itself treats these registries as plain HTTP."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
