"""The llama.cpp serving image against a real Docker engine: built by our code from the serving
lock, started with the network cut, read-only and non-root, it answers /health and a chat
completion on a GGUF mounted read-only, and cannot reach an outside address."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from gapforge_runtime.image_contract import IMAGE_USER
from gapforge_runtime.recipe_serve import ServeSpec

from gapforge.cache import Cache, default_cache_dir
from gapforge.profile import REPO_ROOT, load_profile
from tests.integration.conftest import make_tiny_model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama of the other integration tests, as an f16 GGUF (llama.cpp's converter)."""
    from gapforge_runtime.export.quantize import check_llama_cpp, convert_to_f16

    root = tmp_path_factory.mktemp("serve-model")
    make_tiny_model(root / "model")
    llama_cpp = check_llama_cpp(Path(os.environ.get("GAPFORGE_LLAMA_CPP", "/nonexistent")))
    convert_to_f16(llama_cpp, root / "model", root / "tiny-f16.gguf")
    return root / "tiny-f16.gguf"


def test_serving_image_answers_with_the_network_cut(
    docker_engine: None, tiny_gguf: Path, tmp_path: Path
) -> None:
    from gapforge.engine import connect
    from gapforge.serving.pretest import pretest_serving
    from gapforge.stages.serve import build_serving

    serve = ServeSpec(artefacts=["gguf:f16"])
    cache, profile = Cache(default_cache_dir()), load_profile("cpu")
    image = build_serving(
        cache, profile, REPO_ROOT / "lockfiles", serve, ("tiny-desk", "0.0.1"), tmp_path / "out"
    )
    config = json.loads(image.manifest.config_bytes)["config"]
    assert config["User"] == IMAGE_USER and not IMAGE_USER.startswith("0")
    evidence = pretest_serving(connect(), image, tiny_gguf, tmp_path / "pretest", max_tokens=16)

    assert evidence["passed"] is True
    assert evidence["image"]["config_digest"] == image.manifest.config_digest
    assert evidence["health"]["status"] == 200 and evidence["health"]["body"] == {
        "status": "ok",
        "models": ["gguf:f16"],
    }
    completion = evidence["completion"]
    # a random tiny model: its words mean nothing, but they came from the engine, token by token
    assert completion["text"] and 1 <= completion["tokens"] <= 16
    assert 0 < completion["ttft_s"] < completion["seconds"]
    assert evidence["repeat"]["text"] == completion["text"]  # greedy: the same answer again
    # the client ran in the container's own network namespace and could not get out
    assert evidence["outside"]["reached"] is False
    assert "unreachable" in evidence["outside"]["error"].lower()
    sandbox = evidence["sandbox"]
    assert (
        sandbox["network"] == "none"
        and sandbox["read_only_rootfs"] is True
        and sandbox["user"] == IMAGE_USER
    )
    assert sandbox["read_only_mounts"] == ["/models/gguf-f16.gguf"] and sandbox["mounts"] == []
    assert json.loads((tmp_path / "pretest" / "serve-evidence.json").read_text()) == evidence

    # the same inputs again: every layer from the cache, the same image
    again = build_serving(
        cache, profile, REPO_ROOT / "lockfiles", serve, ("tiny-desk", "0.0.1"), tmp_path / "again"
    )
    assert again.manifest.manifest_digest == image.manifest.manifest_digest
    assert again.layers.written == []
