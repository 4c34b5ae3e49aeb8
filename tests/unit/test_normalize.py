"""Normalisation and hashing of user data (SPEC §3.3): reference vectors, edge cases, properties."""

from __future__ import annotations

import hashlib
import unicodedata

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktok_bridge import normalize
from tiktok_bridge.normalize import Normaliser

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def us_phone(raw: str) -> str | None:
    return normalize.phone(raw, "US")


HASHED_NORMALISERS: dict[str, Normaliser] = {
    "email": normalize.email,
    "phone": us_phone,
    "external_id": normalize.external_id,
    "name": normalize.letters_digits,
    "zip_code": normalize.zip_code,
}


@pytest.mark.parametrize(
    ("raw", "normaliser", "normalised", "digest"),
    [
        (
            "coreytest1231@gmail.com",
            normalize.email,
            "coreytest1231@gmail.com",
            "eb9869a32b532840dd6aa714f7a872d21d6f650fc5aa933d9feefc64708969c7",
        ),
        (
            "+1555-555-5555",
            us_phone,
            "+15555555555",
            "910a625c4ba147b544e6bd2f267e130ae14c591b6ba9c25cb8573322dedbebd0",
        ),
        (
            "bugsbunny@warnerbros.com",
            normalize.email,
            "bugsbunny@warnerbros.com",
            "67e28cdcc3e845d3a4da05ca9fe5ddb7320a83b4cc2167f0555a3b04f63511e3",
        ),
    ],
)
def test_spec_reference_vectors(raw: str, normaliser: Normaliser, normalised: str, digest: str) -> None:
    assert normaliser(raw) == normalised
    assert normalize.hashed(raw, normaliser) == digest


def test_spec_vector_already_hashed_passes_through_lower_cased() -> None:
    digest = "67e28cdcc3e845d3a4da05ca9fe5ddb7320a83b4cc2167f0555a3b04f63511e3"
    assert normalize.hashed(digest, normalize.email) == digest
    assert normalize.hashed(digest.upper(), normalize.email) == digest
    assert normalize.hashed(f"  {digest.upper()} ", us_phone) == digest


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        ("no-at-sign.example.com", None),
        ("two@@example.com", None),
        ("@example.com", None),
        ("jane@", None),
        ("jane doe@example.com", None),
        ("   ", None),
        ("", None),
    ],
)
def test_email(raw: str, expected: str | None) -> None:
    assert normalize.email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(415) 555-0134", "US", "+14155550134"),
        ("415.555.0134", "US", "+14155550134"),
        ("+1 415 555 0134", None, "+14155550134"),
        ("020 7946 0018", "GB", "+442079460018"),
        ("+44 (0)20 7946 0018", "US", "+442079460018"),
        ("00 33 1 23 45 67 89", "FR", "+33123456789"),
        ("415 555 0134", None, None),  # national number, no default region
        ("12", "US", None),  # impossible length
        ("phone: unknown", "US", None),
        ("", "US", None),
    ],
)
def test_phone(raw: str, region: str | None, expected: str | None) -> None:
    assert normalize.phone(raw, region) == expected


def test_chinese_numbers_are_hashed_without_the_country_code() -> None:
    e164 = normalize.phone("+86 138 0013 8000", None)
    assert e164 == "+8613800138000"
    assert normalize.phone_hash_input(e164) == "13800138000"
    assert normalize.phone_hash_input("+14155550134") == "+14155550134"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Jean-Luc O'Neil ", "jeanluconeil"),
        ("ZOË", "zoë"),
        ("Jose\u0301", "josé"),  # decomposed accent: NFC keeps the letter
        ("Müller-Lüdenscheidt", "müllerlüdenscheidt"),
        ("王 小明", "王小明"),
        ("São Paulo", "sãopaulo"),
        ("New York, NY 2", "newyorkny2"),
        (" -.'_ ", None),
    ],
)
def test_letters_digits(raw: str, expected: str | None) -> None:
    assert normalize.letters_digits(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("94107-1234", "941071234"), (" SW1A 1AA ", "sw1a1aa"), ("- -", None)],
)
def test_zip_code(raw: str, expected: str | None) -> None:
    assert normalize.zip_code(raw) == expected


def test_external_id_keeps_case_unless_asked() -> None:
    assert normalize.external_id("  User-42 ") == "User-42"
    assert normalize.external_id("  User-42 ", lowercase=True) == "user-42"
    assert normalize.external_id("   ") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("usd", "USD"), (" eur ", "EUR"), ("dollars", None), ("", None), (978, None)],
)
def test_currency(raw: object, expected: str | None) -> None:
    assert normalize.currency(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(0, 0), (19.99, 19.99), ("19.99", 19.99), ("abc", None), (True, None), (None, None), ("nan", None)],
)
def test_number(raw: object, expected: float | None) -> None:
    assert normalize.number(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [(50314, "50314"), (" a ", "a"), ("", None), (False, None)])
def test_text(raw: object, expected: str | None) -> None:
    assert normalize.text(raw) == expected


@pytest.mark.parametrize("value", [None, "", "   ", True, {"email": "a@b.c"}, float("inf")])
def test_non_values_are_omitted_not_hashed(value: object) -> None:
    for normaliser in HASHED_NORMALISERS.values():
        assert normalize.hashed(value, normaliser) is None


def test_hashed_many_hashes_each_element_once_and_drops_invalid_ones() -> None:
    first, second = "a@example.com", "b@example.com"
    digests = normalize.hashed_many([first, "invalid", f" {first.upper()} ", second, None], normalize.email)
    assert digests == [normalize.sha256_hex(first), normalize.sha256_hex(second)]
    assert normalize.hashed_many(["invalid", ""], normalize.email) is None
    assert normalize.hashed_many(first, normalize.email) == normalize.sha256_hex(first)


# --- properties -------------------------------------------------------------------------------------------

hex_digests = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
normaliser_names = st.sampled_from(sorted(HASHED_NORMALISERS))


@given(st.text())
def test_normalisers_are_idempotent(raw: str) -> None:
    for normaliser in (normalize.email, normalize.letters_digits, normalize.zip_code, normalize.external_id):
        once = normaliser(raw)
        if once is not None:
            assert normaliser(once) == once


@given(normaliser_names, hex_digests)
def test_hashed_input_passes_through(name: str, digest: str) -> None:
    assert normalize.hashed(digest, HASHED_NORMALISERS[name]) == digest.lower()


@given(normaliser_names, st.one_of(st.text(), st.text(alphabet=" \t\n-.'_@()+")))
def test_nothing_empty_is_ever_hashed(name: str, raw: str) -> None:
    normaliser = HASHED_NORMALISERS[name]
    digest = normalize.hashed(raw, normaliser)
    assert digest != EMPTY_SHA256
    stripped = raw.strip()
    if digest is not None and not normalize.is_sha256(stripped):
        normalised = normaliser(stripped)
        assert normalised
        assert digest == normalize.sha256_hex(normalised)


@given(st.text(alphabet=st.characters(categories=["L", "Mn", "Nd", "P", "Zs"])))
def test_letters_digits_keeps_only_letters_and_digits(raw: str) -> None:
    normalised = normalize.letters_digits(raw)
    if normalised is not None:
        assert normalised == unicodedata.normalize("NFC", normalised)
        assert all(char.isalnum() for char in normalised)


REGIONS = sorted(
    region for region in phonenumbers.SUPPORTED_REGIONS if phonenumbers.example_number(region) is not None
)
FORMATS = [
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.E164,
]
SEPARATORS = [" ", "-", ".", "  ", " - ", "/"]


@settings(max_examples=300)
@given(
    st.sampled_from(REGIONS),
    st.sampled_from(FORMATS),
    st.lists(st.sampled_from(SEPARATORS), min_size=1, max_size=8),
    st.sampled_from(["", " ", "\t", "  "]),
)
def test_phone_numbers_in_any_format_come_out_e164(
    region: str, number_format: int, separators: list[str], padding: str
) -> None:
    example = phonenumbers.example_number(region)
    assert example is not None
    expected = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    written = phonenumbers.format_number(example, number_format)
    # Noise: each existing separator replaced by another one, and surrounding whitespace.
    parts = written.replace("-", " ").split()
    noisy = parts[0]
    for index, part in enumerate(parts[1:]):
        noisy += separators[index % len(separators)] + part
    assert normalize.phone(padding + noisy + padding, region) == expected
    assert normalize.phone(expected, None) == expected  # E.164 is a fixed point
