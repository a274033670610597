"""`gapforge deploy BUNDLE --registry HOST/REPO --kubernetes DIR | --slurm FILE`.

Order: the options are checked, then the bundle is verified through the one trust gate
(gapforge.operator.gate.require_verified) against the operator's anchor, and only then is anything
written; what the files name (recipe, version, image digest, image ID) comes from the gate's record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gapforge.atomic import write_atomic
from gapforge.deploy import DeployOptions, deployment, kubernetes_manifests
from gapforge.deploy.slurm import slurm_script
from gapforge.progress import console, step


def _plain_dumper() -> type:
    import yaml

    class PlainDumper(yaml.SafeDumper):
        """Every mapping written out in full: no YAML anchors and aliases for reviewers to chase."""

        def ignore_aliases(self, data: object) -> bool:
            return True

    return PlainDumper


def deploy_arguments(parser: argparse.ArgumentParser) -> None:
    from gapforge.commands.trust_options import add_trust_options

    parser.add_argument(
        "bundle", type=Path, help="the bundle whose image the site's registry holds"
    )
    parser.add_argument("--registry", required=True, metavar="HOST/REPO",
                        help="where 'gapforge load --to' pushed the image (the digest comes from the bundle)")  # fmt: skip
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--kubernetes", type=Path, metavar="DIR", help="write Kubernetes manifests into DIR"
    )
    where.add_argument("--slurm", type=Path, metavar="FILE", help="write an sbatch script")
    add_trust_options(
        parser,
        "check the bundle against its own key (integrity, not origin); deploy writes files only "
        "for a bundle the trust gate accepts",
    )
    parser.add_argument(
        "--nnodes", type=int, default=1, help="nodes the training spans (default 1)"
    )
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node (cuda images; default 8)")
    parser.add_argument("--namespace", default="gapforge", help="Kubernetes namespace")
    parser.add_argument("--data-claim", default="gapforge-data",
                        help="the PersistentVolumeClaim holding the data (mounted read-only at /data)")  # fmt: skip
    parser.add_argument("--data-file", default="train.jsonl", help="the data file's name in it")
    parser.add_argument("--output-size", default="200Gi", help="size of the outputs claim")
    parser.add_argument(
        "--storage-class",
        help="storage class of the outputs claim (ReadWriteMany for several nodes)",
    )
    parser.add_argument("--slurm-runtime", choices=("apptainer", "enroot", "docker"), default="apptainer",
                        help="how the site's Slurm nodes run containers")  # fmt: skip
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--time", default="24:00:00", help="Slurm time limit ([D-]HH:MM:SS)")


def cmd_deploy(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from gapforge.commands.trust_options import anchor_of
    from gapforge.operator.gate import require_verified

    options = DeployOptions(
        registry=args.registry, nnodes=args.nnodes, gpus_per_node=args.gpus_per_node,
        namespace=args.namespace, data_claim=args.data_claim, data_file=args.data_file,
        output_size=args.output_size, storage_class=args.storage_class, slurm_runtime=args.slurm_runtime,
        partition=args.partition, time_limit=args.time,
    ).checked()  # fmt: skip
    anchor = anchor_of(args)
    step(f"verifying {escape(str(args.bundle))}")
    d = deployment(require_verified(args.bundle, anchor, "deploy"), options)
    if args.kubernetes is not None:
        import yaml

        dumper = _plain_dumper()
        folder: Path = args.kubernetes
        texts = {
            f"{number:02d}-{manifest['kind'].lower()}.yaml": yaml.dump(
                manifest, Dumper=dumper, sort_keys=False
            )
            for number, manifest in enumerate(kubernetes_manifests(d), start=1)
        }
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            write_atomic(folder / name, text.encode())
        console.print(
            f"deploy: {len(texts)} manifests in {folder} ({', '.join(texts)}): {d.nnodes} node(s), image "
            f"{d.image}. Apply them with: kubectl apply -f {folder}",
            markup=False,
        )
    else:
        script: Path = args.slurm
        text = slurm_script(d, script.name)
        script.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(script, text.encode())
        script.chmod(0o755)
        console.print(
            f"deploy: {script} ({d.slurm_runtime}, {d.nnodes} node(s)): submit it with sbatch {script.name}",
            markup=False,
        )
    return 0
