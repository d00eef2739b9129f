"""Keep credentials out of what llmft prints and logs, and out of what it stores in plain text.

`redact` hides the credentials a text carries (the password of `scheme://user:password@host`,
query parameters such as `X-Amz-Signature` or `token`, bearer tokens and key-looking strings);
every URI or endpoint the product prints or logs goes through it. `credential_in_value` says
whether a setting's value looks like a credential, whatever its name, so that places storing
values in plain text (KFP run parameters, PyTorchJob env) can refuse it.
`describe_validation_error` renders a pydantic error as `<location>: <message>` without the
refused value, which may be the secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

MASK = "***"

# scheme://user:password@host: the user stays (it says which account), the password goes. The
# password may itself hold '@' (badly encoded), so it runs up to the last '@' of the authority.
_URL_PASSWORD_RE = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@?#]*):(?P<password>[^/\s?#]*)@")
# Query parameters whose values are credentials: token, access_token, X-Amz-Signature,
# X-Amz-Security-Token, X-Amz-Credential, sig (Azure SAS), password, api_key, secret...
_QUERY_PARAM_RE = re.compile(r"(?P<prefix>[?&;](?P<name>[^=&;\s#]+)=)(?P<value>[^&;\s#]*)")
_CREDENTIAL_PARAM_RE = re.compile(
    r"token|secret|passw|pwd|signature|credential|session|^sig$|^auth|(?:^|[-_.]|api|access|private)key",
    re.IGNORECASE,
)
# pydantic's rendering of a ValidationError repeats the refused value (in tracebacks too).
_PYDANTIC_INPUT_RE = re.compile(r"(?P<prefix>input_value=)[^\n]*?(?=, input_type=)")
_BEARER_RE = re.compile(r"(?P<prefix>\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)

# Strings that are credentials by their form, whatever they are called. Each pattern is
# distinctive enough to hide inside free text too (log lines, error messages).
_KEY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "a PEM private key",
        re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
    ),
    ("an AWS access key id", re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])")),
    ("a Hugging Face token", re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}(?![A-Za-z0-9])")),
    (
        "a GitHub token",
        re.compile(r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"),
    ),
    (
        "a JSON Web Token",
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    ),
)
# An AWS secret access key: 40 base64 characters. Only a whole value is judged by this form
# (in free text too many things are 40 characters long); lowercase hex (a git or sha1 digest)
# and paths ('/' first or last, or '//') are not keys.
_SECRET_KEY_RE = re.compile(r"[A-Za-z0-9/+]{40}")


def redact(text: object) -> str:
    """`text` as a string with every credential it carries replaced by ***.

    `https://user:pass@host/p?X-Amz-Signature=abc&v=1` -> `https://user:***@host/p?X-Amz-Signature=***&v=1`;
    pydantic's `input_value=...` becomes `input_value=***`. Anything else stays as it was, so the
    result still names the endpoint.
    """
    result = str(text)
    for _, pattern in _KEY_PATTERNS:
        result = pattern.sub(MASK, result)
    result = _URL_PASSWORD_RE.sub(lambda m: f"{m['prefix']}:{MASK}@", result)
    result = _QUERY_PARAM_RE.sub(
        lambda m: m["prefix"] + MASK if _CREDENTIAL_PARAM_RE.search(m["name"]) and m["value"] else m[0],
        result,
    )
    result = _PYDANTIC_INPUT_RE.sub(lambda m: m["prefix"] + MASK, result)
    return _BEARER_RE.sub(lambda m: m["prefix"] + MASK, result)


def _looks_like_secret_key(value: str) -> bool:
    if not _SECRET_KEY_RE.fullmatch(value) or value[0] == "/" or value[-1] == "/" or "//" in value:
        return False
    return (
        any(c.isupper() for c in value)
        and any(c.islower() for c in value)
        and any(c.isdigit() for c in value)
    )


def credential_in_value(value: object) -> str | None:
    """What credential `value` holds ("a URL with a password", "an AWS access key id", ...), or None.

    Strings are judged by their form only, never by a name: a URL with a password, an AWS access
    key id or 40-character secret key, a Hugging Face or GitHub token, a JWT, a PEM private key,
    or a credential query parameter (a presigned URL's signature). Lists and mappings are searched.
    """
    if isinstance(value, dict):
        return next((kind for item in value.values() if (kind := credential_in_value(item))), None)
    if isinstance(value, list | tuple):
        return next((kind for item in value if (kind := credential_in_value(item))), None)
    if not isinstance(value, str):
        return None
    text = value.strip()
    for kind, pattern in _KEY_PATTERNS:
        if pattern.search(text):
            return kind
    if _URL_PASSWORD_RE.search(text):
        return "a URL with a password"
    if "://" in text and redact(text) != text:
        return "a URL with a credential in its query"
    if _looks_like_secret_key(text):
        return "a 40-character secret key"
    return None


def describe_validation_error(error: ValidationError) -> str:
    """`<location>: <message>; ...` for a pydantic error, never the refused value (it may be a secret)."""
    return "; ".join(_describe(item["loc"], item["msg"]) for item in error.errors(include_input=False))


def _describe(loc: Iterable[Any], message: str) -> str:
    location = ".".join(str(part) for part in loc)
    # Our validators' messages name the key at fault; "Value error, " is pydantic's wording.
    message = redact(message.removeprefix("Value error, "))
    return f"{location}: {message}" if location else message


class RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter and redacts the whole formatted record, tracebacks included."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def install_log_redaction() -> None:
    """Redact every record the root logger's handlers write (ours and every library's)."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter()))
