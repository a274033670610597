"""The cuda profile: its lock holds PyPI's CUDA torch and the GPU libraries, the image records the
driver it needs, and the big CUDA wheels get layers of their own below everything that changes."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import pytest

from gapforge.errors import GapforgeError, LockError
from gapforge.image import plan_wheel_layers
from gapforge.lock.debian import debian_inputs_sha256, read_debian_lock
from gapforge.lock.python import check_fresh, inputs_sha256, isolated_pip_env, parse_python_lock
from gapforge.profile import (
    REPO_ROOT,
    cuda_min_driver,
    cuda_version,
    load_profile,
    profile_env,
    profile_labels,
)

LOCKS = REPO_ROOT / "lockfiles"


@pytest.fixture(scope="module")
def cuda_lock():  # type: ignore[no-untyped-def]
    return parse_python_lock(LOCKS / "cuda.txt")


def test_cuda_profile_settings() -> None:
    profile = load_profile("cuda")
    assert profile.is_cuda and profile.lock_isolated
    # nothing compiled at run time inside the gap: GPTQModel's JIT kernels are off
    assert profile.env["GPTQMODEL_DISABLE_GPTQ_CUDA"] == "1"
    assert profile.env["GPTQMODEL_DISABLE_PACK_EXT"] == "1"
    assert {"llama-cpp-python", "gptqmodel", "pypcre"} <= set(profile.sdist_builds)
    assert not load_profile("cpu").is_cuda


def test_cuda_lock_is_fresh_and_pins_the_cuda_build(cuda_lock) -> None:  # type: ignore[no-untyped-def]
    profile = load_profile("cuda")
    check_fresh(cuda_lock, inputs_sha256(profile.requirements_in), "images/cuda/requirements.in")
    check_fresh(
        parse_python_lock(LOCKS / "cuda.build.txt"),
        inputs_sha256(profile.build_requirements_in),
        "images/cuda/build-requirements.in",
    )
    debian = read_debian_lock(LOCKS / "cuda.debian.lock")
    assert debian.inputs_sha256 == debian_inputs_sha256(profile) and debian.packages
    pins = cuda_lock.by_name()
    assert "+cpu" not in pins["torch"].version
    for name in ("bitsandbytes", "gptqmodel", "optimum", "llama-cpp-python", "transformers", "peft",
                 "cuda-toolkit", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "triton"):  # fmt: skip
        assert name in pins, name
    # every package built from its sdist is pinned (with the sdist's hash among its hashes)
    assert set(profile.sdist_builds) <= set(pins)


def test_minimum_driver_comes_from_the_locked_cuda_release(cuda_lock) -> None:  # type: ignore[no-untyped-def]
    profile = load_profile("cuda")
    assert cuda_version(cuda_lock) == "13.0"
    assert cuda_min_driver("13.0") == "580.65.06"
    labels = profile_labels(profile, cuda_lock)
    assert labels == {
        "io.gapforge.accelerator": "cuda",
        "io.gapforge.cuda.version": "13.0",
        "io.gapforge.cuda.min_driver": "580.65.06",
        "io.gapforge.llama_cpp.cpu_baseline": "AVX,AVX2,F16C,FMA",
    }
    env = profile_env(profile, cuda_lock)
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0" and env["NVIDIA_VISIBLE_DEVICES"] == "all"
    # Triton's launcher is pre-built: the runtime is told where, and Triton caches on /tmp
    assert env["GAPFORGE_TRITON_LAUNCHER"] == "/opt/gapforge/triton"
    assert env["TRITON_CACHE_DIR"] == "/tmp/triton"
    cpu = load_profile("cpu")
    assert not cpu.triton_launcher
    assert "GAPFORGE_TRITON_LAUNCHER" not in profile_env(cpu, parse_python_lock(LOCKS / "cpu.txt"))
    assert profile_labels(cpu, parse_python_lock(LOCKS / "cpu.txt")) == {
        "io.gapforge.accelerator": "none",
        "io.gapforge.llama_cpp.cpu_baseline": "AVX,AVX2,F16C,FMA",
    }


def test_unknown_cuda_release_names_the_fix() -> None:
    with pytest.raises(LockError, match="CUDA_MIN_DRIVER"):
        cuda_min_driver("99.1")
    with pytest.raises(LockError, match="nox -s lock"):
        cuda_version(parse_python_lock(LOCKS / "cpu.txt"))


def _fake_wheel(folder: Path, name: str, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}/data.bin", b"\0" * size)
    return path


def test_big_wheels_get_their_own_layers_first_and_keys_only_of_their_own_bytes(tmp_path: Path) -> None:
    profile = dataclasses.replace(load_profile("cuda"), own_layer_min_bytes=10_000)
    wheels = {
        "torch": _fake_wheel(tmp_path / "a1", "torch", 50_000),
        "nvidia-cudnn-cu13": _fake_wheel(tmp_path / "a2", "nvidia_cudnn_cu13", 40_000),
        "peft": _fake_wheel(tmp_path / "a3", "peft", 100),
        "pyyaml": _fake_wheel(tmp_path / "a4", "pyyaml", 100),
    }
    plans = plan_wheel_layers(profile, wheels)
    assert [p.name for p in plans] == ["wheels:nvidia-cudnn-cu13", "wheels:torch", "wheels"]
    # a change among the small wheels (or the runtime / recipe, which are other layers) leaves the
    # big layers' keys, and so their cached blobs and digests, as they were
    changed = plan_wheel_layers(profile, {**wheels, "peft": _fake_wheel(tmp_path / "b", "peft", 200)})
    assert [p.key for p in changed[:2]] == [p.key for p in plans[:2]]
    assert changed[2].key != plans[2].key


def test_isolated_lock_ignores_the_machines_pip_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple")
    monkeypatch.setenv("PIP_CONSTRAINT", "/etc/constraints.txt")
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    env = isolated_pip_env()
    assert not {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"} & set(env)
    assert env["PIP_CONFIG_FILE"] == "/dev/null" and env["PIP_INDEX_URL"] == "https://mirror.example/simple"


def test_tritons_launcher_gets_a_small_layer_keyed_by_what_built_it(tmp_path: Path) -> None:
    from gapforge.fetch.triton import TritonLauncher, plan_launcher

    assert load_profile("cuda").triton_launcher
    so = tmp_path / ("a" * 64) / "cuda_utils.so"
    so.parent.mkdir()
    so.write_bytes(b"\x7fELF module")
    record = {"triton": "3.8.0", "module": "cuda_utils", "source_sha256": "b" * 64, "python": "3.11"}
    plan = plan_launcher(TritonLauncher(so, record))
    entries = {e.path: e for e in plan.entries(tmp_path)}
    assert set(entries) == {"opt", "opt/gapforge", "opt/gapforge/triton",
                            "opt/gapforge/triton/cuda_utils.so", "opt/gapforge/triton/launcher.json"}  # fmt: skip
    shipped = json.loads(entries["opt/gapforge/triton/launcher.json"].data or b"")
    assert shipped == {**record, "sha256": "a" * 64}
    other = plan_launcher(TritonLauncher(so, {**record, "triton": "3.9.0"}))
    assert other.key != plan.key and plan.name == "triton-launcher"


def test_a_launcher_without_a_build_root_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "profile.toml").write_text(
        'name = "p"\npython = "3.11"\nsource_date_epoch = 1\n[debian]\nsuite = "bookworm"\n'
        "[triton]\nprebuilt_launcher = true\n"
    )
    with pytest.raises(GapforgeError, match="build_root"):
        load_profile("p", tmp_path)
