"""`gapforge deploy`: the cluster hand-off written from a bundle, for a site's shared GPU cluster.

`--kubernetes DIR` writes manifests: an indexed Job (one pod per node, torchrun's c10d rendezvous on
pod 0, found through a headless Service), the image by digest from the site's registry, GPU
requests, a PersistentVolumeClaim for outputs (each node writes under its own folder), pods that
run as the image's non-root user on a read-only root filesystem, and a NetworkPolicy that lets the
job's pods reach each other (and the cluster's DNS) and nothing else. `--slurm FILE` writes an
sbatch script: one task per node, torchrun through the runtime, under Apptainer, enroot (pyxis) or
Docker as the site has it. Both name the image by the manifest digest the bundle vouches for, so
the cluster runs exactly what `gapforge load --to` verified and pushed.

Nothing is written before the trust gate (gapforge.operator.gate) has verified the bundle against the
operator's anchor; every value comes from its record or from a checked option (DeployOptions), and
each file quotes what it carries for its language: the manifests through a YAML emitter, the sbatch
script through gapforge.deploy.slurm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gapforge.deploy.values import (
    DIGEST,
    DNS_SUBDOMAIN,
    FILE_NAME,
    PARTITION,
    PROFILE,
    QUANTITY,
    REGISTRY,
    SLURM_TIME,
    UnsafeValue,
    line_value,
    matching,
)

if TYPE_CHECKING:
    from gapforge.operator.gate import VerifiedBundle

RDZV_PORT = 29400
OUTPUTS = "/outputs"
DATA = "/data"
USER_ID = 1000
"""The image's user (gapforge.fetch.rootfs.USER_ID): pods run as it, never as root."""
SLURM_RUNTIMES = ("apptainer", "enroot", "docker")


@dataclass(frozen=True)
class Deployment:
    """What the hand-off needs: from the verified bundle record and the checked options only."""

    name: str
    """A DNS-1123 name for the job (recipe name and version)."""
    recipe: str
    version: str
    image: str
    """REGISTRY/REPO@sha256:… (by digest: a tag can move)."""
    image_id: str
    """The image's config digest (what `docker images` shows), as the signature vouches for it."""
    profile: str
    nnodes: int
    gpus_per_node: int
    namespace: str
    data_claim: str
    data_file: str
    output_size: str
    storage_class: str | None
    slurm_runtime: str
    partition: str | None
    time_limit: str

    @property
    def gpu(self) -> bool:
        return self.profile == "cuda" and self.gpus_per_node > 0

    @property
    def nproc(self) -> int:
        return self.gpus_per_node if self.gpu else 1


@dataclass(frozen=True)
class DeployOptions:
    """The operator's options, as typed: every one is checked before a bundle is read."""

    registry: str
    nnodes: int = 1
    gpus_per_node: int | None = None
    namespace: str = "gapforge"
    data_claim: str = "gapforge-data"
    data_file: str = "train.jsonl"
    output_size: str = "200Gi"
    storage_class: str | None = None
    slurm_runtime: str = "apptainer"
    partition: str | None = None
    time_limit: str = "24:00:00"

    def checked(self) -> DeployOptions:
        """These options with every string held to what its consumer accepts, or UnsafeValue
        (exit 2) naming the option; run before the bundle is verified, so a typo costs no hashing."""
        registry = line_value(self.registry, "--registry").strip().rstrip("/")
        if not re.fullmatch(REGISTRY, registry) or "@" in registry:
            raise UnsafeValue(
                f"deploy: --registry {self.registry!r}: expected HOST[:PORT]/REPO (the repository that "
                "'gapforge load --to' pushed the image to), without a tag or digest: the digest comes from the bundle"
            )
        if self.nnodes < 1:
            raise UnsafeValue(f"deploy: --nnodes {self.nnodes}: pass 1 or more nodes")
        if self.slurm_runtime not in SLURM_RUNTIMES:
            raise UnsafeValue(
                f"deploy: --slurm-runtime {self.slurm_runtime!r}: one of {', '.join(SLURM_RUNTIMES)}"
            )
        storage = self.storage_class
        partition = self.partition
        return DeployOptions(
            registry=registry, nnodes=self.nnodes, gpus_per_node=self.gpus_per_node,
            namespace=_dns_name(line_value(self.namespace, "--namespace")),
            data_claim=_dns_name(line_value(self.data_claim, "--data-claim")),
            data_file=matching(self.data_file, FILE_NAME, "--data-file",
                               "a file name of letters, digits, '.', '_' and '-'"),
            output_size=matching(self.output_size, QUANTITY, "--output-size",
                                 "a Kubernetes quantity such as 200Gi"),
            storage_class=None if storage is None else matching(
                storage, DNS_SUBDOMAIN, "--storage-class", "a storage class name (lower-case DNS-1123)"),
            slurm_runtime=self.slurm_runtime,
            partition=None if partition is None else matching(
                partition, PARTITION, "--partition",
                "a Slurm partition name (letters, digits, '_', '.', '-'), or several joined by ','"),
            time_limit=matching(self.time_limit, SLURM_TIME, "--time",
                                "Slurm's [D-]HH:MM:SS, such as 24:00:00"),
        )  # fmt: skip


def _dns_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:52].rstrip("-") or "gapforge"


def deployment(verified: VerifiedBundle, options: DeployOptions) -> Deployment:
    """The deployment of the verified bundle's image from the options' registry (where `load --to`
    put it): name, version, image digest, image ID and profile come from the verified record only."""
    options = options.checked()
    where = f"{verified.folder / 'bundle.json'}:"
    recipe = line_value(verified.name, f"{where} name")
    version = line_value(verified.version, f"{where} version")
    digest = matching(
        verified.manifest_digest, DIGEST, f"{where} image.manifest_digest", "a sha256 digest"
    )
    image_id = matching(
        verified.config_digest, DIGEST, f"{where} image.config_digest", "a sha256 digest"
    )
    image = verified.index.get("image")
    if not isinstance(image, dict):
        raise UnsafeValue(f"deploy: {where} image: expected an object, got {type(image).__name__}")
    profile = matching(
        image.get("profile", "cpu"),
        PROFILE,
        f"{where} image.profile",
        "a profile name such as cuda",
    )
    gpus = (
        (8 if profile == "cuda" else 0) if options.gpus_per_node is None else options.gpus_per_node
    )
    if gpus < 0 or (profile == "cuda" and gpus == 0):
        raise UnsafeValue(
            f"deploy: --gpus-per-node {gpus}: the image is the {profile} profile; "
            + (
                "a cuda image trains on GPUs, pass 1 or more"
                if profile == "cuda"
                else "pass 0 or leave it out"
            )
        )
    return Deployment(
        name=_dns_name(f"gf-{recipe}-{version}"), recipe=recipe, version=version,
        image=f"{options.registry}@{digest}", image_id=image_id, profile=profile, nnodes=options.nnodes,
        gpus_per_node=gpus if profile == "cuda" else 0, namespace=options.namespace,
        data_claim=options.data_claim, data_file=options.data_file, output_size=options.output_size,
        storage_class=options.storage_class, slurm_runtime=options.slurm_runtime,
        partition=options.partition, time_limit=options.time_limit,
    )  # fmt: skip


def runtime_command(
    d: Deployment, out: str, data: str, node_rank: str | None = None, endpoint: str | None = None
) -> list[str]:
    """The runtime's command on one node (the image's entrypoint is gapforge-runtime); across
    nodes, the node's rank and the rendezvous endpoint when given (the sbatch task adds its own)."""
    command = ["run", "--data", data, "--out", out, "--nproc", str(d.nproc)]
    if d.nnodes > 1:
        command += ["--nnodes", str(d.nnodes), "--rdzv-id", d.name]
        if node_rank is not None and endpoint is not None:
            command += ["--node-rank", node_rank, "--rdzv-endpoint", endpoint]
    return command


def _network_policy(
    d: Deployment, meta: dict[str, Any], selector: dict[str, str]
) -> dict[str, Any]:
    """The NetworkPolicy of the job's pods."""
    # Egress only to the job's own pods (rendezvous, NCCL/gloo) and to the cluster's DNS; ingress
    # only from them. Everything else, the internet and the rest of the cluster, is refused.
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {**meta, "name": f"{d.name}-no-egress"},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": selector}}]}],
            "egress": [
                {"to": [{"podSelector": {"matchLabels": selector}}]},
                {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                 "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            ],
        },
    }  # fmt: skip


def _container(d: Deployment) -> dict[str, Any]:
    """The runtime's container: by digest, non-root, read-only root, its node's rank from the index."""
    endpoint = f"{d.name}-0.{d.name}.{d.namespace}.svc:{RDZV_PORT}"
    command = runtime_command(
        d, f"{OUTPUTS}/node-$(NODE_RANK)", f"{DATA}/{d.data_file}", "$(NODE_RANK)", endpoint
    )
    resources: dict[str, Any] = {
        "requests": {"cpu": "4", "memory": "32Gi"},
        "limits": {"memory": "64Gi"},
    }
    if d.gpu:
        resources = {"requests": {"cpu": str(8 * d.gpus_per_node), "memory": f"{64 * d.gpus_per_node}Gi",
                                  "nvidia.com/gpu": d.gpus_per_node},
                     "limits": {"nvidia.com/gpu": d.gpus_per_node}}  # fmt: skip
    return {
        "name": "runtime", "image": d.image, "imagePullPolicy": "IfNotPresent", "args": command,
        "env": [
            {"name": "NODE_RANK", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        ],
        "ports": [{"name": "rendezvous", "containerPort": RDZV_PORT}],
        "resources": resources,
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [
            {"name": "outputs", "mountPath": OUTPUTS}, {"name": "data", "mountPath": DATA, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": "/home/gapforge"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }  # fmt: skip


def kubernetes_manifests(d: Deployment) -> list[dict[str, Any]]:
    """Service, PersistentVolumeClaim, NetworkPolicy and the indexed Job, in the order to apply them."""
    labels = {"app.kubernetes.io/name": "gapforge", "app.kubernetes.io/instance": d.name,
              "gapforge.io/recipe": _dns_name(d.recipe)}  # fmt: skip
    selector = {"app.kubernetes.io/instance": d.name}
    # The verified record's own words beside the DNS-safe names: the image ID and the release, as
    # annotations a reviewer can match against `gapforge verify`'s output.
    annotations = {
        "gapforge.io/image-id": d.image_id,
        "gapforge.io/release": f"{d.recipe} {d.version}",
    }
    meta = {"name": d.name, "namespace": d.namespace, "labels": labels, "annotations": annotations}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"clusterIP": "None", "selector": selector, "publishNotReadyAddresses": True,
                 "ports": [{"name": "rendezvous", "port": RDZV_PORT, "targetPort": RDZV_PORT}]},
    }  # fmt: skip
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if d.nnodes > 1 else "ReadWriteOnce"],
        "resources": {"requests": {"storage": d.output_size}},
    }
    if d.storage_class:
        claim_spec["storageClassName"] = d.storage_class
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {**meta, "name": f"{d.name}-outputs"}, "spec": claim_spec}  # fmt: skip
    policy = _network_policy(d, meta, selector)
    container = _container(d)
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": {
            "completionMode": "Indexed", "completions": d.nnodes, "parallelism": d.nnodes,
            # one node lost ends the job: torchrun ends the others, and --resume continues it
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "subdomain": d.name, "restartPolicy": "Never", "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                                        "fsGroup": USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [
                        {"name": "outputs", "persistentVolumeClaim": {"claimName": f"{d.name}-outputs"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": d.data_claim, "readOnly": True}},
                        {"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {"medium": "Memory"}},
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                    ],
                },
            },
        },
    }  # fmt: skip
    return [service, claim, policy, job]
