"""Normalisation and SHA-256 hashing of user data, per TikTok's rules (SPEC §3.3).

Every function returns None for an empty or invalid value: such values are omitted, never hashed.
A value that is already a SHA-256 hex digest passes through hashing unchanged (lower-cased).
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache

import phonenumbers

Normaliser = Callable[[str], str | None]

_SHA256_HEX = re.compile(r"[A-Fa-f0-9]{64}")
_NOT_LETTER_OR_DIGIT = re.compile(r"[\W_]+")
_ZIP_NOISE = re.compile(r"[\s-]+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_CURRENCY = re.compile(r"[A-Z]{3}")
_CHINA = 86  # TikTok: numbers with country code 86 are sent as the national number, without the code
# A larger magnitude is no price, quantity or value; the bound keeps sums finite (requests are strict JSON).
MAX_NUMBER = 1e15
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})


def text(value: object) -> str | None:
    """A non-empty, trimmed string from a string or a number; None for anything else."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    return None


def number(value: object) -> int | float | None:
    """A number of magnitude at most MAX_NUMBER from a number or a numeric string; None otherwise (booleans
    are not numbers, nor NaN and infinities)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -MAX_NUMBER <= value <= MAX_NUMBER else None
    if isinstance(value, float | str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        if -MAX_NUMBER <= parsed <= MAX_NUMBER:  # False for NaN too
            return parsed
    return None


def flag(value: object) -> bool | None:
    """A boolean from `true`/`false`, 1/0 and the usual spellings (`"yes"`, `"on"`, `"1"`...); None for
    anything else, so the next source or the deployment's default applies."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return True if value == 1 else False if value == 0 else None
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else None
    return None


def currency(value: object) -> str | None:
    """An ISO 4217 code in upper case, e.g. `usd` -> `USD`."""
    code = text(value)
    code = code.upper() if code else None
    return code if code and _CURRENCY.fullmatch(code) else None


def email(value: str) -> str | None:
    """Trimmed and lower-cased; None without a single `@` between non-empty parts."""
    address = value.strip().lower()
    return address if _EMAIL.fullmatch(address) else None


@lru_cache(maxsize=1024)
def phone(value: str, region: str | None) -> str | None:
    """E.164 with the `+` (`+14155550100`); national numbers are read in `region` (e.g. "US").

    Numbers of an impossible length for their country are dropped. (Validity against the numbering plan
    is not required: TikTok's own reference vector uses a fictional +1 555 number.) Parsing costs ~50 µs,
    so recent results are cached in process memory (never written anywhere).
    """
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def phone_hash_input(e164: str) -> str:
    """The string TikTok expects hashed for an E.164 number: without `+86` for Chinese numbers."""
    prefix = f"+{_CHINA}"
    return e164[len(prefix) :] if e164.startswith(prefix) else e164


def external_id(value: str, *, lowercase: bool = False) -> str | None:
    """Trimmed; case is kept unless `lowercase`."""
    trimmed = value.strip()
    return (trimmed.lower() if lowercase else trimmed) or None


def letters_digits(value: str) -> str | None:
    """Lower case with everything but letters and digits removed; non-ASCII letters are kept (NFC).

    The rule for first/last names (hashed) and for city, state and country (sent in clear).
    """
    return _NOT_LETTER_OR_DIGIT.sub("", unicodedata.normalize("NFC", value).lower()) or None


def zip_code(value: str) -> str | None:
    """Lower case without whitespace and `-`."""
    return _ZIP_NOISE.sub("", value.lower()) or None


def is_sha256(value: str) -> bool:
    return _SHA256_HEX.fullmatch(value) is not None


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hashed(value: object, normalise: Normaliser) -> str | None:
    """SHA-256 hex of the normalised value; a SHA-256 hex input passes through lower-cased; None when empty
    or invalid."""
    raw = text(value)
    if raw is None:
        return None
    if is_sha256(raw):
        return raw.lower()
    normalised = normalise(raw)
    return sha256_hex(normalised) if normalised else None


def hashed_many(value: object, normalise: Normaliser) -> str | list[str] | None:
    """`hashed` for a single value, or for each element of a list (invalid ones dropped, duplicates once)."""
    if not isinstance(value, list):
        return hashed(value, normalise)
    digests = [digest for digest in (hashed(item, normalise) for item in value) if digest]
    return list(dict.fromkeys(digests)) or None
