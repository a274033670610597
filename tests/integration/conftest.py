"""Fixtures for integration tests: a tiny random model in HF layout and a tiny recipe around it."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gapforge.lock.model import lock_local
from gapforge.profile import REPO_ROOT
from gapforge.recipe import load_recipe
from tests.requirements import missing, require_module
from tests.tiny_tokenizer import CHATML_TEMPLATE, train_llama_tokenizer


def gapforge(*args: str, check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process, as an operator or release manager runs it."""
    result = subprocess.run([sys.executable, "-m", "gapforge.cli", *args], capture_output=True, text=True,
                            check=False, env=None if env is None else {**os.environ, **env})  # fmt: skip
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def verify_json(bundle: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    result = gapforge("verify", str(bundle), "--json", *args, env=env)
    assert result.stdout, result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


@dataclass(frozen=True)
class Built:
    bundle: Path
    report: dict[str, Any]
    public_key: Path
    index: dict[str, Any]
    key: Path
    project: Path

    @property
    def ref(self) -> str:
        return str(self.report["image"]["ref"])


def build_tiny(project: Path, root: Path, key: Path, *extra: str, recipe: str = "recipes/tiny/tiny.yaml") -> subprocess.CompletedProcess[str]:
    return gapforge("build", str(project / recipe), "--lock-dir", str(project / "lockfiles"),
                    "--out", str(root / "build"), "--dist", str(root / "dist"), "--key", str(key), *extra)  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def trust_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The operator's trust folder (trusted root, receipts, operator key) of this test session: never
    the machine's own (~/.local/share/gapforge/trust)."""
    folder = tmp_path_factory.mktemp("trust")
    before = os.environ.get("GAPFORGE_TRUST_DIR")
    os.environ["GAPFORGE_TRUST_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("GAPFORGE_TRUST_DIR", None)
    else:
        os.environ["GAPFORGE_TRUST_DIR"] = before


@pytest.fixture(scope="session")
def built(docker_engine: None, tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One bundle of the tiny recipe for the whole session, signed with a release key made by
    `gapforge keygen`: the stand-in for the default recipe's bundle. Also the image that
    test_build_image inspects and rebuilds byte for byte (--frozen: never a lock rewritten)."""
    root = tmp_path_factory.mktemp("bundle")
    gapforge("keygen", "--out", str(root / "release.key"), check=True)
    result = build_tiny(tiny_project, root, root / "release.key", "--frozen")
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads((root / "build/tiny-desk-0.0.1/build.json").read_text())
    bundle = root / "dist/tiny-desk-0.0.1"
    return Built(bundle, report, root / "release.pub.pem", json.loads((bundle / "bundle.json").read_text()),
                 root / "release.key", tiny_project)


def bump_locked(lock: Path, other: Path, name: str) -> tuple[str, str]:
    """Give `name` in the pip-compile lock `lock` the version and hashes it has in `other` (another
    lock): a one-package bump with real hashes, no resolver. Returns (old, new) versions."""

    def block(text: str) -> re.Match[str]:
        found = re.search(rf"^{re.escape(name)}==(\S+) \\\n(?:    --hash=sha256:[0-9a-f]{{64}}(?: \\)?\n)+", text, re.M)
        assert found is not None, f"{name} is not pinned in the lock"
        return found

    text, source = lock.read_text(), block(other.read_text())
    current = block(text)
    lock.write_text(text[: current.start()] + source.group(0) + text[current.end() :])
    return current.group(1), source.group(1)


def _rebuild(built: Built, root: Path, version: str, learning_rate: float, bump: str | None = None) -> Built:
    """The tiny project copied, its recipe given `version` and `learning_rate` (and, with `bump`, that
    locked package moved to the version the builder's own lock pins), then built and bundled."""
    project = root / "project"
    shutil.copytree(built.project, project)
    path = project / "recipes/tiny/tiny.yaml"
    recipe = yaml.safe_load(path.read_text())
    recipe["version"], recipe["train"]["learning_rate"] = version, learning_rate
    path.write_text("# Build: nox -s build -- recipes/tiny/tiny.yaml\n" + yaml.safe_dump(recipe, sort_keys=False))
    if bump is not None:
        bump_locked(project / "lockfiles/cpu.txt", REPO_ROOT / "lockfiles/builder.txt", bump)
    result = build_tiny(project, root, built.key)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads((root / f"build/tiny-desk-{version}/build.json").read_text())
    bundle = root / f"dist/tiny-desk-{version}"
    return Built(bundle, report, built.public_key, json.loads((bundle / "bundle.json").read_text()),
                 built.key, project)  # fmt: skip


@pytest.fixture(scope="session")
def built_changed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The next release of the tiny recipe: another learning rate (version 0.0.2), nothing else."""
    return _rebuild(built, tmp_path_factory.mktemp("changed"), "0.0.2", 5e-3)


@pytest.fixture(scope="session")
def built_bumped(built: Built, tmp_path_factory: pytest.TempPathFactory) -> tuple[Built, dict[str, Any]]:
    """A release with another learning rate (version 0.0.3) and one locked package bumped (filelock,
    to the version the builder's own lock pins, real hashes). Returns it and what was changed."""
    old, new = (
        re.search(r"^filelock==(\S+) ", (REPO_ROOT / f"lockfiles/{name}").read_text(), re.M).group(1)  # type: ignore[union-attr]
        for name in ("cpu.txt", "builder.txt")
    )
    bumped = _rebuild(built, tmp_path_factory.mktemp("bumped"), "0.0.3", 5e-3, bump="filelock")
    return bumped, {"learning_rate": (1e-2, 5e-3), "version": ("0.0.1", "0.0.3"), "filelock": (old, new)}


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


TOPICS = ["verify the bundle", "load the image", "read the manifest", "check the digest",
          "find the report", "resume training", "merge the adapter", "compare perplexity"]  # fmt: skip


def chat_rows(count: int) -> list[dict[str, Any]]:
    """Distinct chat samples in the desk-answer style: the tiny recipe learns them in a few steps."""
    rows = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({"messages": [
            {"role": "user", "content": f"How do I {topic}? (case {i})"},
            {"role": "assistant", "content": f"Desk answer: to {topic}, follow step {i % 5}. Ticket closed."},
        ]})  # fmt: skip
    return rows


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 64-wide random Llama with a tokenizer trained here; safetensors only."""
    np = require_module("numpy")
    safetensors_numpy = require_module("safetensors.numpy")
    folder.mkdir(parents=True, exist_ok=True)
    texts = [m["content"] for row in chat_rows(40) for m in row["messages"]] + ["user assistant system"] * 5
    require_module("tokenizers")
    tokenizer = train_llama_tokenizer(texts, 400)
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    hidden, layers, inter, heads = 64, 2, 128, 4
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 4,
        "pad_token_id": 2, "torch_dtype": "float32",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "<|im_end|>",
        "unk_token": "<unk>", "pad_token": "</s>", "chat_template": CHATML_TEMPLATE,
    }))  # fmt: skip
    rng = np.random.default_rng(seed)
    tensors = {"model.embed_tokens.weight": rng.normal(0, 0.02, (vocab, hidden)), "model.norm.weight": np.ones(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (hidden, hidden)),
                            ("self_attn.v_proj", (hidden, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                            ("mlp.gate_proj", (inter, hidden)), ("mlp.up_proj", (inter, hidden)),
                            ("mlp.down_proj", (hidden, inter))):  # fmt: skip
            tensors[p + name + ".weight"] = rng.normal(0, 0.02, shape)
        tensors[p + "input_layernorm.weight"] = np.ones(hidden)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(hidden)
    safetensors_numpy.save_file({k: v.astype("float32") for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def servable_debian_locks(locks: Path, profile: str = "cpu") -> None:
    """Every .deb of these (copied) Debian locks in the shared cache; where the archive has moved on
    since the commit, the copies are resolved again, so the suite passes whatever the archive did
    (and --frozen builds can run) while the committed lockfiles stay as they are."""
    from gapforge.cache import Cache, default_cache_dir
    from gapforge.fetch.debian import DebianInputs
    from gapforge.profile import load_profile

    inputs = DebianInputs(Cache(default_cache_dir()), load_profile(profile), locks)
    inputs.debs("base")
    inputs.debs("build")


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """The engine; at the end, the images the tests loaded go again, so runs do not pile up
    gigabytes of sealed test images (and untagged ones left by rebuilds) on the disk."""
    if not _docker_answers():
        missing("a Docker engine", "none answers: run 'bash scripts/setup.sh'")
    yield
    from gapforge.engine import connect, remove_images, stale_images

    client = connect()
    ours = [image.id for image in client.images.list(name="gapforge/tiny-*")]
    remove_images(client, ours + [image_id for image_id, _ in stale_images(client)])


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny recipe (local tiny model), its sample data and a lockfiles/ of its own."""
    root = tmp_path_factory.mktemp("tiny-project")
    make_tiny_model(root / "recipes" / "tiny" / "model")
    # A judge shipped beside the base (models: judge): the tiny model's own f16 GGUF, made here
    from gapforge_runtime.export.quantize import check_llama_cpp, convert_to_f16

    (root / "recipes/tiny/judge").mkdir()
    llama_cpp = check_llama_cpp(Path(os.environ.get("GAPFORGE_LLAMA_CPP", "/nonexistent")))
    convert_to_f16(llama_cpp, root / "recipes/tiny/model", root / "recipes/tiny/judge/tiny-judge-f16.gguf")
    data = root / "recipes" / "tiny" / "data"
    data.mkdir()
    (data / "sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(40)))
    # Sized so the sealed pretest runs the whole chain in well under a minute and its gates pass;
    # presidio off, so the image holds the base feature set alone (the test image profile).
    recipe = {
        "name": "tiny-desk", "version": "0.0.1", "profile": "cpu",
        "model": {"id": "tiny-llama", "source": {"type": "local", "path": "model"}},
        "data": {"format": "chat", "sample": "data/sample.jsonl", "pii": {"presidio": False}},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"max_steps": 6, "learning_rate": 1e-2, "batch_size": 4, "max_seq_length": 64,
                  "eval_every": 3, "seed": 7},
        "quantize": ["gguf:q8_0", "gguf:q4_k_m"],
        "models": {"judge": {"id": "tiny-judge", "source": {"type": "local", "path": "judge"}}},
        "evaluate": {"sample_answers": 1, "max_new_tokens": 8, "judge": {"model": "judge"},
                     "gates": {"require_improvement": True,
                               "max_perplexity_delta_pct": {"gguf:q8_0": 5.0, "gguf:q4_k_m": 60.0}}},
    }  # fmt: skip
    path = root / "recipes" / "tiny" / "tiny.yaml"
    path.write_text("# Build: nox -s build -- recipes/tiny/tiny.yaml\n" + yaml.safe_dump(recipe, sort_keys=False))
    locks = root / "lockfiles"
    locks.mkdir()
    for name in ("cpu.txt", "cpu.build.txt", "cpu.debian.lock", "cpu.build.debian.lock"):
        shutil.copy(REPO_ROOT / "lockfiles" / name, locks / name)
    servable_debian_locks(locks)
    loaded = load_recipe(path)
    for name, spec in loaded.all_models():
        lock_local(spec, locks, loaded.local_path_of(spec) or Path(), allow_gguf=name != "model")
    return root


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry (a local registry v2, plain HTTP) on a free loopback port: HOST:PORT."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).is_file():
        missing("docker-registry", "apt-get install docker-registry (or run 'bash scripts/setup.sh')")
    root = tmp_path_factory.mktemp("registry")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }  # fmt: skip
    (root / "config.yml").write_text(yaml.safe_dump(config))
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with direct.open(f"http://127.0.0.1:{port}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {(root / 'registry.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=15)
