"""Attack 1 of issue 22 and its variants: an unsigned (or wrongly signed) bundle of the attacker's
own making must never verify, under the trusted TUF root or a pinned key; `verify --json` never
says `"ok": true` beside a signature that is not proven; malformed documents are one paragraph
naming the file and field (exit 2), never a traceback."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gapforge.bundle import INDEX, SIGNATURE, SUMS
from gapforge.bundle.sums import bundle_files, render_sums
from tests.bundles import ReleaseWorld, release_world, signing_key, write_signed_bundle
from tests.hostile.conftest import Hostile

ATTACKER_SEED = 66


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ReleaseWorld:
    """A release repository, its released bundle, a trust folder pinning its root (made once)."""
    return release_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def attacker_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the attacker's own image, signed with the attacker's key (made once)."""
    return write_signed_bundle(tmp_path_factory.mktemp("attacker"), seed=ATTACKER_SEED)


@pytest.fixture
def rooted(world: ReleaseWorld, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReleaseWorld]:
    """This site trusts `world`'s root (gapforge trust init was run), and holds no key."""
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    monkeypatch.delenv("GAPFORGE_OPERATOR_KEY", raising=False)
    yield world


def _sums_over(bundle: Path) -> None:
    """The attacker's own SHA256SUMS over what is in the folder (no signature made)."""
    names = [n for n in bundle_files(bundle) if n not in (SUMS, SIGNATURE)]
    names = [n for n in names if not n.startswith("release/")]
    digests = {n: hashlib.sha256((bundle / n).read_bytes()).hexdigest() for n in names}
    (bundle / SUMS).write_bytes(render_sums(digests))


def attack_bundle(template: Path, into: Path, index: bytes | None, signature: bytes | None) -> Path:
    """The issue's attack 1: the attacker's image and SHA256SUMS, bundle.json replaced (None:
    deleted), an empty release/metadata/, and `signature` as SHA256SUMS.sig (None: none)."""
    bundle = into / template.name
    shutil.copytree(template, bundle)
    if index is None:
        (bundle / INDEX).unlink()
    else:
        (bundle / INDEX).write_bytes(index)
    (bundle / "release" / "metadata").mkdir(parents=True)
    _sums_over(bundle)
    (bundle / SIGNATURE).unlink()
    if signature is not None:
        (bundle / SIGNATURE).write_bytes(signature)
    return bundle


def _json(text: str) -> dict[str, object]:
    """The JSON object `verify --json` printed (stderr's progress lines follow it in `text`)."""
    value, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
    assert isinstance(value, dict)
    return value


def _assert_refused(
    status: int, text: str, bundle: Path, run: Callable[..., tuple[int, str]]
) -> None:
    assert status != 0, text
    assert "signature     ok" not in text and "pretest       PASS" not in text, text
    json_status, json_text = run("verify", bundle, "--json")
    assert json_status == status
    report = _json(json_text)
    assert report["ok"] is False and report["authenticated"] is False
    assert report["problems"], "a refusal names its reasons"


INDEXES = {
    "deleted": None,
    "empty-object": b"{}",
    "list": b"[]",
    "null": b"null",
    "string": b'"a string"',
}
SIGNATURES = {
    "zero-64": bytes(64),
    "missing": None,
    "empty": b"",
    "short-63": bytes(63),
    "long-65": bytes(65),
}


@pytest.mark.parametrize("index", INDEXES, ids=list(INDEXES))
@pytest.mark.parametrize("signature", SIGNATURES, ids=list(SIGNATURES))
def test_attack_1_under_the_trusted_root_is_refused(
    hostile: Hostile, rooted: ReleaseWorld, attacker_template: Path, index: str, signature: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bundle = attack_bundle(attacker_template, hostile.inputs, INDEXES[index], SIGNATURES[signature])

    def run(*argv: str | Path) -> tuple[int, str]:
        return hostile.run(*argv, capsys=capsys)

    status, text = run("verify", bundle)
    _assert_refused(status, text, bundle, run)
    if index != "deleted" and index != "empty-object":  # the wrong shape is named, exit 2
        assert status == 2 and "bundle.json" in text and "not a JSON object" in text, text


@pytest.mark.parametrize("signature", SIGNATURES, ids=list(SIGNATURES))
def test_attack_1_with_a_pinned_key_is_refused(
    hostile: Hostile, world: ReleaseWorld, attacker_template: Path, signature: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(hostile.root / "no-trust-here"))
    bundle = attack_bundle(attacker_template, hostile.inputs, b"{}", SIGNATURES[signature])
    key = hostile.inputs / "release.pub.pem"
    key.write_bytes(world.build_key.public_pem)

    def run(*argv: str | Path) -> tuple[int, str]:
        return hostile.run(*argv, "--key", key, capsys=capsys)

    status, text = run("verify", bundle)
    _assert_refused(status, text, bundle, run)
    assert not (hostile.root / "no-trust-here").exists()


def test_attack_1_with_the_attackers_valid_signature_is_refused_under_the_root(
    hostile: Hostile, rooted: ReleaseWorld, attacker_template: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The attacker signs their SHA256SUMS with their own key (and ships its public half)."""
    bundle = attack_bundle(attacker_template, hostile.inputs, b"{}", None)
    from gapforge.bundle.sign import sign

    key = signing_key(hostile.inputs, ATTACKER_SEED)
    (bundle / SIGNATURE).write_bytes(sign(key, (bundle / SUMS).read_bytes()))
    status, text = hostile.run("verify", bundle, capsys=capsys)
    _assert_refused(status, text, bundle, lambda *a: hostile.run(*a, capsys=capsys))


def test_tuf_metadata_of_another_repository_is_refused(
    hostile: Hostile, rooted: ReleaseWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The attacker's own release repository, its bundle and metadata: not the site's root."""
    other = release_world(tmp_path / "other")
    bundle = hostile.inputs / other.bundle.name
    shutil.copytree(other.bundle, bundle)
    status, text = hostile.run("verify", bundle, capsys=capsys)
    assert status != 0 and "bad signature on metadata" in text, text
    _assert_refused(status, text, bundle, lambda *a: hostile.run(*a, capsys=capsys))


def test_the_genuine_release_still_verifies_under_the_root(
    hostile: Hostile, rooted: ReleaseWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = hostile.inputs / rooted.bundle.name
    shutil.copytree(rooted.bundle, bundle)
    status, text = hostile.run("verify", bundle, capsys=capsys)
    assert status == 0 and "signature     ok" in text, text
    status, text = hostile.run("verify", bundle, "--json", capsys=capsys)
    report = _json(text)
    assert report["ok"] is True and report["authenticated"] is True
    assert report["signature"]["ok"] is True and report["signature"]["anchor"] == "root"


WRONG_TYPES = {
    "name-number": ({"name": 3, "version": "1", "image": {}}, "name: expected a string, found a number"),
    "image-list": ({"name": "x", "version": "1", "image": []}, "image: expected an object, found a list"),
    "digest-null": (
        {"name": "x", "version": "1", "image": {"manifest_digest": None, "config_digest": "sha256:1",
                                                "sha256": "0", "size": 1}},
        "image.manifest_digest: expected a string, found null",
    ),
    "layers-string": (
        {"name": "x", "version": "1", "signing_key": [], "image": {"manifest_digest": "a", "config_digest": "b",
                                                                     "sha256": "0", "size": "9", "layers": "x"}},
        "image.size: expected an integer, found a string",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", WRONG_TYPES, ids=list(WRONG_TYPES))
@pytest.mark.parametrize("anchor", ["root", "key"])
def test_wrong_field_types_in_bundle_json_are_named_exit_2(
    hostile: Hostile, world: ReleaseWorld, attacker_template: Path, case: str, anchor: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    document, expected = WRONG_TYPES[case]
    bundle = attack_bundle(
        attacker_template, hostile.inputs, json.dumps(document).encode(), bytes(64)
    )
    argv: list[str | Path] = ["verify", bundle]
    if anchor == "root":
        monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    else:
        monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(hostile.root / "no-trust-here"))
        key = hostile.inputs / "release.pub.pem"
        key.write_bytes(world.build_key.public_pem)
        argv += ["--key", key]
    status, text = hostile.run(*argv, "--json", capsys=capsys)
    report = _json(text)
    assert status == 2 and report["ok"] is False, text
    messages = [(p["file"], p["message"]) for p in report["problems"]]  # type: ignore[index, union-attr]
    assert (INDEX, expected) in messages, messages


@pytest.mark.parametrize("signature", ["zero-64", "missing", "short-63"])
def test_load_of_attack_1_is_refused_before_the_engine_and_writes_no_receipt(
    hostile: Hostile, world: ReleaseWorld, attacker_template: Path, signature: str,
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`load` checks everything but the archive's bytes before it connects to Docker: the attack
    never reaches the engine (none is needed to see it refused), and no receipt is written."""
    trust = tmp_path / "trust"
    shutil.copytree(world.trust, trust, symlinks=True)
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(trust))
    from gapforge import engine

    monkeypatch.setattr(engine, "connect", lambda: pytest.fail("load reached the Docker engine"))
    bundle = attack_bundle(attacker_template, hostile.inputs, b"{}", SIGNATURES[signature])
    status, text = hostile.run("load", bundle, capsys=capsys)
    assert status in (1, 2) and "refusing to load" in text and "loaded" not in text, text
    assert not (trust / "receipts").exists()


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"name": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"name": "x",,}', "not valid JSON"),
    ],
    ids=["deep-nesting", "5000-digit-integer", "not-utf8", "syntax"],
)
def test_unparseable_bundle_json_is_one_named_refusal(
    hostile: Hostile, world: ReleaseWorld, attacker_template: Path, document: bytes,
    expected: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    bundle = attack_bundle(attacker_template, hostile.inputs, document, bytes(64))
    status, text = hostile.run("verify", bundle, "--json", capsys=capsys)
    report = _json(text)
    assert status == 2 and report["ok"] is False, text
    messages = [(p["file"], p["message"]) for p in report["problems"]]  # type: ignore[index, union-attr]
    assert any(f == INDEX and expected in m for f, m in messages), messages


def test_the_gate_returns_the_signed_record_or_refuses(
    rooted: ReleaseWorld, attacker_template: Path, tmp_path: Path
) -> None:
    """require_verified: the genuine release gives the record other commands act on (names and
    digests of the signed bundle.json, the SHA256SUMS digest, the anchor); attack 1 is NotVerified
    with one paragraph naming its reasons."""
    from gapforge.operator.anchor import choose_anchor, root_identity
    from gapforge.operator.gate import NotVerified, require_verified

    anchor = choose_anchor("verify")
    record = require_verified(rooted.bundle, anchor, "deploy")
    index = json.loads((rooted.bundle / INDEX).read_text())
    assert (record.name, record.version) == (index["name"], index["version"])
    assert (
        record.config_digest == index["image"]["config_digest"]
        and record.ref == index["image"]["ref"]
    )
    assert record.sums_sha256 == hashlib.sha256((rooted.bundle / SUMS).read_bytes()).hexdigest()
    assert record.anchor == "root" and record.anchor_identity == root_identity(rooted.trust)
    (tmp_path / "in").mkdir()
    attack = attack_bundle(attacker_template, tmp_path / "in", b"{}", bytes(64))
    with pytest.raises(NotVerified) as refused:
        require_verified(attack, anchor, "deploy")
    assert refused.value.exit_status == 2 and "\n" not in refused.value.message
    assert "'gapforge deploy' will not act on it" in refused.value.message
    assert "not proven by a key the trust anchor names" in refused.value.message


@pytest.mark.parametrize(
    "name",
    ["../outside/canary-secret.txt", "/etc/passwd", "a/../../outside/canary-secret.txt",
     "recipe\u2028x", "recipe/\x00x", "recipe//x"],
    ids=["dotdot", "absolute", "inner-dotdot", "line-separator", "nul", "empty-component"],
)  # fmt: skip
def test_a_signed_sums_line_naming_a_path_outside_is_refused_unread(
    hostile: Hostile, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Even signed by the pinned key (a compromised build host), a SHA256SUMS line that names a path
    outside the bundle is a named problem, and nothing outside is read or hashed."""
    from gapforge.bundle.sign import sign

    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "no-root"))
    bundle = write_signed_bundle(hostile.inputs / "build")
    digest = hashlib.sha256(hostile.canary.read_bytes()).hexdigest()
    sums = (bundle / SUMS).read_bytes() + f"{digest}  {name}\n".encode()
    (bundle / SUMS).write_bytes(sums)
    key = signing_key(hostile.inputs)
    (bundle / SIGNATURE).write_bytes(sign(key, sums))
    (hostile.inputs / "release.pub.pem").write_bytes(key.public_pem)
    status, text = hostile.run("verify", bundle, "--key", hostile.inputs / "release.pub.pem",
                               "--json", capsys=capsys)  # fmt: skip
    report = _json(text)
    assert status == 1 and report["ok"] is False and report["signature"]["ok"] is True, text  # type: ignore[index]
    assert any(p["file"] == SUMS and "not a plain relative path" in p["message"]
               for p in report["problems"])  # type: ignore[index, union-attr, attr-defined]  # fmt: skip
    assert report["files_checked"] == len((bundle / SUMS).read_text().split("\n")) - 2


def _tar(members: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ARCHIVES = {
    "index-manifests-string": {"index.json": b'{"manifests": "x"}', "manifest.json": b"[]"},
    "index-digest-number": {"index.json": b'{"manifests": [{"digest": 7}]}', "manifest.json": b"[]"},
    "docker-manifest-ints": {"index.json": b'{"manifests": [{"digest": "sha256:' + b"a" * 64 + b'"}]}',
                             "blobs/sha256/" + "a" * 64: b'{"config": {"digest": "sha256:' + b"b" * 64
                             + b'"}, "layers": []}', "blobs/sha256/" + "b" * 64: b"[]",
                             "manifest.json": b"[1]"},
    "deep-config": {"index.json": b"[" * 50_000 + b"]" * 50_000, "manifest.json": b"[]"},
}  # fmt: skip


@pytest.mark.parametrize("archive", ARCHIVES, ids=list(ARCHIVES))
def test_a_malformed_image_archive_is_named_never_a_traceback(
    hostile: Hostile, world: ReleaseWorld, attacker_template: Path, archive: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    bundle = hostile.inputs / attacker_template.name
    shutil.copytree(attacker_template, bundle)
    (bundle / "image.tar").write_bytes(_tar({"oci-layout": b"{}", **ARCHIVES[archive]}))
    _sums_over(bundle)
    status, text = hostile.run("verify", bundle, "--json", capsys=capsys)
    report = _json(text)
    assert status != 0 and report["ok"] is False, text
    assert any(p["file"] == "image.tar" and "unreadable" in p["message"]
               for p in report["problems"]), report["problems"]  # type: ignore[index, union-attr, attr-defined]  # fmt: skip


def test_the_record_says_whether_the_archive_was_hashed(rooted: ReleaseWorld) -> None:
    from gapforge.operator.anchor import choose_anchor
    from gapforge.operator.gate import gate, require_verified
    from gapforge.operator.verify import authenticate_index

    anchor = choose_anchor("verify")
    assert require_verified(rooted.bundle, anchor, "deploy").archive_hashed
    assert not gate(authenticate_index(rooted.bundle, anchor), "run").archive_hashed


def test_run_of_attack_1_is_refused_before_the_engine(
    hostile: Hostile, rooted: ReleaseWorld, attacker_template: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`run` checks a bundle folder through the gate before it connects to Docker (a tripwire
    fails the test if it gets there); nothing is created, not even --out."""
    from gapforge import engine

    bundle = attack_bundle(attacker_template, hostile.inputs, b"{}", bytes(64))
    data = hostile.inputs / "data.jsonl"
    data.write_text("{}\n")
    monkeypatch.setattr(engine, "connect", lambda: pytest.fail("run reached the Docker engine"))
    status, text = hostile.run("run", bundle, "--data", data, "--out", hostile.out, capsys=capsys)
    assert status in (1, 2) and "refusing to run" in text and "not verified" in text, text
    assert not hostile.out.exists()
