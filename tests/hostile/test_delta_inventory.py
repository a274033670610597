"""Inventories an attacker wrote or altered, read by `gapforge delta --against`: names that are
not digests, places and releases that are paths, another signer, no pinned key; and, inside, the
`inventory` command over a bundle whose folder is a link out. The signature is checked first,
every name is parsed, and a check that cannot decide refuses."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gapforge.bundle.dsse import sign_envelope
from gapforge.bundle.sign import SigningKey
from gapforge.bundle.transfer import INVENTORY_TYPE
from gapforge.operator.inventory import make_inventory, write_inventory
from tests.hostile.conftest import Hostile
from tests.unit.test_bundle import _key, source  # noqa: F401 (fixture)
from tests.unit.test_delta import bundles  # noqa: F401 (fixture)


@pytest.fixture
def inventory(
    hostile: Hostile,
    bundles: tuple[Path, Path],  # noqa: F811 (the imported fixture)
    tmp_path: Path,
) -> tuple[Path, Path, SigningKey, Path]:
    """The site's genuine inventory of the old bundle (in `hostile.inputs`), the new bundle, the
    operator key and its public half (what the release manager pins with --inventory-key)."""
    old, new = bundles
    operator = _key(tmp_path, 3)
    path = write_inventory(make_inventory([old]), operator, hostile.inputs / "inventory.json")
    pub = tmp_path / "operator.pub.pem"
    pub.write_bytes(operator.public_pem)
    return path, new, operator, pub


def forge(path: Path, key: SigningKey, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the inventory's payload and sign it again with `key`."""
    payload = json.loads(base64.b64decode(json.loads(path.read_bytes())["payload"]))
    change(payload)
    path.write_bytes(sign_envelope(json.dumps(payload).encode(), INVENTORY_TYPE, key))


def delta(
    hostile: Hostile, inventory: tuple[Path, Path, SigningKey, Path],
    capsys: pytest.CaptureFixture[str], *more: str | Path,
) -> tuple[int, str]:  # fmt: skip
    path, new, _operator, _pub = inventory
    return hostile.run("delta", new, "--against", path, "--out", hostile.out, *more, capsys=capsys)


def test_the_genuine_inventory_with_its_pinned_key_makes_a_delta(
    hostile: Hostile, inventory: tuple[Path, Path, SigningKey, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    status, text = delta(hostile, inventory, capsys, "--inventory-key", inventory[3])
    assert status == 0, text
    assert (hostile.out / "unit-desk-2.0.0.delta" / "delta" / "delta.json").is_file()


def test_an_inventory_without_a_pinned_key_is_refused_unless_asked(
    hostile: Hostile, inventory: tuple[Path, Path, SigningKey, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    status, text = delta(hostile, inventory, capsys)
    assert status == 2 and "--inventory-key OPERATOR.pub.pem" in text, text
    assert not hostile.out.exists()
    status, text = delta(hostile, inventory, capsys, "--insecure-inventory")
    assert status == 0 and "not checked against a pinned key" in text, text


def test_an_inventory_signed_by_another_key_fails_the_check(
    hostile: Hostile, inventory: tuple[Path, Path, SigningKey, Path],
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    forge(inventory[0], _key(tmp_path, 8), lambda payload: payload["blobs"].clear())
    status, text = delta(hostile, inventory, capsys, "--inventory-key", inventory[3])
    assert status == 1 and "refused" in text and "does not verify" in text, text
    assert not hostile.out.exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p["blobs"].__setitem__("../../etc/passwd", {"size": 1}), "is not sha256:<hex>"),
        (lambda p: p["files"].__setitem__("sha256:" + "0" * 64, {"size": True}), "is not sha256:<hex>"),
        (lambda p: p["blobs"].__setitem__("sha256:" + "0" * 64, {"size": -1}), "size or held_in"),
        (lambda p: p["blobs"].__setitem__("sha256:" + "0" * 64, {"size": 1, "held_in": ["/etc"]}),
         "held_in: '/etc' is refused"),
        (lambda p: p["releases"].append({"name": "../x", "version": "1", "held_in": "b",
                                         "sums_sha256": "0" * 64}), "releases[1].name"),
        (lambda p: p["releases"].append({"name": "x", "version": "1\n2", "held_in": "b",
                                         "sums_sha256": "0" * 64}), "releases[1].version"),
        (lambda p: p.__setitem__("blobs", []), "blobs is not a map"),
        (lambda p: p.__setitem__("releases", {}), "releases is not a list"),
    ],
)  # fmt: skip
def test_names_in_a_signed_inventory_are_parsed(
    hostile: Hostile, inventory: tuple[Path, Path, SigningKey, Path],
    capsys: pytest.CaptureFixture[str], change: Callable[[dict[str, Any]], None], expected: str,
) -> None:  # fmt: skip
    forge(inventory[0], inventory[2], change)  # signed by the operator key itself
    status, text = delta(hostile, inventory, capsys, "--inventory-key", inventory[3])
    assert status == 2 and expected in text, text
    assert not hostile.out.exists()


@pytest.mark.parametrize("data", [b"[" * 100_000, b"\xff", b"{}", b"null"])
def test_an_inventory_that_is_not_an_envelope_is_refused(
    hostile: Hostile, inventory: tuple[Path, Path, SigningKey, Path],
    capsys: pytest.CaptureFixture[str], data: bytes,
) -> None:  # fmt: skip
    inventory[0].write_bytes(data)
    status, text = delta(hostile, inventory, capsys, "--inventory-key", inventory[3])
    assert status in (1, 2) and "inventory.json" in text, text


def test_the_inventory_command_refuses_a_bundle_folder_that_links_out(
    hostile: Hostile,
    bundles: tuple[Path, Path],  # noqa: F811 (the imported fixture)
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "trust"))
    old = bundles[0]
    wheels = old / "wheels"
    (hostile.outside / "wheels").mkdir()
    for wheel in wheels.iterdir():  # the same names, now read through a link out of the bundle
        (hostile.outside / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
        wheel.unlink()
    wheels.rmdir()
    wheels.symlink_to(hostile.outside / "wheels")
    hostile.before = {**hostile.before, **_snapshot(hostile.outside)}
    status, text = hostile.run("inventory", old, "--out", hostile.out / "inv.json", capsys=capsys)
    assert status == 2 and "wheels is a symbolic link" in text, text


def _snapshot(root: Path) -> dict[str, bytes | str]:
    from tests.hostile.conftest import _tree

    return _tree(root)


def test_build_delta_from_checks_the_inventory_before_it_builds(
    hostile: Hostile, inventory: tuple[Path, Path, SigningKey, Path],
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    """`build --delta-from INVENTORY` trusts the inventory as `delta --against` does (before: read
    with the key it names itself), and refuses before any build work: the recipe named here does
    not exist, so reaching the build would be a different error."""
    path = inventory[0]
    recipe = hostile.inputs / "no-such-recipe.yaml"
    status, text = hostile.run("build", recipe, "--delta-from", path, capsys=capsys)
    assert status == 2 and "--delta-from" in text and "--inventory-key" in text, text
    forge(path, _key(tmp_path, 8), lambda payload: payload["blobs"].clear())
    status, text = hostile.run(
        "build", recipe, "--delta-from", path, "--inventory-key", inventory[3], capsys=capsys
    )
    assert status != 0 and "no-such-recipe" not in text, text
