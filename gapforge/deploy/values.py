"""The values a generated hand-off file carries, checked once before any file is written.

Every value that reaches an sbatch script or a Kubernetes manifest comes either from the verified
bundle record or from an option the operator typed. Either can hold a newline: a newline in an
`#SBATCH` line ends the directive block early (later directives are silently dropped) and in a
shell line starts a new command. So a value with any control, format or line-separator character
is refused here, naming where it came from, and each kind of value is held to the characters its
consumer accepts. Quoting for the target language happens where the file is written.
"""

from __future__ import annotations

import re
import unicodedata

from gapforge.errors import BundleError

UNSAFE_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")
"""Control, format, surrogate, line and paragraph separators: never inside a generated line."""


class UnsafeValue(BundleError):
    """An option or a bundle field holds a value no generated file may carry (exit 2)."""


def line_value(value: object, where: str) -> str:
    """`value` as a string that stays on one line, or UnsafeValue naming `where`."""
    if not isinstance(value, str):
        raise UnsafeValue(
            f"deploy: {where}: expected a string, got {type(value).__name__} ({value!r:.60}): "
            "the bundle's documents are not what 'gapforge build' writes; ask for a new bundle"
        )
    for char in value:
        if unicodedata.category(char) in UNSAFE_CATEGORIES:
            raise UnsafeValue(
                f"deploy: {where} {value!r:.80} holds a control character (U+{ord(char):04X}): a "
                "generated sbatch line or manifest value must stay on one line, or the rest of "
                "it would be read as a new directive or command. Pass the value without it; "
                "nothing was written."
            )
    return value


def matching(value: object, pattern: str, where: str, expected: str) -> str:
    """`value` when it is one line and matches `pattern` whole, else UnsafeValue naming `where`."""
    text = line_value(value, where)
    if not re.fullmatch(pattern, text):
        raise UnsafeValue(f"deploy: {where} {text!r:.80}: expected {expected}; nothing was written")
    return text


DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
PARTITION = r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*"
"""A Slurm partition name, or a comma-separated list of them."""
FILE_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
REGISTRY = r"[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)+"
QUANTITY = r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi)"
SLURM_TIME = r"(\d+-)?\d{1,2}:\d{2}:\d{2}"
DIGEST = r"sha256:[0-9a-f]{64}"
PROFILE = r"[a-z0-9][a-z0-9_-]{0,31}"
