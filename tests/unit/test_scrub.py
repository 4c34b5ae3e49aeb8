"""Scrubbing emails, phone numbers and PII query parameters from forwarded free text (SPEC §4.2)."""

from __future__ import annotations

import re
import string
import time
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tiktok_bridge.scrub import (
    DEFAULT_PII_PARAMETERS,
    EMAIL,
    MARKER,
    PHONE,
    Scrubber,
    parameter_key,
)

SCRUBBER = Scrubber()
JANE = "jane.doe@example.com"
JANE_PHONE = "+44 20 7946 0958"
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.109 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36 trill_320103 BytedanceWebview/d8a21c6",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]


def url(value: str) -> str:
    return SCRUBBER.url(value)[0]


def text(value: str) -> str:
    return SCRUBBER.text(value)[0]


# URLs


@pytest.mark.parametrize(
    ("raw", "scrubbed", "notes"),
    [
        (
            "https://shop.example/thanks?order=123&email=jane%40example.com&ttclid=abc",
            "https://shop.example/thanks?order=123&ttclid=abc",
            ("query parameter email",),
        ),
        (
            "https://shop.example/account/reset-password?token=8f14e45f&email=jane.doe%40example.com",
            "https://shop.example/account/reset-password",
            ("query parameter token", "query parameter email"),
        ),
        (
            "https://shop.example/thanks?Customer_Email=jane%40example.com&First-Name=Jane&utm_source=tiktok",
            "https://shop.example/thanks?utm_source=tiktok",
            ("query parameter Customer_Email", "query parameter First-Name"),
        ),
        (
            "https://shop.example/search?q=call+me+%2B44+20+7946+0958&page=2",
            "https://shop.example/search?page=2",
            ("query parameter q (phone number in its value)",),
        ),
        (
            "https://shop.example/callback?to=+15551234567&ttp=xyz",
            "https://shop.example/callback?ttp=xyz",
            ("query parameter to (phone number in its value)",),
        ),
        (
            "https://shop.example/callback?to=%2B1%20(555)%20123-4567",
            "https://shop.example/callback",
            ("query parameter to (phone number in its value)",),
        ),
        (
            "https://shop.example/login?next=%2Faccount%3Fuser%3Djane%2540example.com&lang=en",
            "https://shop.example/login?lang=en",
            ("query parameter next (email address in its value)",),
        ),
        (
            "https://shop.example/users/jane%40example.com/orders?x=1",
            "https://shop.example/users/redacted/orders?x=1",
            ("email address in path",),
        ),
        (
            "https://shop.example/u/jane@example.com",
            "https://shop.example/u/redacted",
            ("email address in path",),
        ),
        (
            "https://shop.example/call/+44-20-7946-0958",
            "https://shop.example/call/redacted",
            ("phone number in path",),
        ),
        (
            "https://shop.example/call/%2B44%2020%207946%200958/now",
            "https://shop.example/call/redacted/now",
            ("phone number in path",),
        ),
        (
            "https://shop.example/p#to:jane@example.com",
            "https://shop.example/p#to:redacted",
            ("email address in fragment",),
        ),
        (
            "https://shop.example/p#email=jane%40example.com&tab=2",
            "https://shop.example/p#tab=2",
            ("fragment parameter email",),
        ),
        (
            "https://shop.example/p#email=jane%40example.com",
            "https://shop.example/p",
            ("fragment parameter email",),
        ),
        (
            "https://shop.example/app#/thanks?phone=5551234567&ttclid=E.C.P.abc",
            "https://shop.example/app#/thanks?ttclid=E.C.P.abc",
            ("fragment parameter phone",),
        ),
        (
            "https://shop.example/cb#access_token=abc.def&state=xyz",
            "https://shop.example/cb#state=xyz",
            ("fragment parameter access_token",),
        ),
        (
            "https://jane:secret@shop.example/p?x=1",
            "https://shop.example/p?x=1",
            ("user info",),
        ),
        ("mailto:jane@example.com", "mailto:redacted", ("email address in path",)),
        (
            "https://shop.example/?jane%40example.com&x=1",
            "https://shop.example/?x=1",
            ("query parameter with an unusual name (email address in its name)",),
        ),
        (
            "https://shop.example/?a=1;phone=5551234567;b=2",
            "https://shop.example/?a=1;b=2",
            ("query parameter phone",),
        ),
    ],
)
def test_urls_lose_pii_parameters_and_emails_and_phones(
    raw: str, scrubbed: str, notes: tuple[str, ...]
) -> None:
    assert SCRUBBER.url(raw) == (scrubbed, notes)


@pytest.mark.parametrize(
    "name", ["EMAIL", "E-Mail", "e_mail", "eMail", "E.MAIL", "customer[email]", "e+mail"]
)
def test_parameter_names_are_compared_case_and_punctuation_insensitively(name: str) -> None:
    assert url(f"https://shop.example/t?{name}=x&keep=1") == "https://shop.example/t?keep=1"


def test_repeated_parameters_are_all_removed_and_noted_once() -> None:
    scrubbed, notes = SCRUBBER.url("https://s.example/t?email=a&x=1&email=b&Email=c&x=2")
    assert scrubbed == "https://s.example/t?x=1&x=2"
    assert notes == ("query parameter email", "query parameter Email")


def test_parameters_without_values() -> None:
    # a listed name without `=` carries nothing; with `=` and an empty value it goes; others stay as they are
    assert url("https://s.example/t?email&a=1&phone=&b&&c=") == "https://s.example/t?email&a=1&b&&c="


def test_everything_else_is_kept_byte_for_byte() -> None:
    raw = "HTTPS://Shop.Example:8443/a%2Fb/c;v=1?z=%7E&y=a+b&x=%e2%82%ac&email=j%40x.io&w=1&v=#Frag%20Ment"
    assert url(raw) == "HTTPS://Shop.Example:8443/a%2Fb/c;v=1?z=%7E&y=a+b&x=%e2%82%ac&w=1&v=#Frag%20Ment"


def test_a_query_emptied_loses_its_question_mark_but_an_empty_one_is_kept() -> None:
    assert url("https://s.example/t?email=a#top") == "https://s.example/t#top"
    assert url("https://s.example/u/jane@example.com?") == "https://s.example/u/redacted?"
    assert url("https://s.example/u/jane@example.com#") == "https://s.example/u/redacted#"


@pytest.mark.parametrize(
    "raw",
    [
        "https://shop.example/products/shoe-123?utm_source=tiktok&utm_medium=paid&utm_campaign=spring_sale",
        "https://shop.example/?ttclid=E.C.P.CsABkR2XnJ4f8yQ-abc_def&ttp=2Yl0aU1b2c3d&fbclid=IwAR0xyz&gclid=Cj0K",
        "https://shop.example/search?q=size+10+12345678&sort=price",  # `+` is a space: no phone
        "https://shop.example/orders/ORD-12345678?ts=2024-05-01T12:00:00%2B02:00&total=129.99",
        "https://shop.example/p?name_of_product=shoe&product_name=shoe&username_hint=",  # not listed names
        "https://shop.example/?q=%zz&r=%",
        "http://[::1",
        "%zz",
        "https://bücher.example/straße?q=größe&x=%E2%82",
        "",
        "?",
        "#",
        "=",
        "@",
        "+",
        "%",
        "https://shop.example/a@b",
        "https://www.tiktok.com/@jane.doe/video/7301234567890123456?is_from_webapp=1",  # a handle is no email
        "https://shop.example/price@2.99",
    ],
)
def test_urls_without_pii_come_back_as_the_same_object(raw: str) -> None:
    scrubbed, notes = SCRUBBER.url(raw)
    assert scrubbed is raw
    assert notes == ()


@pytest.mark.parametrize(
    ("raw", "scrubbed"),
    [
        ("http://[::1?email=jane%40example.com", "http://[::1"),
        ("http://[::1/jane@example.com", "http://[::1/redacted"),
        ("https://s.example/t?email=jane+@example.com&x=1", "https://s.example/t?x=1"),
        ("https://s.example/t?to=jane+@example.com&x=1", "https://s.example/t?x=1"),
        ("%zz?phone=%zz&x=%zz", "%zz?x=%zz"),
        ("https://bücher.example/größe?e-mail=jane@bücher.example&ä=1", "https://bücher.example/größe?ä=1"),
        ("no url at all jane@example.com", "no url at all redacted"),
    ],
)
def test_malformed_and_non_ascii_urls_are_scrubbed_as_text(raw: str, scrubbed: str) -> None:
    assert url(raw) == scrubbed


def test_the_parameter_list_is_configurable_in_any_spelling() -> None:
    scrubber = Scrubber(parameters=frozenset({"Order_ID", "promo-code"}), parameter_parts=frozenset())
    assert scrubber.parameters == frozenset({"orderid", "promocode"})
    raw = "https://s.example/t?order_id=1&PromoCode=x&email=plain&customer_email=y&ok=1"
    assert scrubber.url(raw) == (
        "https://s.example/t?email=plain&customer_email=y&ok=1",
        ("query parameter order_id", "query parameter PromoCode"),
    )
    # values are still scrubbed whatever the list
    assert scrubber.url("https://s.example/t?x=jane%40example.com")[0] == "https://s.example/t"


def test_default_parameters_are_keys_and_leave_click_ids_alone() -> None:
    assert all(parameter_key(name) == name for name in DEFAULT_PII_PARAMETERS)
    for click_id in ("ttclid", "ttp", "fbclid", "gclid", "msclkid", "utmsource", "utmcampaign"):
        assert click_id not in DEFAULT_PII_PARAMETERS
    assert {"email", "phone", "firstname", "lastname", "password", "token"} <= DEFAULT_PII_PARAMETERS


def test_notes_never_name_a_parameter_that_holds_pii() -> None:
    raw = "https://s.example/t?jane.doe%40example.com=1&%2B447911123456=&Jane+Doe%40x.io&a=" + quote(JANE)
    scrubbed, notes = SCRUBBER.url(raw)
    assert scrubbed == "https://s.example/t"
    assert notes == (
        "query parameter with an unusual name (email address in its name)",
        "query parameter with an unusual name (phone number in its name)",
        "query parameter a (email address in its value)",
    )
    for note in notes:
        assert "@" not in note and "+" not in note and "jane" not in note.lower()
        assert not re.search(r"\d{5}", note)


def test_notes_of_a_listed_name_with_odd_characters_use_its_key() -> None:
    assert SCRUBBER.url("https://s.example/t?e%20mail=1&x=1") == (
        "https://s.example/t?x=1",
        ("query parameter email",),
    )


# Free text


@pytest.mark.parametrize(
    ("raw", "scrubbed", "notes"),
    [
        ("Write to jane.doe+shop@example.co.uk today", "Write to redacted today", (EMAIL,)),
        ("call +1 (555) 123-4567, ask for Jane", "call redacted, ask for Jane", (PHONE,)),
        ("Call me: +44 20 7946 0958.", "Call me: redacted.", (PHONE,)),
        ("+4915112345678", MARKER, (PHONE,)),
        ("tel:+33.1.23.45.67.89", "tel:redacted", (PHONE,)),
        ("jane%40example.com", MARKER, (EMAIL,)),
        ("20% off for jane@ex%61mple.com", "20% off for redacted", (EMAIL,)),
        ("%2B44%207911%20123456 ok", "redacted ok", (PHONE,)),
        ("<jane@example.com>, (bob@example.org)", "<redacted>, (redacted)", (EMAIL,)),
        ("jane@example.com and +44 20 7946 0958", "redacted and redacted", (EMAIL, PHONE)),
        ("Jürgen <jürgen@bücher.de>", "Jürgen <redacted>", (EMAIL,)),
        ("jane@example.com@example.com", MARKER, (EMAIL,)),
    ],
)
def test_text_loses_emails_and_phones(raw: str, scrubbed: str, notes: tuple[str, ...]) -> None:
    assert SCRUBBER.text(raw) == (scrubbed, notes)


@pytest.mark.parametrize(
    "raw",
    [
        *USER_AGENTS,
        "ORD-12345678",
        "order 00441234567890",  # `00` prefix: not recognised (an order id as much as a phone)
        "5551234567",  # national number: not recognised
        "2024-05-01T12:00:00+02:00",
        "2024-05-01T12:00:00.123456+0000",
        "1700000000+1234567",
        "Shoes size 10 + socks, 20% off, €49.99 + VAT",
        "C++ for dummies",
        "+1 day",
        "+123456",  # 6 digits
        "@jane_doe on TikTok",
        "as seen on tiktok.com/@jane.doe",
        "price@2.99",
        "E.C.P.CsABkR2XnJ4f8yQ+abc/def=",
        "Running Shoe (Men's) 42.5",
    ],
)
def test_text_without_pii_comes_back_as_the_same_object(raw: str) -> None:
    scrubbed, notes = SCRUBBER.text(raw)
    assert scrubbed is raw
    assert notes == ()


def test_nothing_raises_nor_takes_long_on_hostile_input() -> None:
    hostile = [
        "a" * 100_000 + "@",
        "a%40" * 25_000,
        "a@" * 50_000,
        "a@" + "a." * 50_000,
        "+" + "1 " * 50_000,
        "%" * 100_000,
        "&email=" * 10_000,
        "?" + "=" * 100_000,
        "#" + "a=1&" * 10_000,
    ]
    start = time.perf_counter()
    for value in hostile:
        SCRUBBER.url(value)
        SCRUBBER.text(value)
    assert time.perf_counter() - start < 5


# Properties

_LOCAL = st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=20).filter(
    lambda local: local[0] not in ".+-"
)
_LABEL = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
_TLD = st.text(string.ascii_lowercase, min_size=2, max_size=6)
# An email's local part is cut at a `/` (`a/b@example.com` -> `a/redacted`): `tiktok.com/@handle` is no email.
# A `+` in a query string is a space: a local part of `+` alone is then no local part (`?x=+@example.com`).
_EMAILS = st.one_of(
    st.builds(
        lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
        _LOCAL,
        st.lists(_LABEL, min_size=1, max_size=3),
        _TLD,
    ),
    st.emails().filter(
        lambda email: "/" not in email.partition("@")[0] and email.partition("@")[0].strip("+")
    ),
)


@st.composite
def _phones(draw: st.DrawFn) -> str:
    """An international number as people write it: `+`, 7-15 digits, a few separators."""
    digits = draw(st.text(string.digits, min_size=7, max_size=15).filter(lambda d: d[0] != "0"))
    cuts = sorted(draw(st.sets(st.integers(1, len(digits) - 1), max_size=4)))
    groups = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
    separator = draw(st.sampled_from([" ", "-", ".", ""]))
    if draw(st.booleans()) and len(groups) > 2:
        groups[1] = f"({groups[1]})"
    return "+" + draw(st.sampled_from(["", " "])) + separator.join(groups)


# Free text around the value: no digits (which would join a phone number), nothing that is itself PII.
_AROUND = st.text(st.characters(blacklist_categories=["Nd", "Cs"], blacklist_characters="@+%"), max_size=30)


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


@given(_EMAILS, _AROUND, _AROUND)
@example(JANE, "mail me at ", " please")
def test_no_email_survives_in_text(email: str, before: str, after: str) -> None:
    scrubbed, notes = SCRUBBER.text(f"{before} {email} {after}")
    assert email not in scrubbed
    assert quote(email) not in scrubbed
    assert EMAIL in notes


@given(_EMAILS, _AROUND)
def test_no_percent_encoded_email_survives_in_text(email: str, before: str) -> None:
    scrubbed = text(f"{before} {quote(email)}")
    assert email not in scrubbed
    assert quote(email) not in scrubbed


@given(_phones(), _AROUND, _AROUND)
@example(JANE_PHONE, "call ", "")
def test_no_phone_survives_in_text(phone: str, before: str, after: str) -> None:
    scrubbed, notes = SCRUBBER.text(f"{before}{phone} {after}")
    assert phone not in scrubbed
    assert _digits(phone) not in _digits(scrubbed)
    assert notes == (PHONE,)


_URL_PLACES = [
    lambda v: f"https://shop.example/thanks?order=1&x={quote_plus(v)}&ttclid=abc",
    lambda v: f"https://shop.example/thanks?x={quote(v, safe='@+')}",
    lambda v: f"https://shop.example/thanks?x={quote(v, safe='')}#top",
    lambda v: f"https://shop.example/a/{quote(v, safe='@+()')}/b?utm_source=tt",
    lambda v: f"https://shop.example/a/{quote(v, safe='')}",
    lambda v: f"https://shop.example/a#{quote(v, safe='@+()')}",
    lambda v: f"https://shop.example/a#x={quote_plus(v)}&y=1",
    lambda v: f"https://shop.example/a#/route?x={quote(v, safe='')}",
    lambda v: "https://shop.example/r?next=" + quote("/p?who=" + quote(v, safe=""), safe=""),
    lambda v: f"https://shop.example/a?{quote_plus(v)}=1&b=2",
]


@given(st.one_of(_EMAILS, _phones()), st.sampled_from(range(len(_URL_PLACES))))
@example(JANE, 0)
@example(JANE_PHONE, 0)
def test_no_email_or_phone_survives_anywhere_in_a_url(value: str, place: int) -> None:
    is_phone = "@" not in value
    raw = _URL_PLACES[place](value)
    scrubbed, notes = SCRUBBER.url(raw)
    for form in (value, quote(value), quote(value, safe=""), quote_plus(value), quote(value, safe="@+()")):
        assert form not in scrubbed
    if is_phone:
        assert _digits(value) not in _digits(scrubbed)
    assert notes
    assert scrubbed.startswith("https://shop.example/")


@given(st.text(st.characters(blacklist_characters="@+%", blacklist_categories=["Cs"])))
def test_text_without_trigger_characters_is_the_same_object(value: str) -> None:
    assert SCRUBBER.text(value)[0] is value


@given(st.text(st.characters(blacklist_characters="@+%=", blacklist_categories=["Cs"])))
def test_urls_without_trigger_characters_are_the_same_object(value: str) -> None:
    assert SCRUBBER.url(value)[0] is value


@settings(max_examples=300)
@given(
    st.lists(st.sampled_from([*"@+%=&;?#/.:- ", "%40", "%2B", "%20", "email", "a", "Z", "1", "5"])).map(
        "".join
    )
)
def test_anything_is_scrubbed_without_raising_and_notes_hold_no_value(value: str) -> None:
    for scrub in (SCRUBBER.url, SCRUBBER.text):
        scrubbed, notes = scrub(value)
        assert isinstance(scrubbed, str)
        for note in notes:
            assert "@" not in note and "+" not in note and "%" not in note
            assert not re.search(r"\d", note)
