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
# "secret", "secret key", "secret_access_key", "SECRET-ACCESS-KEY" (any case, any of " ", "_",
# "-" between the words), then an optional quote, ":", "=", "is" or "was", then the value:
# as an assignment (aws_secret_access_key = ...) or in a sentence ("the secret key is ...").
_AWS_SECRET_KEY = re.compile(
    r"(?i:secret(?:[ _-]?access)?(?:[ _-]?key)?)"
    r"[\"']?\s*(?:[:=]|(?i:is|was)\b)?\s*[\"']?"
    # Not inside a longer token; "=" may precede it (SECRET_KEY=...): it only ends base64.
    r"(?P<value>(?<![A-Za-z0-9/+])[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
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


# Cheap necessary conditions, tested before a type's pattern runs: most text holds no "@",
# no "secret" and no long digit run, and a substring test (a memchr-speed scan) costs a
# fraction of a full pattern's scan. Each must hold for every text the pattern can match.
_DIGIT = re.compile(r"\d")
_DIGIT_RUN = re.compile(r"\d[\d ()./-]{7,}\d")  # a card, an SSN and a phone each hold 9+ digits
_DOTTED_DIGITS = re.compile(r"\d\.\d")


def _has_digits(text: str) -> bool:
    # \d also matches non-ASCII digits (which the patterns accept too), so only ASCII text
    # may use the quick substring tests alone.
    return any(digit in text for digit in "0123456789") or (
        not text.isascii() and _DIGIT.search(text) is not None
    )


def _may_hold_token(text: str) -> bool:
    # gh?_ and github_pat_ need "_"; xox?- and sk- need "-"; and AIza itself.
    return (
        ("_" in text and ("gh" in text or "github_pat_" in text))
        or ("-" in text and ("xox" in text or "sk-" in text))
        or "AIza" in text
    )


_MAY_MATCH: dict[str, Callable[[str], bool]] = {
    "AWS_ACCESS_KEY": lambda text: "AKIA" in text or "ASIA" in text,
    "AWS_SECRET_KEY": lambda text: "secret" in text.lower(),
    "API_TOKEN": _may_hold_token,
    "EMAIL": lambda text: "@" in text,
    "IPV6": lambda text: text.count(":") >= 3,
    "IPV4": lambda text: "." in text and _DOTTED_DIGITS.search(text) is not None,
    "CARD": lambda text: _DIGIT_RUN.search(text) is not None,
    "SSN": lambda text: "-" in text and _DIGIT_RUN.search(text) is not None,
    "PHONE": lambda text: _DIGIT_RUN.search(text) is not None,
}
# Checked once per text, before these types' own conditions: without a digit none can match.
# (Placeholders written by earlier types hold digits, "[IPV6]", but always after a letter,
# where no digit pattern may start.)
_NEEDS_DIGITS = frozenset({"IPV4", "CARD", "SSN", "PHONE"})


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
    return _redact_into(text, found), found


def _redact_into(text: str, found: Counter[str]) -> str:
    if not text:
        return text
    has_digits = _has_digits(text)
    for pii_type in PII_TYPES:
        if (has_digits or pii_type not in _NEEDS_DIGITS) and _MAY_MATCH[pii_type](text):
            text = _substitute(text, pii_type, found)
    return text


def redact_record(record: ParsedRecord) -> tuple[ParsedRecord, Counter[str]]:
    """`record` with prompt, response and system redacted, and the counts of all three together."""
    found: Counter[str] = Counter()
    prompt = _redact_into(record.prompt, found)
    response = _redact_into(record.response, found)
    system = _redact_into(record.system, found)
    if not found:
        return record, found
    return replace(record, prompt=prompt, response=response, system=system), found
