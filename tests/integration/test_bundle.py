"""Across the gap, for real: the tiny recipe built, pretested with its network cut and bundled once;
then verified with coreutils + openssl alone and with gapforge, tampered with in every way the
issue names, loaded into Docker and into a local registry, preflighted and run on fresh data, and
gapforge itself installed from the bundle's wheels with no index."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gapforge.bundle.imagetar import read_archive

from .conftest import Built, build_tiny, chat_rows, gapforge, verify_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

TOOL_PATH = "/usr/bin:/bin"
"""A shell with coreutils and openssl only: no gapforge, no python on purpose."""


# --- what the build made -------------------------------------------------------------------------


def test_pretest_ran_sealed_and_its_evidence_names_the_image(built: Built) -> None:
    evidence = json.loads((built.bundle / "pretest/evidence.json").read_text())
    image = built.report["image"]
    assert evidence["passed"] is True and evidence["verdict"] == "PASS" and evidence["exit_status"] == 0
    assert evidence["image"] == {"ref": image["ref"], "manifest_digest": image["manifest_digest"],
                                 "config_digest": image["config_digest"]}  # fmt: skip
    sandbox = evidence["sandbox"]
    assert sandbox["network"] == "none" and sandbox["read_only_rootfs"] is True
    assert sandbox["user"] == "1000:1000" and sandbox["mounts"] == ["/outputs"] and sandbox["cap_drop"] == ["ALL"]
    assert set(evidence["steps"]) == {"data", "train", "merge", "quantize", "eval"}
    assert evidence["losses"]["train"] and all(len(point) == 2 for point in evidence["losses"]["train"])
    assert set(evidence["deltas_vs_merged_pct"]) >= {"gguf:q8_0", "gguf:q4_k_m"}
    assert evidence["gates"] and all(gate["passed"] for gate in evidence["gates"])
    assert evidence["runtime_manifest"]["passed"] is True
    assert "verdict: PASS" in (built.bundle / "pretest/log.txt").read_text()
    assert built.report["pretest"]["passed"] is True
    assert built.report["bundle"]["path"] == str(built.bundle)


def test_runbook_names_this_bundles_digests(built: Built) -> None:
    runbook = (built.bundle / "RUNBOOK.md").read_text()
    image = built.report["image"]
    for value in (image["manifest_digest"], image["config_digest"], image["tar_sha256"], built.ref,
                  built.index["signing_key"]["fingerprint"].removeprefix("sha256:")):  # fmt: skip
        assert value in runbook


def test_runbooks_tool_free_commands_verify_the_bundle(built: Built) -> None:
    """The RUNBOOK's own shell block, run as written with only coreutils and openssl on the PATH."""
    runbook = (built.bundle / "RUNBOOK.md").read_text()
    section = runbook.split("### With only `sha256sum` and `openssl`", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    env = {"PATH": TOOL_PATH, "TRUSTED_KEY": str(built.public_key)}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block[1]], cwd=built.bundle.parent, env=env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Signature Verified Successfully" in result.stdout
    assert built.index["signing_key"]["fingerprint"].removeprefix("sha256:") in result.stdout
    assert ": FAILED" not in result.stdout and result.stdout.count(": OK") == len(
        (built.bundle / "SHA256SUMS").read_text().splitlines())  # fmt: skip


def test_gapforge_verify_passes_with_the_pinned_key(built: Built) -> None:
    status, report = verify_json(built.bundle, "--key", str(built.public_key), "--deep")
    assert status == 0 and report["ok"], report["problems"]
    assert report["signature"]["key_pinned"] and report["signature"]["ok"]
    assert report["image"]["manifest_digest"] == built.report["image"]["manifest_digest"]


def test_inspect_shows_recipe_model_packages_digests_pretest(built: Built) -> None:
    facts = json.loads(gapforge("inspect", str(built.bundle), "--key", str(built.public_key), "--json", check=True).stdout)
    assert facts["image"]["manifest_digest"] == built.report["image"]["manifest_digest"]
    assert facts["model"]["id"] == "tiny-llama" and facts["recipe"]["quantize"] == ["gguf:q8_0", "gguf:q4_k_m"]
    assert facts["packages"]["pypi"] > 50 and facts["packages"]["deb"] > 50 and facts["packages"]["model"] == 2
    assert facts["pretest"]["verdict"] == "PASS" and facts["signed"]
    assert facts["models"]["judge"]["id"] == "tiny-judge"  # the base and the shipped judge: 2 models
    table = gapforge("inspect", str(built.bundle), "--key", str(built.public_key), check=True)
    assert "tiny-desk 0.0.1" in table.stdout + table.stderr


# --- tampering ----------------------------------------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def _blob_offset(tar: Path, digest: str) -> int:
    member = read_archive(tar).members["blobs/sha256/" + digest.removeprefix("sha256:")]
    return member.offset + member.size // 2


def _layer_blob(bundle: Path, built: Built) -> None:
    digest = next(x["digest"] for x in built.index["image"]["layers"] if x["name"] == "model")
    _flip(bundle / "image.tar", _blob_offset(bundle / "image.tar", digest))


def _config(bundle: Path, built: Built) -> None:
    _flip(bundle / "image.tar", _blob_offset(bundle / "image.tar", built.index["image"]["config_digest"]))


def _sums(bundle: Path, built: Built) -> None:
    text = (bundle / "SHA256SUMS").read_text()
    first = text[0]
    (bundle / "SHA256SUMS").write_text(("0" if first != "0" else "1") + text[1:])


def _truncate(bundle: Path, built: Built) -> None:
    os.truncate(bundle / "image.tar", (bundle / "image.tar").stat().st_size // 2)


TAMPERING: dict[str, tuple[str, Callable[[Path, Built], None], str]] = {
    # case: (the file copied rather than linked, so it can change; how; the file verify must name)
    "layer-blob": ("image.tar", _layer_blob, "image.tar"),
    "config": ("image.tar", _config, "image.tar"),
    "SHA256SUMS": ("SHA256SUMS", _sums, "SHA256SUMS"),
    "signature": ("SHA256SUMS.sig", lambda b, _: _flip(b / "SHA256SUMS.sig", 10), "SHA256SUMS.sig"),
    "sbom": ("sbom.cdx.json", lambda b, _: _flip(b / "sbom.cdx.json", 500), "sbom.cdx.json"),
    "truncated-tar": ("image.tar", _truncate, "image.tar"),
    "deleted-file": ("provenance.json", lambda b, _: (b / "provenance.json").unlink(), "provenance.json"),
}
DETAIL = {"layer-blob": "layer 'model'", "config": "the image config", "truncated-tar": "truncated"}


def _copy_bundle(built: Built, tmp_path: Path, changed: str) -> Path:
    """A copy of the bundle made of hard links, except a real copy of the file about to change."""
    copy = tmp_path / built.bundle.name
    shutil.copytree(built.bundle, copy, copy_function=os.link)
    (copy / changed).unlink()
    shutil.copyfile(built.bundle / changed, copy / changed)
    return copy


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_names_the_tampered_file_and_load_refuses(
    case: str, built: Built, tmp_path: Path, local_registry: str
) -> None:
    changed, tamper, named = TAMPERING[case]
    copy = _copy_bundle(built, tmp_path, changed)
    try:
        tamper(copy, built)
        status, report = verify_json(copy, "--key", str(built.public_key))
        assert status == 1 and not report["ok"]
        assert named in report["bad_files"], report["problems"]
        if case in DETAIL:
            assert any(DETAIL[case] in p["message"] for p in report["problems"]), report["problems"]
        repo = f"{local_registry}/tampered/{case.lower()}"
        refused = gapforge("load", str(copy), "--key", str(built.public_key), "--to", repo)
        assert refused.returncode == 1, refused.stderr[-3000:]
        assert "refusing to load" in refused.stderr and "Traceback" not in refused.stderr
        missing = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{repo}:0.0.1"],
                                 capture_output=True, check=False)  # fmt: skip
        assert missing.returncode != 0, "a refused bundle must not reach the registry"
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def test_wrong_key_is_named_and_refused(built: Built, tmp_path: Path) -> None:
    gapforge("keygen", "--out", str(tmp_path / "other.key"), check=True)
    status, report = verify_json(built.bundle, "--key", str(tmp_path / "other.pub.pem"))
    # SHA256SUMS.sig, and the DSSE signature of provenance.json, both made with the other key.
    assert (status == 1 and report["bad_files"] == ["SHA256SUMS.sig", "provenance.json"]) or sorted(
        report["bad_files"]) == ["SHA256SUMS.sig", "provenance.json"]  # fmt: skip
    assert all("another key" in problem["message"] for problem in report["problems"]), report["problems"]
    refused = gapforge("load", str(built.bundle), "--key", str(tmp_path / "other.pub.pem"))
    assert refused.returncode == 1 and "refusing to load" in refused.stderr


def test_unsigned_bundle_is_refused_unless_insecure(built: Built, tmp_path: Path, local_registry: str) -> None:
    copy = _copy_bundle(built, tmp_path, "SHA256SUMS.sig")
    (copy / "SHA256SUMS.sig").unlink()
    repo = f"{local_registry}/tampered/unsigned"
    refused = gapforge("load", str(copy), "--key", str(built.public_key), "--to", repo)
    assert refused.returncode == 1 and "SHA256SUMS.sig" in refused.stderr and "unsigned" in refused.stderr
    forced = gapforge("load", str(copy), "--key", str(built.public_key), "--to", repo, "--insecure")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "--insecure" in forced.stderr


def test_bad_operator_input_is_one_paragraph_and_exit_2(built: Built, tmp_path: Path) -> None:
    for args in (["verify", str(tmp_path / "nowhere")],
                 ["verify", str(built.bundle), "--key", str(built.bundle / "RUNBOOK.md")],
                 ["run", str(built.bundle), "--key", str(built.public_key), "--data", str(tmp_path / "missing.jsonl"),
                  "--out", str(tmp_path / "o")],
                 ["load", str(built.bundle), "--to", "http://registry/x"]):  # fmt: skip
        result = gapforge(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert ("\n" + result.stderr).count("\nerror: ") == 1 and "Traceback" not in result.stderr


# --- across the gap -----------------------------------------------------------------------------------


def test_load_into_docker(built: Built) -> None:
    subprocess.run(["docker", "image", "rm", built.ref], capture_output=True, check=False)
    loaded = gapforge("load", str(built.bundle), "--key", str(built.public_key), check=True)
    assert "loaded" in loaded.stderr
    image_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", built.ref],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert image_id == built.report["image"]["config_digest"]


def test_load_into_a_local_registry_then_pull(built: Built, local_registry: str, tmp_path: Path) -> None:
    repo = f"{local_registry}/gapforge/tiny-desk"
    gapforge("load", str(built.bundle), "--key", str(built.public_key), "--to", repo, check=True)
    inspect = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{repo}:0.0.1"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(inspect.stdout)["Digest"] == built.report["image"]["manifest_digest"]
    # The SBOM, provenance and signature went along, as OCI 1.1 referrers of the image, and verify.
    attached = gapforge("inspect", "--registry", f"{repo}:0.0.1", "--key", str(built.public_key), "--json")
    assert attached.returncode == 0, attached.stderr[-3000:]
    listed = json.loads(attached.stdout)
    kinds = sorted(r["kind"] for r in listed["referrers"])
    assert kinds == ["provenance", "sbom", "signature"], listed
    assert listed["digest"] == built.report["image"]["manifest_digest"]
    pulled = tmp_path / "pulled"
    # --preserve-digests: skopeo would otherwise gzip the (uncompressed) layers on the way, a new digest.
    subprocess.run(["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", f"docker://{repo}:0.0.1",
                    f"oci:{pulled}:tiny"], capture_output=True, check=True)  # fmt: skip
    index = json.loads((pulled / "index.json").read_text())
    assert index["manifests"][0]["digest"] == built.report["image"]["manifest_digest"]


def _fresh_data(path: Path) -> Path:
    rows = chat_rows(48)[8:]  # not the sample the pretest used
    for row in rows:
        row["messages"][0]["content"] = row["messages"][0]["content"].replace("How do I", "Please tell me how to")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_preflight_says_go_and_no_go(built: Built, tmp_path: Path) -> None:
    good = gapforge("preflight", str(built.bundle), "--key", str(built.public_key), "--data",
                    str(_fresh_data(tmp_path / "fresh.jsonl")), "--out", str(tmp_path / "out"))  # fmt: skip
    assert good.returncode == 0, good.stderr[-3000:]
    (tmp_path / "bad.jsonl").write_text('{"messages": [}\n')
    gapforge("load", str(built.bundle), "--key", str(built.public_key), check=True)  # the receipt a ref needs
    # A reference is run on the receipt of a load under the same anchor (here the pinned key).
    bad = gapforge("preflight", built.ref, "--key", str(built.public_key), "--data", str(tmp_path / "bad.jsonl"),
                   "--out", str(tmp_path / "out"))  # fmt: skip
    assert bad.returncode == 1 and "NO-GO" in bad.stderr and "line 1" in bad.stderr


@pytest.fixture(scope="module")
def fresh_run(built: Built, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """One run of the bundle on data the pretest never saw: (outputs, data, the CLI's result)."""
    root = tmp_path_factory.mktemp("fresh-run")
    data = _fresh_data(root / "fresh.jsonl")
    out = root / "outputs"
    result = subprocess.run([sys.executable, "-m", "gapforge.cli", "run", str(built.bundle), "--key",
                             str(built.public_key), "--data", str(data), "--out", str(out)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    return out, data, result


def test_run_on_fresh_data_produces_the_runtimes_outputs(fresh_run: tuple[Path, Path, Any]) -> None:
    out, data, result = fresh_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[train]" in result.stdout and "verdict: PASS" in result.stdout  # the runtime's output streamed
    for name in ("manifest.json", "evaluation.json", "report.md", "report.html", "gguf/tiny-desk-q8_0.gguf",
                 "gguf/tiny-desk-q4_k_m.gguf", "merged/model.safetensors", "adapter/adapter_model.safetensors"):
        assert (out / name).is_file(), name  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["passed"] is True
    # the judge is the one the recipe ships under models: judge, not the base model's own GGUF
    judge = json.loads((out / "evaluation.json").read_text())["judge"]
    assert judge["enabled"] and judge["file"] == "tiny-judge-f16.gguf" and judge["calls"] > 0
    assert not (out / "gguf/tiny-desk-base-f16.gguf").exists()
    assert manifest["inputs"]["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert manifest["inputs"]["data"]["path"] == "/data/fresh.jsonl"


def test_continual_run_from_the_bundle_scores_both_test_sets_and_names_its_parent(
    built: Built, fresh_run: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    parent, data, first = fresh_run
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "continued"
    result = gapforge("run", str(built.bundle), "--key", str(built.public_key), "--data", str(data),
                      "--out", str(out), "--parent", str(parent))  # fmt: skip
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]  # 1: a quality gate
    evaluation = json.loads((out / "evaluation.json").read_text())
    continual = evaluation["continual"]
    assert continual["old_test"]["start"] > 0 and continual["old_test"]["trained"] > 0
    assert continual["new_test"]["start"] > 0 and continual["new_test"]["trained"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    node = next(n for n in manifest["lineage"] if n["id"] == "parent")
    sums = hashlib.sha256((built.bundle / "SHA256SUMS").read_bytes()).hexdigest()
    assert node["image"] == {"config_digest": built.report["image"]["config_digest"], "bundle_sha256sums": sums}
    assert node["sha256"] == hashlib.sha256((parent / "manifest.json").read_bytes()).hexdigest()


def test_operator_installs_gapforge_from_the_bundle_with_no_index(built: Built, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {"PATH": f"{venv}/bin:{TOOL_PATH}", "PIP_CONFIG_FILE": os.devnull, "HOME": str(tmp_path)}
    install = subprocess.run([str(venv / "bin/pip"), "install", "--no-index", "--find-links",
                              str(built.bundle / "wheels"), "gapforge"], env=env, capture_output=True, text=True,
                             check=False)  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    verify = subprocess.run([str(venv / "bin/gapforge"), "verify", str(built.bundle), "--key", str(built.public_key)],
                            env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert verify.returncode == 0, verify.stderr[-3000:]
    assert "verified" in verify.stderr


def test_failing_pretest_fails_the_build_and_writes_no_bundle(
    docker_engine: None, tiny_project: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(tiny_project, project)
    # Sample rows with no assistant turn: the runtime's data step refuses them (exit 2) inside the image.
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(12)]
    (project / "recipes/tiny/data/sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = yaml.safe_load((project / "recipes/tiny/tiny.yaml").read_text())
    recipe["version"] = "0.0.2-broken"
    (project / "recipes/tiny/tiny.yaml").write_text(yaml.safe_dump(recipe))
    gapforge("keygen", "--out", str(tmp_path / "k.key"), check=True)
    result = build_tiny(project, tmp_path, tmp_path / "k.key")
    subprocess.run(["docker", "image", "rm", "gapforge/tiny-desk:0.0.2-broken"], capture_output=True, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "sealed pretest" in result.stderr and "No bundle was written" in result.stderr
    assert (tmp_path / "build/tiny-desk-0.0.2-broken/pretest/evidence.json").is_file()
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_the_judge_ships_in_a_layer_of_its_own_and_is_listed(built: Built) -> None:
    assert built.index["models"]["judge"]["id"] == "tiny-judge"
    assert "model-judge" in [layer["name"] for layer in built.index["image"]["layers"]]
    sbom = json.loads((built.bundle / "sbom.cdx.json").read_text())
    judge = next(c for c in sbom["components"] if c.get("bom-ref") == "model:tiny-judge")
    assert [f["name"] for f in judge["components"]] == ["models/judge/tiny-judge-f16.gguf"]
    listed = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", built.ref,
                             "-c", 'ls "$GAPFORGE_MODELS_DIR/judge"'], capture_output=True, text=True, check=True)  # fmt: skip
    assert listed.stdout.split() == ["tiny-judge-f16.gguf"]
