"""Personal data and secrets in the training data: our own detectors (patterns.py), to which
presidio-analyzer adds its pattern/checksum recognizers on a blank spaCy pipeline; a spaCy NER
pipeline folder, when the recipe names one, adds names and places. A finding holds the span and
the type, never the value.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from gapforge_runtime.data.hygiene.patterns import (
    MIN_PHONE_DIGITS,
    PHONE_REGIONS,
    Finding,
    digit_count,
    find_patterns,
    resolve_overlaps,
)
from gapforge_runtime.errors import RuntimeFailure

PRESIDIO_TYPES = {
    "CREDIT_CARD": "card", "IBAN_CODE": "iban", "IP_ADDRESS": "ip", "PHONE_NUMBER": "phone",
}  # fmt: skip
PRESIDIO_SCORE = 0.4
NER_TYPES = {"PERSON": "person", "PER": "person", "GPE": "location", "LOC": "location"}


@functools.cache
def build_presidio() -> Any:
    """presidio's AnalyzerEngine on a blank spaCy pipeline, with its offline recognizers only.

    Never its default engine (it would download `en_core_web_lg`), and without its EmailRecognizer,
    whose tldextract fetches the public suffix list over the network: our e-mail pattern covers it.
    """
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])
    engine.nlp = {"en": spacy.blank("en")}  # loaded: AnalyzerEngine will not call load()
    registry = RecognizerRegistry(
        recognizers=[
            CreditCardRecognizer(),
            IbanRecognizer(),
            IpRecognizer(),
            PhoneRecognizer(supported_regions=list(PHONE_REGIONS)),
        ],
        supported_languages=["en"],
    )
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def load_ner(folder: str) -> Any:
    """A spaCy pipeline from a folder in the image (a path, never a package name to download)."""
    path = Path(folder)
    if not (path / "meta.json").is_file():
        raise RuntimeFailure(
            f"recipe data.pii.ner_model {folder}: not a spaCy pipeline folder (no meta.json). "
            "Ship the pipeline folder in the image, or remove ner_model."
        )
    import spacy

    return spacy.load(path)


class PiiDetector:
    """All the configured detectors behind one `find(text)`."""

    def __init__(self, presidio: bool = True, ner_model: str | None = None) -> None:
        self.presidio = build_presidio() if presidio else None
        self.ner = load_ner(ner_model) if ner_model else None
        self.detectors = ["pattern+checksum"] + ["presidio"] * presidio + ["ner"] * bool(ner_model)

    def not_checked(self) -> list[str]:
        """What these detectors cannot see, for the report."""
        missing = (
            [] if self.ner else ["person/location: no NER model in the image (data.pii.ner_model)"]
        )
        return [
            *missing,
            "national ids: US SSNs (written with separators) and UK National Insurance numbers "
            "only; other countries' ids are not recognized",
        ]

    def find(self, text: str) -> list[Finding]:
        """Every finding in `text`, one per span, most specific type kept."""
        found = find_patterns(text)
        if self.presidio is not None and digit_count(text) >= 3:
            for r in self.presidio.analyze(
                text=text,
                language="en",
                entities=list(PRESIDIO_TYPES),
                score_threshold=PRESIDIO_SCORE,
            ):
                kind = PRESIDIO_TYPES[r.entity_type]
                # presidio's phone recognizer takes short numbers ("case 1641") for phones
                if kind != "phone" or digit_count(text[r.start : r.end]) >= MIN_PHONE_DIGITS:
                    found.append(Finding(r.start, r.end, kind, "presidio"))
        if self.ner is not None:
            for ent in self.ner(text).ents:
                if ent.label_ in NER_TYPES:
                    found.append(
                        Finding(ent.start_char, ent.end_char, NER_TYPES[ent.label_], "ner")
                    )
        return resolve_overlaps(found)
