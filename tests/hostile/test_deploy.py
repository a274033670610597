"""Hostile deploy inputs (issue 22, attack 5): a bundle whose signed bundle.json carries a command in
its name, options that smuggle a newline into an `#SBATCH` line, and a bundle nobody signed. Each is
refused before a file is written, or written with every value quoted for its language."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from gapforge.bundle import SIGNATURE, SUMS
from gapforge.bundle.sign import sign
from gapforge.bundle.source import BundleSource
from gapforge.bundle.sums import bundle_files, render_sums
from gapforge.bundle.write import write_bundle
from tests.hostile.conftest import Hostile
from tests.unit.test_bundle import _key, source  # noqa: F401 (source: the fixture)

REGISTRY = "reg.site/ml/desk"


def _signed(src: BundleSource, hostile: Hostile, **index: object) -> tuple[Path, Path]:
    """A cuda bundle with `index` merged into bundle.json, signed by the release key itself (as a
    compromised build host would), and that key's public half: the signature holds."""
    image = replace(src.image, profile="cuda")
    bundle = write_bundle(replace(src, image=image), _key(hostile.root), hostile.inputs)
    document = json.loads((bundle / "bundle.json").read_text()) | index
    (bundle / "bundle.json").write_text(json.dumps(document))
    names = [n for n in bundle_files(bundle) if n not in (SUMS, SIGNATURE)]
    digests = {n: hashlib.sha256((bundle / n).read_bytes()).hexdigest() for n in names}
    (bundle / SUMS).write_bytes(render_sums(digests))
    (bundle / SIGNATURE).write_bytes(sign(_key(hostile.root), (bundle / SUMS).read_bytes()))
    pub = hostile.inputs / "release.pub.pem"
    pub.write_bytes(_key(hostile.root).public_pem)
    return bundle, pub


@pytest.mark.parametrize("name", ["x\nid > /tmp/x", "x\rid", "x\u2028id", "x\x00id"])
@pytest.mark.parametrize("where", ["--slurm", "--kubernetes"])
def test_a_signed_name_with_a_line_break_is_refused(
    source: BundleSource,  # noqa: F811
    hostile: Hostile,
    capsys: pytest.CaptureFixture[str],
    name: str,
    where: str,
) -> None:
    bundle, pub = _signed(source, hostile, name=name)
    target = hostile.out / ("train.sbatch" if where == "--slurm" else "k8s")
    status, text = hostile.run(
        "deploy", bundle, "--key", pub, "--registry", REGISTRY, where, target, capsys=capsys
    )
    assert status == 2 and "bundle.json: name" in text and "refused" in text, text
    assert not hostile.out.exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--partition", "gpu\nid > /tmp/x"),
        ("--partition", "gpu --exclusive"),
        ("--time", "24:00:00\nid"),
        ("--namespace", "ml\nkind: Secret"),
        ("--data-claim", "data\x1b[2J"),
        ("--storage-class", "ceph\n  evil: 1"),
        ("--registry", "reg.site/ml/x\nid"),
        ("--data-file", "train.jsonl\nid"),
    ],
)
def test_an_option_with_a_control_character_is_refused_naming_it(
    source: BundleSource,  # noqa: F811
    hostile: Hostile,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
) -> None:
    bundle, pub = _signed(source, hostile)
    argv = ["--registry", REGISTRY, option, value] if option != "--registry" else [option, value]
    status, text = hostile.run("deploy", bundle, "--key", pub, *argv, "--slurm", hostile.out / "t.sbatch",
                               capsys=capsys)  # fmt: skip
    assert status == 2 and f"deploy: {option}" in text, text
    assert not hostile.out.exists()


def test_an_unsigned_change_to_bundle_json_is_not_deployed(
    source: BundleSource,  # noqa: F811
    hostile: Hostile,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle, pub = _signed(source, hostile)
    document = json.loads((bundle / "bundle.json").read_text())
    document["image"]["manifest_digest"] = "sha256:" + "6" * 64  # the attacker's own image
    (bundle / "bundle.json").write_text(json.dumps(document))
    status, text = hostile.run("deploy", bundle, "--key", pub, "--registry", REGISTRY, "--kubernetes",
                               hostile.out, capsys=capsys)  # fmt: skip
    assert status == 1 and "not verified" in text and "bundle.json" in text, text
    assert not hostile.out.exists()


def test_a_bundle_without_a_signature_is_not_deployed(
    source: BundleSource,  # noqa: F811
    hostile: Hostile,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle, pub = _signed(source, hostile)
    (bundle / SIGNATURE).write_bytes(b"\0" * 64)
    status, text = hostile.run("deploy", bundle, "--key", pub, "--registry", REGISTRY, "--slurm",
                               hostile.out / "t.sbatch", capsys=capsys)  # fmt: skip
    assert status in (1, 2) and "not verified" in text, text  # 2 where the gate calls it unusable
    assert not hostile.out.exists()


def test_shell_and_yaml_metacharacters_in_a_signed_name_are_quoted(
    source: BundleSource,  # noqa: F811
    hostile: Hostile,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A name the name parser accepts (one component) but a shell or YAML would read as code."""
    name = "$(touch pwned)'`id`\";x: {y: 1}&*a"
    bundle, pub = _signed(source, hostile, name=name)
    script = hostile.out / "t.sbatch"
    status, text = hostile.run("deploy", bundle, "--key", pub, "--registry", REGISTRY, "--slurm", script,
                               "--nnodes", "2", "--partition", "gpu", capsys=capsys)  # fmt: skip
    assert status == 0, text
    body = script.read_text()
    directives = [line for line in body.splitlines() if line.startswith("#SBATCH")]
    assert directives[-2:] == ["#SBATCH --partition=gpu", directives[-1]] and len(directives) == 8
    assert (
        subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode
        == 0
    )
    checked = subprocess.run(
        ["shellcheck", str(script)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout
    # Run the script's assignments (everything before srun) in a shell: the name never executes.
    prelude = body[: body.index("head_node=")]
    subprocess.run(["bash", "-c", prelude], cwd=hostile.out, check=True, capture_output=True)
    assert not (hostile.out / "pwned").exists()
    status, text = hostile.run("deploy", bundle, "--key", pub, "--registry", REGISTRY, "--kubernetes",
                               hostile.out / "k8s", capsys=capsys)  # fmt: skip
    assert status == 0, text
    job = yaml.safe_load((hostile.out / "k8s" / "04-job.yaml").read_text())
    assert job["metadata"]["annotations"]["gapforge.io/release"] == f"{name} 1.2.3"
    assert set(job) == {"apiVersion", "kind", "metadata", "spec"}


def test_insecure_is_never_enough_to_deploy(
    source: BundleSource,  # noqa: F811
    hostile: Hostile,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--insecure checks the bundle against its own key: integrity, not origin. The cluster would
    pull an image nobody vouched for, so the gate refuses and nothing is written."""
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(hostile.inputs / "no-trust"))  # no trusted root
    bundle, _ = _signed(source, hostile)
    status, text = hostile.run("deploy", bundle, "--insecure", "--registry", REGISTRY, "--kubernetes",
                               hostile.out, capsys=capsys)  # fmt: skip
    assert status == 1 and "not verified" in text, text
    assert not hostile.out.exists()
