"""`gapforge deploy`: Kubernetes manifests that validate offline against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict) and hold the sealed run's promises; sbatch scripts that pass bash -n and
shellcheck; bad options refused with exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gapforge.bundle.source import BundleSource
from gapforge.bundle.write import write_bundle
from gapforge.deploy.slurm import SLURM_TEMPLATE
from tests.unit.test_bundle import _key, source  # noqa: F401 (source: the fixture)


def signed_bundle(src: BundleSource, tmp_path: Path, profile: str = "cuda") -> tuple[Path, Path]:
    """A bundle signed by the release key, and the key's public half where --key reads it."""
    image = replace(src.image, profile=profile)
    folder = write_bundle(replace(src, image=image), _key(tmp_path), tmp_path / f"dist-{profile}")
    pub = tmp_path / "release.pub.pem"
    pub.write_bytes(_key(tmp_path).public_pem)
    return folder, pub


@pytest.fixture
def signed(source: BundleSource, tmp_path: Path) -> tuple[Path, Path]:  # noqa: F811
    return signed_bundle(source, tmp_path)


def _digest(bundle: Path) -> str:
    return str(json.loads((bundle / "bundle.json").read_text())["image"]["manifest_digest"])


def _deploy(signed: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess[str]:
    bundle, pub = signed
    return subprocess.run([sys.executable, "-m", "gapforge.cli", "deploy", str(bundle), "--key", str(pub), *args],
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_kubernetes_manifests_validate_and_keep_the_job_sealed(
    signed: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "k8s"
    result = _deploy(signed, "--registry", "harbor.site:8443/ml/llama-desk", "--kubernetes",
                     str(out), "--nnodes", "2", "--gpus-per-node", "8", "--storage-class", "cephfs")  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs = {p.name: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))}
    assert sorted(d["kind"] for d in docs.values()) == [
        "Job",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Service",
    ]
    for name, doc in docs.items():
        kubernetes_validate.validate(doc, "1.31", strict=True)  # raises on any schema error
        assert "&id" not in (out / name).read_text()  # no YAML anchors
    job = next(d for d in docs.values() if d["kind"] == "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert (
        container["image"] == f"harbor.site:8443/ml/llama-desk@{_digest(signed[0])}"
    )  # by digest, never a tag
    security = container["securityContext"]
    assert (
        security["runAsNonRoot"]
        and security["readOnlyRootFilesystem"]
        and not security["allowPrivilegeEscalation"]
    )
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    args = container["args"]
    assert args[args.index("--nnodes") + 1] == "2" and args[args.index("--nproc") + 1] == "8"
    assert args[args.index("--node-rank") + 1] == "$(NODE_RANK)"
    endpoint = args[args.index("--rdzv-endpoint") + 1]
    service = next(d for d in docs.values() if d["kind"] == "Service")
    assert service["spec"]["clusterIP"] == "None" and endpoint.startswith(
        f"{job['metadata']['name']}-0.{service['metadata']['name']}."
    )
    claim = next(d for d in docs.values() if d["kind"] == "PersistentVolumeClaim")
    assert (
        claim["spec"]["accessModes"] == ["ReadWriteMany"]
        and claim["spec"]["storageClassName"] == "cephfs"
    )
    policy = next(d for d in docs.values() if d["kind"] == "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    own = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": job["metadata"]["name"]}}}
    assert policy["egress"][0] == {"to": [own]}  # the job's own pods ...
    assert {p["port"] for p in policy["egress"][1]["ports"]} == {53}  # ... and DNS, nothing else
    assert all("ipBlock" not in peer for rule in policy["egress"] for peer in rule["to"])


def test_the_validator_catches_a_bad_manifest(signed: tuple[Path, Path], tmp_path: Path) -> None:
    _deploy(signed, "--registry", "reg.site/ml/x", "--kubernetes", str(tmp_path / "k"))
    job = yaml.safe_load((tmp_path / "k" / "04-job.yaml").read_text())
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, "1.31", strict=True)


@pytest.mark.parametrize("runtime", ["apptainer", "enroot", "docker"])
def test_sbatch_scripts_pass_bash_n_and_shellcheck(
    signed: tuple[Path, Path], tmp_path: Path, runtime: str
) -> None:
    script = tmp_path / "train.sbatch"
    result = _deploy(signed, "--registry", "reg.site/ml/llama-desk", "--slurm", str(script),
                     "--nnodes", "4", "--gpus-per-node", "4", "--slurm-runtime", runtime, "--partition", "gpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert (
        "#SBATCH --nodes=4" in text
        and "#SBATCH --gpus-per-node=4" in text
        and f"@{_digest(signed[0])}" in text
    )
    assert '--node-rank "$rank"' in text and "--nproc 4 --nnodes 4" in text
    assert (
        subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode
        == 0
    )
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: scripts/setup.sh installs it"
    checked = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--registry", "reg.site/ml/x:1.0"], "without a tag or digest"),
        (["--registry", "reg.site/ml/x", "--gpus-per-node", "0"], "pass 1 or more"),
        (["--registry", "reg.site/ml/x", "--output-size", "lots"], "Kubernetes quantity"),
        (["--registry", "reg.site/ml/x", "--time", "forever"], "HH:MM:SS"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(
    signed: tuple[Path, Path], tmp_path: Path, args: list[str], needle: str
) -> None:
    result = _deploy(signed, *args, "--kubernetes", str(tmp_path / "k"))
    assert result.returncode == 2 and needle in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "k").exists()


def test_a_cpu_image_gets_no_gpu_requests(source: BundleSource, tmp_path: Path) -> None:  # noqa: F811
    result = _deploy(
        signed_bundle(source, tmp_path, "cpu"),
        "--registry",
        "reg.site/ml/x",
        "--kubernetes",
        str(tmp_path / "k"),
    )
    assert result.returncode == 0, result.stderr
    job = yaml.safe_load((tmp_path / "k" / "04-job.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert (
        "nvidia.com/gpu" not in json.dumps(container["resources"])
        and "--nnodes" not in container["args"]
    )


def test_every_value_in_the_sbatch_template_is_a_bare_expression() -> None:
    """The finalize quotes each expression as one shell word; an expression inside quotes of the
    template's own (or glued to a quote) would let a quoted value close them."""
    import re

    for match in re.finditer(r"\{\{.*?\}\}", SLURM_TEMPLATE):
        before = SLURM_TEMPLATE[: match.start()].split("\n")
        line = before[-1]
        code = "\n".join(x for x in before[:-1] if not x.startswith("#")) + "\n" + line
        if not line.startswith("#"):  # a comment's apostrophes quote nothing
            assert code.count('"') % 2 == 0 and code.count("'") % 2 == 0, (
                f"{match.group()} inside quotes: {line!r}"
            )
        after = SLURM_TEMPLATE[match.end() : match.end() + 1]
        assert after not in ('"', "'"), f"{match.group()} glued to a quote"
    task = SLURM_TEMPLATE[
        SLURM_TEMPLATE.index("bash -c '") : SLURM_TEMPLATE.index("' gapforge-task")
    ]
    assert "{{" not in task, "the task script that srun runs holds values of its own"


def test_the_image_id_and_release_ride_along_from_the_verified_record(
    signed: tuple[Path, Path], tmp_path: Path
) -> None:
    result = _deploy(signed, "--registry", "reg.site/ml/x", "--kubernetes", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    index = json.loads((signed[0] / "bundle.json").read_text())
    job = yaml.safe_load((tmp_path / "k" / "04-job.yaml").read_text())
    assert job["metadata"]["annotations"] == {"gapforge.io/image-id": index["image"]["config_digest"],
                                              "gapforge.io/release": f"{index['name']} {index['version']}"}  # fmt: skip


def test_an_unverified_bundle_writes_nothing(signed: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, _ = signed
    (bundle / "RUNBOOK.md").write_text("run this instead\n")
    result = _deploy(signed, "--registry", "reg.site/ml/x", "--kubernetes", str(tmp_path / "k"))
    assert (
        result.returncode == 1 and "not verified" in result.stderr and "RUNBOOK.md" in result.stderr
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "k").exists()
