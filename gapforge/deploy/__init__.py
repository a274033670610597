"""`gapforge deploy`: the cluster hand-off written from a bundle, for a site's shared GPU cluster.

`--kubernetes DIR` writes manifests: an indexed Job (one pod per node, torchrun's c10d rendezvous on
pod 0, found through a headless Service), the image by digest from the site's registry, GPU
requests, a PersistentVolumeClaim for outputs (each node writes under its own folder), pods that
run as the image's non-root user on a read-only root filesystem, and a NetworkPolicy that lets the
job's pods reach each other (and the cluster's DNS) and nothing else. `--slurm FILE` writes an
sbatch script: one task per node, torchrun through the runtime, under Apptainer, enroot (pyxis) or
Docker as the site has it. Both name the image by the manifest digest the bundle vouches for, so
the cluster runs exactly what `gapforge load --to` verified and pushed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge.bundle import INDEX
from gapforge.errors import BundleError

RDZV_PORT = 29400
OUTPUTS = "/outputs"
DATA = "/data"
USER_ID = 1000
"""The image's user (gapforge.fetch.rootfs.USER_ID): pods run as it, never as root."""


@dataclass(frozen=True)
class Deployment:
    """What the hand-off needs, from the bundle and the options."""

    name: str
    """A DNS-1123 name for the job (recipe name and version)."""
    recipe: str
    version: str
    image: str
    """REGISTRY/REPO@sha256:… (by digest: a tag can move)."""
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


def _dns_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:52].rstrip("-") or "gapforge"


def deployment_from_bundle(
    bundle: Path,
    registry: str,
    *,
    nnodes: int,
    gpus_per_node: int | None,
    namespace: str = "gapforge",
    data_claim: str = "gapforge-data",
    data_file: str = "train.jsonl",
    output_size: str = "200Gi",
    storage_class: str | None = None,
    slurm_runtime: str = "apptainer",
    partition: str | None = None,
    time_limit: str = "24:00:00",
) -> Deployment:
    """The deployment of `bundle`'s image from `registry` (HOST[:PORT]/REPO, where `load --to` put it)."""
    if not (bundle / INDEX).is_file():
        raise BundleError(
            f"deploy: {bundle}: not a bundle (no {INDEX}): pass a folder that 'gapforge build' wrote"
        )
    index = json.loads((bundle / INDEX).read_text(encoding="utf-8"))
    image = index.get("image", {})
    digest = str(image.get("manifest_digest", ""))
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise BundleError(
            f"deploy: {bundle / INDEX}: image.manifest_digest {digest!r} is not a sha256 digest"
        )
    repo = registry.strip().rstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)+", repo) or "@" in repo:
        raise BundleError(
            f"deploy: --registry {registry!r}: expected HOST[:PORT]/REPO (the repository that "
            "'gapforge load --to' pushed the image to), without a tag or digest: the digest comes from the bundle"
        )
    if nnodes < 1:
        raise BundleError(f"deploy: --nnodes {nnodes}: pass 1 or more nodes")
    profile = str(image.get("profile", "cpu"))
    gpus = (8 if profile == "cuda" else 0) if gpus_per_node is None else gpus_per_node
    if gpus < 0 or (profile == "cuda" and gpus == 0):
        raise BundleError(
            f"deploy: --gpus-per-node {gpus}: the image is the {profile} profile; "
            + (
                "a cuda image trains on GPUs, pass 1 or more"
                if profile == "cuda"
                else "pass 0 or leave it out"
            )
        )
    if not re.fullmatch(r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi)", output_size):
        raise BundleError(
            f"deploy: --output-size {output_size!r}: expected a Kubernetes quantity such as 200Gi"
        )
    if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", time_limit):
        raise BundleError(
            f"deploy: --time {time_limit!r}: expected Slurm's [D-]HH:MM:SS, such as 24:00:00"
        )
    name, version = str(index.get("name", "gapforge")), str(index.get("version", "0"))
    return Deployment(
        name=_dns_name(f"gf-{name}-{version}"), recipe=name, version=version, image=f"{repo}@{digest}",
        profile=profile, nnodes=nnodes, gpus_per_node=gpus if profile == "cuda" else 0,
        namespace=_dns_name(namespace), data_claim=_dns_name(data_claim), data_file=data_file,
        output_size=output_size, storage_class=storage_class, slurm_runtime=slurm_runtime,
        partition=partition, time_limit=time_limit,
    )  # fmt: skip


def runtime_command(d: Deployment, node_rank: str, endpoint: str, out: str, data: str) -> list[str]:
    """The runtime's command on one node (the image's entrypoint is gapforge-runtime)."""
    command = ["run", "--data", data, "--out", out, "--nproc", str(d.nproc)]
    if d.nnodes > 1:
        command += ["--nnodes", str(d.nnodes), "--node-rank", node_rank,
                    "--rdzv-endpoint", endpoint, "--rdzv-id", d.name]  # fmt: skip
    return command


def kubernetes_manifests(d: Deployment) -> list[dict[str, Any]]:
    """Service, PersistentVolumeClaim, NetworkPolicy and the indexed Job, in the order to apply them."""
    labels = {"app.kubernetes.io/name": "gapforge", "app.kubernetes.io/instance": d.name,
              "gapforge.io/recipe": _dns_name(d.recipe)}  # fmt: skip
    selector = {"app.kubernetes.io/instance": d.name}
    meta = {"name": d.name, "namespace": d.namespace, "labels": labels}
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
    # Egress only to the job's own pods (rendezvous, NCCL/gloo) and to the cluster's DNS; ingress
    # only from them. Everything else, the internet and the rest of the cluster, is refused.
    policy = {
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
    endpoint = f"{d.name}-0.{d.name}.{d.namespace}.svc:{RDZV_PORT}"
    command = runtime_command(
        d, "$(NODE_RANK)", endpoint, f"{OUTPUTS}/node-$(NODE_RANK)", f"{DATA}/{d.data_file}"
    )
    resources: dict[str, Any] = {
        "requests": {"cpu": "4", "memory": "32Gi"},
        "limits": {"memory": "64Gi"},
    }
    if d.gpu:
        resources = {"requests": {"cpu": str(8 * d.gpus_per_node), "memory": f"{64 * d.gpus_per_node}Gi",
                                  "nvidia.com/gpu": d.gpus_per_node},
                     "limits": {"nvidia.com/gpu": d.gpus_per_node}}  # fmt: skip
    container = {
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


SLURM_TEMPLATE = """\
#!/bin/bash
# {{ d.recipe }} {{ d.version }}: training across {{ d.nnodes }} node(s), written by `gapforge deploy --slurm`.
# The image by digest: {{ d.image }}
# Submit from a shared folder: sbatch {{ script_name }}  (DATA and OUT below must be on storage every node sees)
#SBATCH --job-name={{ d.name }}
#SBATCH --nodes={{ d.nnodes }}
#SBATCH --ntasks-per-node=1
{% if d.gpu %}#SBATCH --gpus-per-node={{ d.gpus_per_node }}
{% endif %}#SBATCH --exclusive
#SBATCH --time={{ d.time_limit }}
{% if d.partition %}#SBATCH --partition={{ d.partition }}
{% endif %}#SBATCH --output={{ d.name }}-%j.log
set -euo pipefail

DATA="${DATA:-$PWD/data/{{ d.data_file }}}"
OUT="${OUT:-$PWD/outputs/{{ d.name }}}"
{% if d.slurm_runtime == "apptainer" %}# Convert once on the connected side or a login node: apptainer build {{ d.name }}.sif docker://{{ d.image }}
SIF="${SIF:-$PWD/{{ d.name }}.sif}"
{% endif %}
head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export RDZV_ENDPOINT="${head_node}:{{ port }}"
mkdir -p "$OUT"
export DATA OUT{% if d.slurm_runtime == "apptainer" %} SIF{% endif %}

# One task per node; each runs torchrun (through the runtime) over its {{ d.nproc }} process(es).
# A node that stops ends the job on every node; run this script again, adding --resume, to continue.
# The task's script is in single quotes on purpose: $SLURM_NODEID and the rest expand on each node.
# shellcheck disable=SC2016
srun --kill-on-bad-exit=1 bash -c '
set -euo pipefail
rank="$SLURM_NODEID"
mkdir -p "$OUT/node-$rank"
{% if d.slurm_runtime == "apptainer" %}exec apptainer run --containall --cleanenv --writable-tmpfs {% if d.gpu %}--nv {% endif %}\\
  --bind "$DATA:{{ data }}/{{ d.data_file }}:ro" --bind "$OUT/node-$rank:{{ outputs }}" \\
  "$SIF" {{ command }}
{% elif d.slurm_runtime == "enroot" %}exec enroot start --rw \\
  --mount "$DATA:{{ data }}/{{ d.data_file }}" --mount "$OUT/node-$rank:{{ outputs }}" \\
  "{{ d.name }}" {{ command }}
{% else %}exec docker run --rm --read-only --user {{ uid }}:{{ uid }} --network host --cap-drop ALL \\
  --security-opt no-new-privileges {% if d.gpu %}--gpus all {% endif %}--tmpfs /tmp --tmpfs /home/gapforge --shm-size 16g \\
  -v "$DATA:{{ data }}/{{ d.data_file }}:ro" -v "$OUT/node-$rank:{{ outputs }}" \\
  "{{ d.image }}" {{ command }}
{% endif %}'
"""


def slurm_script(d: Deployment, script_name: str) -> str:
    """The sbatch script (Jinja2), run through `bash -n` and shellcheck in the tests."""
    import shlex

    from jinja2 import Environment, StrictUndefined

    args = runtime_command(d, "$rank", "$RDZV_ENDPOINT", OUTPUTS, f"{DATA}/{d.data_file}")
    # $rank and $RDZV_ENDPOINT expand in the task's shell; everything else is quoted as it is
    command = " ".join(f'"{a}"' if a.startswith("$") else shlex.quote(a) for a in args)
    if d.slurm_runtime == "enroot":
        command = "gapforge-runtime " + command  # enroot start runs a command, not the entrypoint
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(SLURM_TEMPLATE).render(
        d=d,
        script_name=script_name,
        port=RDZV_PORT,
        data=DATA,
        outputs=OUTPUTS,
        uid=USER_ID,
        command=command,
    )
