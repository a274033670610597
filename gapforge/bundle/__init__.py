"""The air-gap bundle: what `gapforge build` writes into `dist/<recipe>-<version>/`, and the parsers
of its files (SHA256SUMS, the JSON documents, the image archive) that the operator's side
(gapforge/operator/: verify, load, run, inspect) reads them with.

Layout of a bundle (every file but the two signature files is listed in SHA256SUMS):

    image.tar               the sealed image: OCI layout + docker manifest.json, one file
    bundle.json             what the bundle holds: names, digests, sizes, the signing key's fingerprint
    sbom.cdx.json           CycloneDX 1.6: Python and Debian packages, the model, the runtime
    provenance.json         a DSSE envelope, signed with the key that signs SHA256SUMS, holding an
                            in-toto Statement v1 with a SLSA provenance v1 predicate; the image
                            digest is the subject (no path of the build host in it)
    pretest/evidence.json   the sealed pretest's result, bound to the image digest (+ log.txt, report.md)
    recipe/                 the recipe, its normalized JSON, its sample data and its locks
    wheels/                 the gapforge wheel and its dependencies, to install the operator CLI offline
    RUNBOOK.md              the exact commands for this bundle
    monitoring/grafana-dashboard.json
                            a Grafana dashboard of the runtime's training metrics (Prometheus)
    signing-key.pub.pem     the public half of the key that signed SHA256SUMS (pin your own copy)
    SHA256SUMS              `sha256sum -c` format
    SHA256SUMS.sig          Ed25519 signature over SHA256SUMS (raw, 64 bytes; `openssl pkeyutl -rawin`)
    release/metadata/       (optional) the release repository's TUF metadata, added by
                            `gapforge release export`: it signs itself, so SHA256SUMS does not list it
"""

from __future__ import annotations

IMAGE_TAR = "image.tar"
INDEX = "bundle.json"
SBOM = "sbom.cdx.json"
PROVENANCE = "provenance.json"
PRETEST = "pretest/evidence.json"
PRETEST_LOG = "pretest/log.txt"
PRETEST_REPORT = "pretest/report.md"
RUNBOOK = "RUNBOOK.md"
DASHBOARD = "monitoring/grafana-dashboard.json"
"""images/templates/grafana-dashboard.json, for the operator's Grafana (import; pick the Prometheus)."""
PUBLIC_KEY = "signing-key.pub.pem"
SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
RECIPE_DIR = "recipe"
WHEELS_DIR = "wheels"
RELEASE_DIR = "release"
"""The release repository's TUF metadata travels here (release/metadata/), verified by TUF itself."""
UNSIGNED = frozenset({SUMS, SIGNATURE})
"""The only files SHA256SUMS does not list: itself and its signature (and release/, see is_unsigned)."""


def is_unsigned(name: str) -> bool:
    """True for the files SHA256SUMS does not list: itself, its signature, the TUF metadata."""
    return name in UNSIGNED or name.startswith(f"{RELEASE_DIR}/")


BUNDLE_SCHEMA = "gapforge/bundle/v1"
PRETEST_SCHEMA = "gapforge/pretest/v1"
