"""Structured personal data and secrets, found by pattern and checksum (offline, no model needed).

E-mail, phone (phonenumbers, valid numbers only), IPv4/IPv6, payment cards (Luhn and known IIN
prefixes), IBANs (mod 97 and per-country length), national ids (US SSNs and UK National Insurance
numbers, by their issuing rules) and secrets. A finding holds the span and the type, never the value.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass

import phonenumbers

PLACEHOLDERS = {
    "email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP>", "card": "<CARD>", "iban": "<IBAN>",
    "secret": "<SECRET>", "person": "<PERSON>", "location": "<LOCATION>",
    "national_id": "<NATIONAL_ID>",
}  # fmt: skip
# Where spans overlap, the most specific type wins (a card number also parses as a phone number).
SPECIFICITY = (
    "secret",
    "card",
    "iban",
    "national_id",
    "email",
    "ip",
    "phone",
    "person",
    "location",
)


PHONE_REGIONS = ("US", "GB", "DE", "FR")


MIN_PHONE_DIGITS = 7


@dataclass(frozen=True, order=True)
class Finding:
    """One span of personal data in a text: where and what type, never the value itself."""

    start: int
    end: int
    type: str
    detector: str


EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b")


IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d]|\.\d)")


IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")


CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")


IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){10,32}")


SECRETS = [
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,255}\b"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)"
    ),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
]


# `api_key=VALUE`: only the value is a finding (the key name stays readable after redaction).
ASSIGNED_SECRET = re.compile(
    r"(?i)\b(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?key|token|auth[_-]?token|password|passwd)"
    r"[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9_\-+/=.]{16,})"
)


# US Social Security numbers, written with separators (`123-45-6789`, `123 45 6789`): nine bare
# digits are too often something else to call an SSN without a checksum, and SSNs have none.
US_SSN = re.compile(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])")


SSN_NOT_ISSUED = frozenset({"078-05-1120", "219-09-9999", "123-45-6789"})
"""Numbers printed on sample cards and in advertising (never anybody's) and the textbook example."""


# UK National Insurance numbers: two letters, six digits, a suffix A-D (`AB 12 34 56 C`).
UK_NINO = re.compile(r"\b([A-Z]{2}) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])\b")


NINO_NOT_ALLOCATED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


MIN_SECRET_ENTROPY = 3.5
"""Bits per character: random keys score 4.5-6, words and repeated characters far less."""


IBAN_LENGTHS = dict(
    (entry[:2], int(entry[2:]))
    for entry in [
        "AD24",
        "AE23",
        "AL28",
        "AT20",
        "AZ28",
        "BA20",
        "BE16",
        "BG22",
        "BH22",
        "BR29",
        "CH21",
        "CR22",
        "CY28",
        "CZ24",
        "DE22",
        "DK18",
        "DO28",
        "EE20",
        "EG29",
        "ES24",
        "FI18",
        "FO18",
        "FR27",
        "GB22",
        "GE22",
        "GI23",
        "GL18",
        "GR27",
        "GT28",
        "HR21",
        "HU28",
        "IE22",
        "IL23",
        "IQ23",
        "IS26",
        "IT27",
        "JO30",
        "KW30",
        "KZ20",
        "LB28",
        "LC32",
        "LI21",
        "LT20",
        "LU20",
        "LV21",
        "MC27",
        "MD24",
        "ME22",
        "MK19",
        "MR27",
        "MT31",
        "MU30",
        "NL18",
        "NO15",
        "PK24",
        "PL28",
        "PS29",
        "PT25",
        "QA29",
        "RO24",
        "RS22",
        "SA24",
        "SC31",
        "SE24",
        "SI19",
        "SK24",
        "SM27",
        "ST25",
        "SV28",
        "TL23",
        "TN24",
        "TR26",
        "UA29",
        "VA22",
        "VG24",
        "XK20",
    ]
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def known_card_prefix(digits: str) -> bool:
    """An issuer prefix (IIN) of a major network with a length that network issues."""
    n, p2, p3, p4 = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p2 in (34, 37):
        return n == 15  # American Express
    if p4 == 6011 or p2 == 65 or 644 <= p3 <= 649 or p2 == 62:
        return 16 <= n <= 19  # Discover, UnionPay
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19  # JCB
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19  # Diners Club
    return (p2 == 50 or 56 <= p2 <= 69) and 12 <= n <= 19  # Maestro


def iban_valid(compact: str) -> bool:
    """ISO 13616: the country's length and mod 97 == 1 over the rearranged number."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """The SSA's rules: area not 000, 666 or 900-999; group not 00; serial not 0000; not one of the
    published sample numbers."""
    if area in ("000", "666") or area >= "900" or group == "00" or serial == "0000":
        return False
    return f"{area}-{group}-{serial}" not in SSN_NOT_ISSUED


def nino_valid(prefix: str) -> bool:
    """HMRC's prefix rules: first letter not D, F, I, Q, U or V; second not those or O; not one of
    the prefixes never allocated."""
    first, second = prefix[0], prefix[1]
    if first in "DFIQUV" or second in "DFIQUVO":
        return False
    return prefix not in NINO_NOT_ALLOCATED


def _national_ids(text: str) -> list[Finding]:
    found = [
        Finding(m.start(), m.end(), "national_id", "pattern")
        for m in US_SSN.finditer(text)
        if ssn_valid(m.group(1), m.group(3), m.group(4))
    ]
    found += [
        Finding(m.start(), m.end(), "national_id", "pattern")
        for m in UK_NINO.finditer(text)
        if nino_valid(m.group(1))
    ]
    return found


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s own character distribution."""
    counts = Counter(value)
    return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


def digit_count(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def _emails(text: str) -> list[Finding]:
    return [Finding(m.start(), m.end(), "email", "pattern") for m in EMAIL.finditer(text)]


def _ips(text: str) -> list[Finding]:
    found = []
    for pattern, parse in ((IPV4, ipaddress.IPv4Address), (IPV6, ipaddress.IPv6Address)):
        for m in pattern.finditer(text):
            candidate = m.group()
            if parse is ipaddress.IPv6Address and sum(c.isalnum() for c in candidate) < 4:
                continue  # "::" or "a::b" in prose is not worth a finding
            try:
                parse(candidate)
            except ValueError:
                continue
            found.append(Finding(m.start(), m.end(), "ip", "pattern"))
    return found


def _cards(text: str) -> list[Finding]:
    found = []
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and known_card_prefix(digits) and luhn_valid(digits):
            found.append(Finding(m.start(), m.end(), "card", "pattern"))
    return found


def _ibans(text: str) -> list[Finding]:
    found = []
    for m in IBAN.finditer(text):
        want = IBAN_LENGTHS.get(m.group()[:2])
        if want is None:
            continue
        # The pattern may run on into a following upper-case word: cut at the country's length.
        kept, end = 0, m.start()
        for end in range(m.start(), m.end()):
            kept += text[end] != " "
            if kept == want:
                break
        compact = text[m.start() : end + 1].replace(" ", "")
        if kept == want and iban_valid(compact):
            found.append(Finding(m.start(), end + 1, "iban", "pattern"))
    return found


def _phones(text: str) -> list[Finding]:
    found = set()
    for region in PHONE_REGIONS:
        for match in phonenumbers.PhoneNumberMatcher(text, region, phonenumbers.Leniency.VALID):
            # Short numbers ("1641") are valid in some regions but are not worth a finding.
            if digit_count(match.raw_string) >= MIN_PHONE_DIGITS and phonenumbers.is_valid_number(
                match.number
            ):
                raw = match.raw_string  # may carry the whitespace before the number
                start = match.start + len(raw) - len(raw.lstrip())
                found.add(Finding(start, match.start + len(raw.rstrip()), "phone", "pattern"))
    return sorted(found)


def _secrets(text: str) -> list[Finding]:
    found = [
        Finding(m.start(), m.end(), "secret", "pattern")
        for pattern in SECRETS
        for m in pattern.finditer(text)
    ]
    for m in ASSIGNED_SECRET.finditer(text):
        if shannon_entropy(m.group(1)) >= MIN_SECRET_ENTROPY:
            found.append(Finding(m.start(1), m.end(1), "secret", "pattern"))
    return found


def find_patterns(text: str) -> list[Finding]:
    """Every finding of our own pattern-and-checksum detectors (overlaps not yet resolved)."""
    found = _emails(text) + _secrets(text)
    if "." in text or ":" in text:
        found += _ips(text)
    if digit_count(text) >= 6:  # a UK NINO has six digits, a US SSN nine
        found += _national_ids(text)
    if digit_count(text) >= MIN_PHONE_DIGITS:  # phones, cards and IBANs all need that many digits
        found += _cards(text) + _ibans(text) + _phones(text)
    return found


def resolve_overlaps(findings: list[Finding]) -> list[Finding]:
    """One finding per span: the most specific type first, then the longer span, wins."""
    ranked = sorted(findings, key=lambda f: (SPECIFICITY.index(f.type), f.start - f.end, f.start))
    kept: list[Finding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept)


def redact(text: str, findings: list[Finding]) -> str:
    """`text` with each (non-overlapping) finding replaced by its typed placeholder."""
    parts, at = [], 0
    for f in sorted(findings):
        parts += [text[at : f.start], PLACEHOLDERS[f.type]]
        at = f.end
    return "".join(parts) + text[at:]
