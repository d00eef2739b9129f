"""Find personal data and secrets in text and replace them with typed placeholders.

Pure functions over strings; curate decides what to do with the result (redact or reject).
The rules aim at high precision: a false positive destroys training text (a date, a
version, a price), while a missed phone number stays as rare as it was. Each rule is in
README.md; the tests pin one positive and the prose negatives per type.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from components.curate.formats import ParsedRecord

# Placeholder types, in the order the patterns are applied. Secrets go first because they
# contain digit runs the phone and card patterns would otherwise claim; cards and SSNs go
# before phones for the same reason.
PII_TYPES: tuple[str, ...] = (
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "API_TOKEN",
    "EMAIL",
    "IPV6",
    "IPV4",
    "CARD",
    "SSN",
    "PHONE",
)

_AWS_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
# Only the 40-character value is replaced; the key-like word before it stays so the text reads.
_AWS_SECRET_KEY = re.compile(
    r"(?i:aws_secret_access_key|aws_secret_key|secret_access_key|secret_key|secret)"
    r"[\"']?\s*[:=]?\s*[\"']?"
    r"(?P<value>(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
)
_API_TOKEN = re.compile(
    r"\b(?:"
    r"gh[pousr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{22,255}"
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"
    # OpenAI-style keys are random, so they hold a digit; "sk-learn-compatible-..." does not.
    r"|sk-(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r")(?![A-Za-z0-9_-])"
)
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b"
)
# Candidates only: hex groups and colons (optionally ending in dotted IPv4, as in ::ffff:1.2.3.4);
# `ipaddress` decides, so times (12:30:45), MAC addresses and C++ scopes are left alone.
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Not preceded by a letter, digit or dot ("v1.2.3.4", "10.1.2.3.4") nor followed by more.
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
# 4-4-4-(1..7) digit groups (one separator throughout, or none) or Amex 4-6-5; Luhn decides.
_CARD = re.compile(
    r"(?<![\d.+-])(?:\d{4}(?P<sep>[ -]?)\d{4}(?P=sep)\d{4}(?P=sep)\d{1,7}"
    r"|\d{4}(?P<amex>[ -]?)\d{6}(?P=amex)\d{5})(?!\d|[.-]\d)"
)
# Area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
_SSN = re.compile(r"(?<![\d.-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d|-\d)")
# Three phone shapes: international (+country code), North American with separators
# (555-123-4567, (555) 123-4567, 1-800-555-0199) and European national numbers with a
# leading trunk 0 (then not 0) and one kind of separator (030 1234567, 06 12 34 56 78, 020.7946.0958).
# None may touch another digit (directly or across one separator), so parts of longer
# numbers ("1 000 000 000") never match; the digit count (9-15) is checked afterwards.
_PHONE = re.compile(
    r"(?<![\w+.,/-])(?<!\d )(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{1,4}){1,5}"
    r"|(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"|0[1-9]\d{0,3}(?P<sep>[ ./-])\d{2,8}(?:(?P=sep)\d{2,8}){0,3}"
    r")(?![\w]|[ .,/-]\d)"
)
_MIN_PHONE_DIGITS = 9
_MAX_PHONE_DIGITS = 15


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (and 90% of random numbers fail)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _is_ipv6(candidate: str) -> bool:
    if candidate.count(":") < 3:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _is_card(candidate: str) -> bool:
    digits = _digits(candidate)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _is_phone(candidate: str) -> bool:
    return _MIN_PHONE_DIGITS <= len(_digits(candidate)) <= _MAX_PHONE_DIGITS


# type -> (pattern, check of the matched text or None, name of the group to replace or None).
_RULES: dict[str, tuple[re.Pattern[str], Callable[[str], bool] | None, str | None]] = {
    "AWS_ACCESS_KEY": (_AWS_ACCESS_KEY, None, None),
    "AWS_SECRET_KEY": (_AWS_SECRET_KEY, None, "value"),
    "API_TOKEN": (_API_TOKEN, None, None),
    "EMAIL": (_EMAIL, None, None),
    "IPV6": (_IPV6_CANDIDATE, _is_ipv6, None),
    "IPV4": (_IPV4, None, None),
    "CARD": (_CARD, _is_card, None),
    "SSN": (_SSN, None, None),
    "PHONE": (_PHONE, _is_phone, None),
}


def _substitute(text: str, pii_type: str, found: Counter[str]) -> str:
    pattern, check, group = _RULES[pii_type]
    placeholder = f"[{pii_type}]"

    def replace(match: re.Match[str]) -> str:
        if check is not None and not check(match.group(0)):
            return match.group(0)
        found[pii_type] += 1
        if group is None:
            return placeholder
        # Keep what surrounds the value (the "aws_secret_access_key = " before a secret).
        offset = match.start(0)
        start, end = match.span(group)
        return match.group(0)[: start - offset] + placeholder + match.group(0)[end - offset :]

    return pattern.sub(replace, text)


def redact(text: str) -> tuple[str, Counter[str]]:
    """`text` with every match replaced by `[TYPE]`, and how many of each type were replaced."""
    found: Counter[str] = Counter()
    for pii_type in PII_TYPES:
        text = _substitute(text, pii_type, found)
    return text, found


def redact_record(record: ParsedRecord) -> tuple[ParsedRecord, Counter[str]]:
    """`record` with prompt, response and system redacted, and the counts of all three together."""
    found: Counter[str] = Counter()
    fields: dict[str, str] = {}
    for name in ("prompt", "response", "system"):
        fields[name], counts = redact(getattr(record, name))
        found += counts
    return (replace(record, **fields) if found else record), found
