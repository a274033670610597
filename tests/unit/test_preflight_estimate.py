"""preflight's disk check reads the pretest evidence as the bytes the checked SHA256SUMS names: an
evidence file altered after the check cannot set the estimate (before: read again unchecked)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gapforge.bundle import PRETEST
from gapforge.bundle.sums import parse_sums
from gapforge.errors import BundleError
from gapforge.operator.preflight import _pretest_output_bytes
from gapforge.operator.run import Target
from tests.bundles import write_signed_bundle


def _target(bundle: Path) -> Target:
    sums = (bundle / "SHA256SUMS").read_bytes()
    return Target("desk:1", "sha256:" + "c" * 64, "cpu", bundle, hashlib.sha256(sums).hexdigest())


def test_the_estimate_comes_from_the_signed_evidence(tmp_path: Path) -> None:
    bundle = write_signed_bundle(tmp_path)
    evidence = json.loads((bundle / PRETEST).read_text())
    expected = sum(int(o.get("size", 0)) for o in evidence.get("outputs", {}).values())
    assert expected > 0
    assert _pretest_output_bytes(_target(bundle)) == expected
    assert _pretest_output_bytes(Target("desk:1", "sha256:" + "c" * 64, "cpu")) == 0


def test_evidence_altered_after_the_check_is_refused(tmp_path: Path) -> None:
    bundle = write_signed_bundle(tmp_path)
    target = _target(bundle)
    lines, _ = parse_sums((bundle / "SHA256SUMS").read_text())
    assert PRETEST in {line.name for line in lines}
    evidence = json.loads((bundle / PRETEST).read_text())
    evidence["outputs"] = {"merged": {"size": 0}}
    (bundle / PRETEST).write_text(json.dumps(evidence))
    with pytest.raises(BundleError, match="changed after it was verified"):
        _pretest_output_bytes(target)
