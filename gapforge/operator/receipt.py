"""Receipts: what the operator's side checked and imported, signed with the operator's own key.

`load` (and `verify --receipt`) write one receipt per action: which bundle, which image (manifest
digest and image ID), every check and its result, how the bundle was authenticated (a pinned key,
or TUF root + channel + target), where the image went, who did it on which host, when, with which
gapforge. A receipt is a DSSE envelope (payloadType RECEIPT_TYPE) signed with the operator key, so
an auditor can check it with any DSSE tool, and `run IMAGE_REF` can ask "was this image ID
imported through a verified bundle here?" with `find_receipt`.

The folder (by default the trust folder's `receipts/`) holds
`<UTC time>-<name>-<version>-<action>.receipt.json`, never overwritten, and
`by-image/<image ID hex>.json`, a copy of the newest receipt for that image ID, for people and
quick look-ups; `find_receipt` reads every receipt and trusts only signatures that verify.

A receipt means success: one is written only for a bundle the trust gate proved (a failed or
--insecure check writes none), and `find_receipt` accepts one only when it verifies with the
operator key, every check in it passed, and it binds the image ID asked for, a SHA256SUMS digest and
this site's trust anchor (`anchor`: gapforge.operator.anchor.Anchor.identity). A receipt made under
another anchor (another pinned key, another root) authorises nothing here.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gapforge import __version__
from gapforge.atomic import write_atomic
from gapforge.bundle.dsse import envelope_payload_unverified, open_envelope, sign_envelope
from gapforge.bundle.sign import (
    SigningKey,
    load_private_key,
    load_public_key,
    public_path,
    write_key_pair,
)
from gapforge.errors import BundleError

RECEIPT_TYPE = "application/vnd.gapforge.receipt+json"
RECEIPT_SCHEMA = "gapforge/receipt/v1"
OPERATOR_KEY_ENV = "GAPFORGE_OPERATOR_KEY"
OPERATOR_KEY_NAME = "operator.key"
OPERATOR_KEY_HELP = (
    "the operator's private key that signs receipts and inventories (default: "
    "$GAPFORGE_OPERATOR_KEY, else the trust folder's operator.key, made once)"
)
RECEIPT_SUFFIX = ".receipt.json"
BY_IMAGE = "by-image"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Receipt:
    """What one operator action checked and imported (the signed payload of a receipt)."""

    action: str
    """What was done: `load`, `verify`, …"""
    time: str
    """When, UTC, ISO 8601 (`2026-12-03T10:11:12Z`)."""
    bundle: str
    """The bundle folder, as the operator named it."""
    name: str
    version: str
    manifest_digest: str
    """The image digest (`sha256:…`) the archive holds."""
    config_digest: str
    """The image ID (`sha256:…`): what `docker load` gives and `run IMAGE_REF` resolves to."""
    archive_sha256: str
    sums_sha256: str
    """sha256 of the bundle's SHA256SUMS whose signature was proven."""
    anchor: str
    """The trust anchor that proved it (Anchor.identity: `key:sha256:…` or `tuf-root:sha256:…`)."""
    checks: list[dict[str, Any]]
    """Every check, in order: `{"check": "signature", "ok": true, "detail": "…"}`."""
    trust: dict[str, Any]
    """How the bundle was authenticated: a pinned key's fingerprint, or TUF root version, channel
    and target."""
    loaded_into: str | None
    """Where the image went (`docker`, a registry reference), None when nothing was imported."""
    operator: str
    host: str
    gapforge_version: str
    schema: str = RECEIPT_SCHEMA

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(check.get("ok") is True for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Receipt:
        """The receipt in a payload that `receipt_problems` found none in."""
        return cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})


_STRING, _NULLABLE = ((str,), "a string"), ((str, type(None)), "a string or null")
_REQUIRED: dict[str, tuple[tuple[type, ...], str]] = {
    **{key: _STRING for key in ("schema", "action", "time", "bundle", "name", "version",
                                "manifest_digest", "config_digest", "archive_sha256", "sums_sha256",
                                "anchor", "operator",
                                "host", "gapforge_version")},
    "checks": ((list,), "a list"), "trust": ((dict,), "an object"), "loaded_into": _NULLABLE,
}  # fmt: skip


def receipt_problems(value: dict[str, Any]) -> list[str]:
    """What makes `value` not a gapforge receipt v1 payload."""
    if value.get("schema") != RECEIPT_SCHEMA:
        return [f"schema is {value.get('schema')!r}, not {RECEIPT_SCHEMA!r}"]
    problems = [
        f"{key} is missing or not {shown}"
        for key, (kinds, shown) in _REQUIRED.items()
        if key not in value or not isinstance(value[key], kinds)
    ]
    checks = value.get("checks")
    for number, check in enumerate(checks if isinstance(checks, list) else []):
        if not isinstance(check, dict) or not isinstance(check.get("check"), str):
            problems.append(f"checks[{number}] has no name (check)")
        elif not isinstance(check.get("ok"), bool):
            problems.append(f"checks[{number}] ({check['check']}) has no true/false ok")
    return problems


def _is_hex64(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a uid with no passwd entry, in a container
        return f"uid {os.getuid()}"


def operator_key(trust_dir: Path, explicit: Path | None = None) -> SigningKey:
    """The key receipts are signed with: `explicit` (--operator-key), else $GAPFORGE_OPERATOR_KEY,
    else `trust_dir/operator.key`, made once (0600, with its .pub.pem beside it)."""
    chosen = explicit or (
        Path(os.environ[OPERATOR_KEY_ENV]) if os.environ.get(OPERATOR_KEY_ENV) else None
    )
    if chosen is not None:
        return load_private_key(chosen.expanduser())
    path = trust_dir / OPERATOR_KEY_NAME
    if path.is_file():
        return load_private_key(path)
    try:
        return write_key_pair(path)
    except BundleError:
        if path.is_file():  # another process made it first: use that one
            return load_private_key(path)
        raise


def make_receipt(
    *,
    action: str,
    bundle: Path,
    name: str,
    version: str,
    manifest_digest: str,
    config_digest: str,
    archive_sha256: str,
    sums_sha256: str,
    anchor: str,
    checks: list[dict[str, Any]],
    trust: dict[str, Any],
    loaded_into: str | None,
    host: str | None = None,
) -> dict[str, Any]:
    """The receipt payload for one action, stamped with the UTC time, gapforge's version, the
    operator's user name and the host name. Raises ValueError for malformed input (a caller bug)."""
    receipt = Receipt(
        action=action,
        time=_utc_now(),
        bundle=str(bundle),
        name=name,
        version=version,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        archive_sha256=archive_sha256,
        sums_sha256=sums_sha256,
        anchor=anchor,
        checks=[dict(check) for check in checks],
        trust=dict(trust),
        loaded_into=loaded_into,
        operator=_user(),
        host=host if host is not None else socket.gethostname(),
        gapforge_version=__version__,
    )
    value = receipt.to_json()
    problems = receipt_problems(value)
    if not action:
        problems.append("action is empty")
    if not config_digest.startswith("sha256:") or len(config_digest) != 71:
        problems.append(f"config_digest is {config_digest!r}, not sha256:<64 hex>")
    if not _is_hex64(sums_sha256):
        problems.append(f"sums_sha256 is {sums_sha256!r}, not 64 hex digits")
    if not anchor:
        problems.append("anchor is empty: a receipt binds the trust anchor that proved the bundle")
    if problems:
        raise ValueError(f"not a receipt: {'; '.join(problems)}")
    return value


def _safe(part: str) -> str:
    """A name part for a file name: no path separators, no surprises."""
    return _UNSAFE.sub("_", part).strip("._") or "_"


def _claim(folder: Path, stem: str, data: bytes) -> Path:
    """Write `data` under the first free `stem[-n].receipt.json`: a receipt is never overwritten."""
    tmp = folder / f".{stem}.partial-{os.getpid()}"
    tmp.write_bytes(data)
    try:
        for number in range(1, 1000):
            path = folder / f"{stem}{'' if number == 1 else f'-{number}'}{RECEIPT_SUFFIX}"
            try:
                os.link(tmp, path)  # atomic, and fails where the name is taken
            except FileExistsError:
                continue
            return path
    finally:
        tmp.unlink(missing_ok=True)
    raise BundleError(f"{folder}: 999 receipts named {stem}: clean up the receipts folder")


def write_receipt(receipt: dict[str, Any], key: SigningKey, folder: Path) -> Path:
    """Sign `receipt` (DSSE) with `key` and write it as `folder/<time>-<name>-<version>-<action>
    .receipt.json`, plus a copy at `folder/by-image/<image ID hex>.json`; returns the first path."""
    problems = receipt_problems(receipt)
    if problems:
        raise ValueError(f"not a receipt: {'; '.join(problems)}")
    payload = json.dumps(receipt, sort_keys=True, separators=(",", ":")).encode()
    envelope = sign_envelope(payload, RECEIPT_TYPE, key)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = str(receipt["time"]).replace("-", "").replace(":", "")
    stem = "-".join(_safe(str(receipt[part])) for part in ("name", "version", "action"))
    path = _claim(folder, f"{_safe(stamp)}-{stem}", envelope)
    by_image = folder / BY_IMAGE
    by_image.mkdir(exist_ok=True)
    image_id = _safe(str(receipt["config_digest"]).removeprefix("sha256:"))
    write_atomic(by_image / f"{image_id}.json", envelope)
    return path


def verify_receipt(path: Path, key: Ed25519PublicKey) -> tuple[dict[str, Any] | None, list[str]]:
    """The receipt at `path` if its DSSE signature verifies with `key` and it is a receipt v1,
    else None and what failed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [f"{path}: cannot be read ({exc.strerror})"]
    payload, problems = open_envelope(data, RECEIPT_TYPE, [key])
    if payload is None:
        return None, [f"{path}: {problem}" for problem in problems]
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, [f"{path}: its payload is not valid JSON ({exc})"]
    if not isinstance(value, dict):
        return None, [f"{path}: its payload is not a JSON object"]
    problems = receipt_problems(value)
    if problems:
        return None, [f"{path}: {problem}" for problem in problems]
    return value, []


def authorises(value: dict[str, Any], config_digest: str, anchor: str) -> bool:
    """A verified receipt payload authorises running `config_digest` under `anchor` only when it is
    a load or verify that succeeded (every check ok), of that image ID, binding a SHA256SUMS digest
    and that very anchor."""
    checks = value.get("checks")
    return (
        value.get("action") in ("load", "verify")
        and value.get("config_digest") == config_digest
        and value.get("ok") is True
        and isinstance(checks, list)
        and bool(checks)
        and all(isinstance(c, dict) and c.get("ok") is True for c in checks)
        and _is_hex64(value.get("sums_sha256"))
        and bool(anchor)
        and value.get("anchor") == anchor
    )


def find_receipt(
    folder: Path, config_digest: str, keys: Sequence[Ed25519PublicKey], anchor: str
) -> dict[str, Any] | None:
    """The newest receipt in `folder` that authorises image ID `config_digest` under the trust
    anchor `anchor` (see `authorises`) and whose signature verifies with one of `keys`; receipts
    that do not are passed over. None when there is none (or `anchor` is empty)."""
    if not folder.is_dir() or not anchor:
        return None
    candidates: list[tuple[str, str, Path]] = []
    for path in [*folder.glob(f"*{RECEIPT_SUFFIX}"), *(folder / BY_IMAGE).glob("*.json")]:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            claimed = envelope_payload_unverified(path.read_bytes())
        except OSError:
            continue
        if claimed.get("config_digest") == config_digest:
            candidates.append((str(claimed.get("time", "")), path.name, path))
    # Newest first by what each one claims; only a verified claim is returned, so a forged
    # "newer" receipt costs one failed check and is skipped.
    for _, _, path in sorted(candidates, reverse=True):
        for key in keys:
            value, _problems = verify_receipt(path, key)
            if value is not None and authorises(value, config_digest, anchor):
                return value
    return None


def operator_public_keys(trust_dir: Path) -> list[Ed25519PublicKey]:
    """The public keys receipts on this machine are checked with: $GAPFORGE_OPERATOR_KEY's and the
    trust folder's operator key, those that exist (none yet: no receipt can be trusted)."""
    keys = []
    for private in (
        Path(os.environ[OPERATOR_KEY_ENV]).expanduser()
        if os.environ.get(OPERATOR_KEY_ENV)
        else None,
        trust_dir / OPERATOR_KEY_NAME,
    ):
        if private is None or not private.is_file():
            continue
        public = public_path(private)
        keys.append(
            load_public_key(public)
            if public.is_file()
            else load_private_key(private).private.public_key()
        )
    return keys
