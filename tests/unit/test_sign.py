"""Keys, signatures and SHA256SUMS, checked against the real `openssl` and `sha256sum`."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from gapforge.bundle.sign import (
    fingerprint,
    load_private_key,
    load_public_key,
    public_path,
    resolve_signing_key,
    sign,
    signature_valid,
    write_key_pair,
)
from gapforge.bundle.sums import HashJob, hash_jobs, parse_sums, render_sums
from gapforge.errors import BundleError

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    key = write_key_pair(tmp_path / "release.key")
    assert (tmp_path / "release.key").stat().st_mode & 0o777 == 0o600
    assert public_path(key.path) == tmp_path / "release.pub.pem"
    assert load_public_key(tmp_path / "release.pub.pem") is not None
    assert load_private_key(key.path).fingerprint == key.fingerprint
    with pytest.raises(BundleError, match="already exists"):
        write_key_pair(tmp_path / "release.key")


def test_signature_roundtrip_and_a_changed_byte_fails(tmp_path: Path) -> None:
    key = write_key_pair(tmp_path / "k.key")
    data = b"0" * 64 + b"  image.tar\n"
    signature = sign(key, data)
    assert len(signature) == 64
    public = load_public_key(public_path(key.path))
    assert signature_valid(public, data, signature)
    assert not signature_valid(public, data.replace(b"0", b"1", 1), signature)
    other = load_public_key(public_path(write_key_pair(tmp_path / "other.key").path))
    assert not signature_valid(other, data, signature)


@needs_openssl
def test_openssl_checks_our_signature_and_computes_our_fingerprint(tmp_path: Path) -> None:
    key = write_key_pair(tmp_path / "k.key")
    sums = tmp_path / "SHA256SUMS"
    sums.write_bytes(b"a" * 64 + b"  image.tar\n")
    (tmp_path / "SHA256SUMS.sig").write_bytes(sign(key, sums.read_bytes()))
    command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public_path(key.path)), "-rawin",
               "-in", str(sums), "-sigfile", str(tmp_path / "SHA256SUMS.sig")]  # fmt: skip
    good = subprocess.run(command, capture_output=True, text=True, check=False)
    assert good.returncode == 0 and "Signature Verified Successfully" in good.stdout
    sums.write_bytes(b"b" * 64 + b"  image.tar\n")
    assert subprocess.run(command, capture_output=True, check=False).returncode != 0
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(public_path(key.path)), "-outform", "DER"],
                         capture_output=True, check=True).stdout  # fmt: skip
    assert key.fingerprint == "sha256:" + hashlib.sha256(der).hexdigest()


@needs_openssl
def test_openssl_made_key_signs_bundles(tmp_path: Path) -> None:
    """A release key made with openssl alone (no gapforge) is accepted."""
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(tmp_path / "o.key")], check=True)
    key = load_private_key(tmp_path / "o.key")
    assert fingerprint(key.private.public_key()) == key.fingerprint


def test_encrypted_key_needs_its_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAPFORGE_KEY_PASSPHRASE", "correct horse")
    key = write_key_pair(tmp_path / "k.key")
    assert b"ENCRYPTED" in key.path.read_bytes()
    assert load_private_key(key.path).fingerprint == key.fingerprint
    monkeypatch.delenv("GAPFORGE_KEY_PASSPHRASE")
    with pytest.raises(BundleError, match="GAPFORGE_KEY_PASSPHRASE"):
        load_private_key(key.path)


def test_bad_key_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a key\n")
    with pytest.raises(BundleError, match=r"junk\.pem: not a PEM private key.*gapforge keygen"):
        load_private_key(tmp_path / "junk.pem")
    with pytest.raises(BundleError, match=r"junk\.pem: not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(BundleError, match=r"missing\.key: cannot be read"):
        load_private_key(tmp_path / "missing.key")


def test_signing_key_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GAPFORGE_SIGNING_KEY", raising=False)
    made = resolve_signing_key(None, tmp_path / "cache")
    assert made.generated and made.path == tmp_path / "cache/keys/gapforge-signing.key"
    again = resolve_signing_key(None, tmp_path / "cache")
    assert not again.generated and again.fingerprint == made.fingerprint
    release = write_key_pair(tmp_path / "release.key")
    monkeypatch.setenv("GAPFORGE_SIGNING_KEY", str(release.path))
    assert resolve_signing_key(None, tmp_path / "cache").fingerprint == release.fingerprint
    explicit = write_key_pair(tmp_path / "explicit.key")
    assert resolve_signing_key(explicit.path, tmp_path / "cache").fingerprint == explicit.fingerprint


def test_sha256sums_is_what_sha256sum_checks(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    files = {"a.txt": b"alpha\n", "sub/b with space.bin": bytes(range(256)) * 100}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    text = render_sums({name: hashlib.sha256(data).hexdigest() for name, data in files.items()})
    (tmp_path / "SHA256SUMS").write_bytes(text)
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=tmp_path,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 2
    lines, problems = parse_sums(text.decode())
    assert not problems and [line.name for line in lines] == ["a.txt", "sub/b with space.bin"]
    (tmp_path / "a.txt").write_bytes(b"alphA\n")
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True,
                          check=False).returncode == 1  # fmt: skip


def test_sha256sums_refuses_names_sha256sum_would_escape() -> None:
    with pytest.raises(ValueError, match="not a plain relative path"):
        render_sums({"a\nb": "0" * 64})
    _, problems = parse_sums("zz  a\n" + "0" * 64 + "  a\n" + "0" * 64 + "  a\n")
    assert problems == ["line 1 is not '<sha256>  <file>': 'zz  a'", "line 3 lists a a second time"]


def test_hash_jobs_hash_byte_ranges_and_report_short_files(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000
    (tmp_path / "f").write_bytes(data)
    jobs = [HashJob("whole", tmp_path / "f"), HashJob("middle", tmp_path / "f", 1000, 5000),
            HashJob("past-end", tmp_path / "f", len(data) - 10, 20)]  # fmt: skip
    seen: list[int] = []
    results = hash_jobs(jobs, seen.append, workers=2)
    assert results["whole"].sha256 == hashlib.sha256(data).hexdigest()
    assert results["middle"].sha256 == hashlib.sha256(data[1000:6000]).hexdigest()
    assert results["past-end"].sha256 is None and "ends after 10 of 20 bytes" in results["past-end"].error
    assert sum(seen) == len(data) + 5000 + 10
