"""Data hygiene: planted personal data and secrets found by line and type, redacted or dropped, never
shown; near-duplicates and test-into-training leaks removed; all of it offline (real libraries)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_examples, recipe_dict, write_jsonl
from gapforge_runtime.cli import main
from gapforge_runtime.data.hygiene.dedupe import find_near_duplicates
from gapforge_runtime.data.hygiene.lengths import length_stats
from gapforge_runtime.data.hygiene.patterns import iban_valid, luhn_valid
from gapforge_runtime.data.hygiene.pii import PiiDetector

from tests.requirements import require_module

PRIVATE_KEY_BODY = "MIIEpAIBAAKCAQEAvGapforgeTestKeyBodyNotARealKey0123456789abcdefXYZ"
# value -> type; each in its own training row (line = position in PLANTED + 1 after the filler)
PLANTED = {
    "jane.doe@example.com": "email",
    "(415) 555-2671": "phone",
    "020 7946 0958": "phone",
    "030 12345678": "phone",
    "+33 1 42 68 53 00": "phone",
    "4111 1111 1111 1111": "card",
    "5500-0000-0000-0004": "card",
    "DE89 3704 0044 0532 0130 00": "iban",
    "GB82WEST12345698765432": "iban",
    "192.168.10.20": "ip",
    "2001:db8:85a3::8a2e:370:7334": "ip",
    "AKIAIOSFODNN7EXAMPLE": "secret",
    "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8": "secret",
    f"-----BEGIN RSA PRIVATE KEY-----\n{PRIVATE_KEY_BODY}\n-----END RSA PRIVATE KEY-----": "secret",
    "536-22-1845": "national_id",
    "JG 10 37 59 A": "national_id",
}
NOT_PII = ["4111 1111 1111 1112", "DE89 3704 0044 0532 0130 01"]  # Luhn / mod-97 invalid
LONG = (
    "The operator copies the bundle to the removable drive, carries it across the gap, verifies "
    "every digest against the receipt, loads the image into the local engine, starts the run with "
    "the recipe and the data folder, waits for the report, reads the verdict and the perplexity of "
    "each quantized model, and then files the signed receipt with the {word} change request."
)
FILLER = 20
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"]


def chat(user: str, answer: str = "Noted, thank you.") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def training_rows() -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Filler, then one row per planted value, the invalid look-alikes, and near-duplicates."""
    rows = chat_examples(FILLER)
    lines = {}
    for word, value in zip(WORDS, [*PLANTED, *NOT_PII], strict=True):
        # distinct words around each value: redacted rows must not become near-duplicates
        rows.append(chat(f"Note for the {word} desk: {value} (ticket {word})."))
        lines[value] = len(rows)
    rows += [chat(LONG.format(word="weekly")), chat(LONG.format(word="monthly"))]
    lines["near_a"], lines["near_b"] = len(rows) - 1, len(rows)
    rows += [chat("An exact duplicate row, twice."), chat("An exact duplicate row, twice.")]
    rows.append(chat(LONG.replace("operator", "engineer").format(word="yearly")))
    lines["leaked"] = len(rows)
    return rows, lines


def _run_data(tmp_path: Path, model: Path, rows: list[Any], policy: dict[str, str]) -> tuple[int, Path]:
    recipe = recipe_dict()
    recipe["data"]["pii"] = {"policy": policy}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe), encoding="utf-8")
    data = write_jsonl(tmp_path / "in" / "train.jsonl", rows)
    validation = write_jsonl(
        tmp_path / "in" / "validation.jsonl",
        [chat("Reach the desk at desk.lead@example.org please."), *chat_examples(30)[FILLER:23]],
    )
    test = write_jsonl(
        tmp_path / "in" / "test.jsonl",
        [chat(LONG.replace("operator", "engineer").format(word="annual")), *chat_examples(30)[25:28]],
    )
    out = tmp_path / "out"
    status = main([
        "data", "--recipe", str(tmp_path / "recipe.json"), "--model", str(model), "--data", str(data),
        "--validation", str(validation), "--test", str(test), "--out", str(out),
    ])  # fmt: skip
    return status, out


@pytest.fixture(scope="module")
def hygiene_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("hygiene")
    rows, lines = training_rows()
    capture = tmp / "log.txt"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        status, out = _run_data(tmp, tiny_model, rows, {"secret": "redact"})
    capture.write_text(buffer.getvalue(), encoding="utf-8")
    assert status == 0, buffer.getvalue()
    record = json.loads((out / "steps" / "data.json").read_text(encoding="utf-8"))
    return {"out": out, "lines": lines, "report": record["details"]["hygiene"], "log": buffer.getvalue()}


def test_every_planted_item_is_found_with_its_type_and_line(hygiene_run: dict[str, Any]) -> None:
    pii, lines = hygiene_run["report"]["pii"], hygiene_run["lines"]
    found = {(f["split"], f["line"], f["type"]) for f in pii["findings"]}
    for value, kind in PLANTED.items():
        assert ("train", lines[value], kind) in found, f"{kind} on line {lines[value]}"
    assert ("validation", 1, "email") in found
    for value in NOT_PII:
        assert not [f for f in pii["findings"] if f["line"] == lines[value]]
    assert pii["counts"]["card"] == {"train": 2}
    assert pii["counts"]["phone"] == {"train": 4}
    assert pii["counts"]["national_id"] == {"train": 2}
    assert {f["action"] for f in pii["findings"] if f["type"] == "national_id"} == {"dropped"}
    assert {f["action"] for f in pii["findings"] if f["type"] == "card"} == {"dropped"}
    assert {f["action"] for f in pii["findings"] if f["type"] == "email"} == {"redacted"}
    assert pii["detectors"] == ["pattern+checksum", "presidio"]
    assert any("person/location: no NER model" in n for n in hygiene_run["report"]["not_checked"])


def test_no_planted_value_is_anywhere_in_the_outputs_or_logs(hygiene_run: dict[str, Any]) -> None:
    values = [*PLANTED, PRIVATE_KEY_BODY, "desk.lead@example.org"]
    files = [p for p in hygiene_run["out"].rglob("*") if p.is_file()]
    assert any(p.name == "train.jsonl" for p in files)
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        for value in values:
            assert value not in text and json.dumps(value)[1:-1] not in text, f"{path.name}"
    for value in values:
        assert value not in hygiene_run["log"]
    train = (hygiene_run["out"] / "data" / "train.jsonl").read_text(encoding="utf-8")
    assert "<EMAIL>" in train and "<SECRET>" in train and "<PHONE>" in train and "<IP>" in train
    assert all(v in train for v in NOT_PII)  # invalid look-alikes are left alone


def test_near_duplicates_and_the_leak_are_removed_from_training(hygiene_run: dict[str, Any]) -> None:
    dedupe, lines = hygiene_run["report"]["dedupe"], hygiene_run["lines"]
    assert dedupe["groups"] == [
        {"kept_line": lines["near_a"], "dropped": [{"line": lines["near_b"], "jaccard": pytest.approx(0.9, abs=0.1)}]}
    ]
    assert [(k["split"], k["held_out_line"], k["train_line"]) for k in dedupe["leaks"]] == [("test", 1, lines["leaked"])]
    train = (hygiene_run["out"] / "data" / "train.jsonl").read_text(encoding="utf-8")
    assert train.count("weekly change request") == 1 and "monthly change" not in train
    assert "yearly" not in train
    assert train.count("An exact duplicate row") == 1
    test = (hygiene_run["out"] / "data" / "test.jsonl").read_text(encoding="utf-8")
    assert "annual change request" in test  # held-out sets stay as they are
    lengths = hygiene_run["report"]["lengths"]
    assert lengths["unit"].startswith("tokens") and lengths["train"]["max"] >= lengths["train"]["p95"]
    assert lengths["train"]["cut_examples"] >= 1  # the long rows exceed max_seq_length 96
    report_md = (hygiene_run["out"] / "report.md").read_text(encoding="utf-8")
    assert "## Data hygiene" in report_md


def test_fail_policy_exits_2_naming_line_and_type_not_the_value(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [*chat_examples(8), chat("my key is AKIAIOSFODNN7EXAMPLE ok")]
    status, out = _run_data(tmp_path, tiny_model, rows, {})  # secret: fail by default
    err = capsys.readouterr()
    assert status == 2
    assert "train.jsonl line 9: secret in messages[0].content" in err.err
    assert "AKIAIOSFODNN7EXAMPLE" not in err.err + err.out
    assert not (out / "data" / "train.jsonl").exists()


def test_opting_out_is_reported(tiny_model: Path, tmp_path: Path) -> None:
    recipe = recipe_dict()
    recipe["data"]["pii"] = {"enabled": False}
    recipe["data"]["dedupe"] = {"enabled": False}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe), encoding="utf-8")
    data = write_jsonl(tmp_path / "d.jsonl", chat_examples(12))
    assert main(["data", "--recipe", str(tmp_path / "recipe.json"), "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "o")]) == 0
    hygiene = json.loads((tmp_path / "o" / "steps" / "data.json").read_text())["details"]["hygiene"]
    assert hygiene["pii"] == {"status": "not checked (the recipe opts out)"}
    assert hygiene["dedupe"] == {"status": "not checked (the recipe opts out)"}


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("SSN 536-22-1845 on file", True),
        ("SSN 536 22 1845 on file", True),
        ("SSN 000-22-1845", False),  # area 000 is never issued
        ("SSN 666-22-1845", False),  # nor 666
        ("SSN 912-22-1845", False),  # nor 900-999 (ITINs live there)
        ("SSN 536-00-1845", False),  # group 00
        ("SSN 536-22-0000", False),  # serial 0000
        ("SSN 078-05-1120", False),  # the Woolworth wallet card: published, nobody's
        ("ref 536-22-1845-7", False),  # part of a longer number
        ("order 536221845", False),  # nine bare digits: too often something else
        ("NI number JG 10 37 59 A", True),
        ("NI number JG103759A", True),
        ("NI number QQ 12 34 56 C", False),  # Q is never a first letter (the HMRC example)
        ("NI number AO 12 34 56 C", False),  # O is never a second letter
        ("NI number BG 12 34 56 A", False),  # BG is never allocated
        ("NI number JG 10 37 59 E", False),  # suffixes run A to D
    ],
)
def test_national_ids_follow_the_issuing_rules(text: str, found: bool) -> None:
    from gapforge_runtime.data.hygiene.patterns import find_patterns, resolve_overlaps

    hits = resolve_overlaps(find_patterns(text))
    assert any(h.type == "national_id" for h in hits) == found, hits
    if found:  # the whole id is the span, and it wins over a phone reading of the same digits
        (hit,) = [h for h in hits if h.type == "national_id"]
        assert text[hit.start : hit.end] in ("536-22-1845", "536 22 1845", "JG 10 37 59 A", "JG103759A")


def test_detection_makes_no_network_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError("network is cut (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from gapforge_runtime.data.hygiene import pii

    pii.build_presidio.cache_clear()  # build it here, under the blocked sockets
    detector = PiiDetector(presidio=True)
    text = " ".join(f"{v} and" for v in PLANTED) + " mail bob@example.net"
    found = {f.type for f in detector.find(text)}
    assert found == {"email", "phone", "card", "iban", "ip", "secret", "national_id"}
    assert detector.find("case 1641, step 2024, version 1.2.3, at 12:30:45") == []  # no false positives
    assert find_near_duplicates([LONG.format(word="a"), LONG.format(word="b")], {}).groups


def test_checksums_and_length_stats() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    stats = length_stats([10, 20, 30, 200], 96)
    assert stats == {"examples": 4, "min": 10, "median": 20, "p95": 200, "max": 200, "cut_examples": 1, "cut_tokens": 104}


def make_ner_pipeline(folder: Path) -> Path:
    """A saved spaCy pipeline (blank English + an entity ruler) that finds two names and a city:
    deterministic, no trained weights, no download; loaded from its folder like a shipped model."""
    spacy = require_module("spacy")
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([
        {"label": "PERSON", "pattern": [{"LOWER": "alice"}, {"LOWER": "marlowe"}]},
        {"label": "PERSON", "pattern": "Tomasz Wielki"},
        {"label": "GPE", "pattern": "Reykjavik"},
    ])  # fmt: skip
    nlp.to_disk(folder)
    return folder


def test_the_ner_model_finds_names_and_places_and_they_never_reach_outputs_or_logs(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ner = make_ner_pipeline(tmp_path / "ner")
    recipe = recipe_dict()
    recipe["data"]["pii"] = {"ner_model": str(ner), "policy": {"location": "drop"}}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe), encoding="utf-8")
    rows = [
        *chat_examples(12),
        chat("Please forward the receipt to Alice Marlowe today."),
        chat("The bundle for the north site.", "Tomasz Wielki signs the change request."),
        chat("Ship the drive to the Reykjavik office."),
    ]
    data = write_jsonl(tmp_path / "in" / "train.jsonl", rows)
    out = tmp_path / "out"
    status = main(["data", "--recipe", str(tmp_path / "recipe.json"), "--model", str(tiny_model),
                   "--data", str(data), "--out", str(out)])  # fmt: skip
    log = capsys.readouterr()
    assert status == 0, log.err
    pii = json.loads((out / "steps" / "data.json").read_text())["details"]["hygiene"]["pii"]
    assert pii["detectors"] == ["pattern+checksum", "presidio", "ner"]
    found = {(f["line"], f["field"], f["type"], f["action"]) for f in pii["findings"]}
    assert found == {
        (13, "messages[0].content", "person", "redacted"),
        (14, "messages[1].content", "person", "redacted"),
        (15, "messages[0].content", "location", "dropped"),
    }
    assert not any("NER" in note for note in pii["not_checked"])
    written = "".join(p.read_text(encoding="utf-8", errors="replace") for p in out.rglob("*") if p.is_file())
    for value in ("Alice Marlowe", "Tomasz Wielki", "Reykjavik"):
        assert value not in written and value not in log.out + log.err
    train = "".join((out / "data" / name).read_text() for name in ("train.jsonl", "validation.jsonl", "test.jsonl"))
    assert "forward the receipt to <PERSON> today" in train and "<PERSON> signs the change request" in train
    assert "office" not in train  # the location row was dropped by its policy
