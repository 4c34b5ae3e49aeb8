"""Email addresses and phone numbers out of forwarded free text (SPEC §4.2): pure functions, no I/O.

Ingest passes every free-text value it forwards through a `Scrubber` before the event is queued:
`page.url` and `page.referrer` through `Scrubber.url`; search queries, descriptions, order ids, content
names and the user agent through `Scrubber.text`. Both return the scrubbed value and notes for `--explain`
that say what was scrubbed and where, never a value. A value with nothing to scrub comes back unchanged
(the same object, no notes).

What is scrubbed:
- an email address `local@domain.tld`, also with a percent-encoded `@` (`%40`) or percent-encoded as a whole;
- an international phone number: `+` (or `%2B`) and at least 7 digits, which may be separated by spaces
  (or `%20`), dots, dashes or parentheses (`+44 (0)20 7946-0958`). National numbers (no `+`) and the `00`
  prefix are not recognised: they cannot be told from order ids, timestamps and prices;
- in a URL: every query parameter (also in the fragment: `#email=...`) whose name is PII (`email`, `phone`,
  `first_name`, `token`, ...: configurable), whatever its value, and every one whose name or value holds an
  email address or a phone number, is removed; emails and phones elsewhere (path, fragment) are replaced by
  `MARKER`; user info (`https://user:password@host/`) is removed. The rest is kept byte for byte (nothing is
  re-encoded or reordered). A malformed URL is scrubbed as text: nothing here raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

MARKER = "redacted"
EMAIL = "email address"
PHONE = "phone number"

# Query parameter names that are PII whatever their value, as `parameter_key` writes them (`first_name`,
# `First-Name` and `firstName` are all `firstname`). Tokens are credentials rather than PII, but a
# password-reset or sign-in link must not reach a third party either. Click ids (`ttclid`, `ttp`, `fbclid`,
# `gclid`) and `utm_*` are not here.
DEFAULT_PII_PARAMETERS: frozenset[str] = frozenset(
    {
        "email", "mail", "emailaddress",
        "phone", "phonenumber", "tel", "telephone", "mobile", "cell",
        "name", "firstname", "lastname", "fullname", "fname", "lname", "surname", "username",
        "address", "street", "zip", "zipcode", "postalcode", "postcode",
        "dob", "birthday", "birthdate", "ssn",
        "password", "passwd", "pass", "pwd",
        "token", "accesstoken", "idtoken", "authtoken", "refreshtoken", "resettoken",
    }
)  # fmt: skip
# A parameter whose key contains one of these is PII too (`customer_email`, `billing_phone`).
DEFAULT_PII_PARAMETER_PARTS: frozenset[str] = frozenset({"email", "phone"})

_NOT_ALNUM = re.compile(r"[\W_]+")
# A character of an email's local part: anything but whitespace, `@` and what delimits an address in text
# (`<jane@example.com>`, `(...)`, `"..."`, `a, b; c`) or a path (`/`: `tiktok.com/@handle` is no email);
# so RFC 5322's `atext` but `/`. `%` is one: `jane%40example.com` and percent-encoded local parts are found.
_LOCAL = r"[^\s@<>()\[\],;:\"\\/]"
_DOMAIN = r"(?:[\w-]+\.)+[^\W\d_][\w-]+"
# The match starts where a run of local characters starts (the look-behind), which keeps the search linear;
# `jane@example.com@example.com` is one match.
_EMAIL = re.compile(rf"(?<!{_LOCAL}){_LOCAL}+(?:(?:@|%40){_DOMAIN})+")
# `+`, then digits separated by at most 3 of: whitespace . - ( ) (a `%20` is found once decoded)
_PHONE = re.compile(r"(?:\+|%2[Bb])[\s.\-()]{0,3}+\d(?:[\s.\-()]{0,3}+\d)*+")  # and see `_is_phone`
_PHONE_MIN_DIGITS = 7
_DECODINGS = 3  # rounds of percent-decoding looked through
_CACHED_NAME_LENGTH, _CACHED_NAMES = 64, 4096
_SCHEME_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://([^/]*)")
_PAIR_SEPARATOR = re.compile(r"([&;])")
_ESCAPE = re.compile("%[0-9A-Fa-f]{2}")
_WHITESPACE = re.compile(r"(\s+)")
_PATH_SEGMENTS = re.compile("(/)")
# A parameter name that may appear in a note: no `@`, no `+`, no run of 5 digits, not too long.
_SAFE_NAME = re.compile(r"(?!.*\d{5})[A-Za-z_][A-Za-z0-9_.\-\[\]]{0,39}")
_UNSAFE_NAME = "with an unusual name"


def parameter_key(name: str) -> str:
    """A parameter name as `Scrubber.parameters` holds it: lower case, letters and digits only."""
    return _NOT_ALNUM.sub("", name.lower())


def _may_hold_pii(value: str) -> bool:
    """False when `value` cannot hold an email address or a phone number, raw or percent-encoded."""
    return "@" in value or "+" in value or "%" in value


def _is_phone(value: str, match: re.Match[str]) -> bool:
    """Whether a `_PHONE` match in `value` is a phone number: enough digits, and not right after a digit
    (`size+10+12345678` in a query string, `1700000000+1234567`)."""
    start, candidate = match.start(), match.group()
    if start and value[start - 1].isdecimal():
        return False
    digits = unquote(candidate) if "%" in candidate else candidate
    return sum(map(str.isdecimal, digits)) >= _PHONE_MIN_DIGITS


def _replace(value: str) -> tuple[str, set[str]]:
    """`value` with every email address and phone number (raw or with a percent-encoded `@`/`+`) replaced."""
    kinds: set[str] = set()
    if "+" in value or "%2" in value:  # phones first: `jane+15551234567@example.com` is then one email
        original = value

        def phone(match: re.Match[str]) -> str:
            if _is_phone(original, match):
                kinds.add(PHONE)
                return MARKER
            return match.group()

        value = _PHONE.sub(phone, value)
    if "@" in value or "%40" in value:
        value, count = _EMAIL.subn(MARKER, value)
        if count:
            kinds.add(EMAIL)
    return value, kinds


def _found(value: str) -> set[str]:
    """The kinds of PII in `value` (percent-decoded already, or never encoded)."""
    kinds = set()
    if ("@" in value or "%40" in value) and _EMAIL.search(value):
        kinds.add(EMAIL)
    if ("+" in value or "%2" in value) and any(_is_phone(value, m) for m in _PHONE.finditer(value)):
        kinds.add(PHONE)
    return kinds


def _decoded(value: str) -> str | None:
    """`value` percent-decoded, or None when it has no percent escape."""
    return unquote(value) if "%" in value and _ESCAPE.search(value) else None


def _found_decoded(value: str) -> set[str]:
    """The kinds of PII that show in `value` once percent-decoded, once or more (a redirect URL inside a
    redirect URL is encoded twice)."""
    kinds: set[str] = set()
    for _ in range(_DECODINGS):
        decoded = _decoded(value)
        if decoded is None:
            break
        kinds |= _found(decoded)
        value = decoded
    return kinds


def _redact(value: str, pieces: re.Pattern[str]) -> tuple[str, set[str]]:
    """`_replace`, then, if PII shows only once percent-decoded (`jane@ex%61mple.com`), each piece that holds
    some is replaced (`pieces` splits `value`, keeping separators), or the whole value if PII spans pieces."""
    if not _may_hold_pii(value):
        return value, set()
    value, kinds = _replace(value)
    found = _found_decoded(value)
    if not found:
        return value, kinds
    parts = pieces.split(value)
    for index in range(0, len(parts), 2):
        if _found_decoded(parts[index]):
            parts[index] = MARKER
    value = "".join(parts)
    return (MARKER if _found_decoded(value) else value), kinds | found


def _notes(kinds: set[str], where: str = "") -> list[str]:
    suffix = f" in {where}" if where else ""
    return [kind + suffix for kind in (EMAIL, PHONE) if kind in kinds]


def _kinds(kinds: set[str]) -> str:
    return " and ".join(_notes(kinds))


_LISTED = "listed"  # a query parameter that is PII by its name (when it has a value)
_HOLDS_PII = "holds PII"  # a query parameter whose name holds an email address or a phone number


def _parameter_name(raw: str, parameters: frozenset[str], parts: frozenset[str]) -> tuple[str | None, str]:
    """What a query parameter name (as it is in the URL) is: `_LISTED`, `_HOLDS_PII` or None, and how a note
    names the parameter: by its name when that is safe to show, else by its key if listed, else vaguely."""
    name = unquote(raw.replace("+", " "))
    if _may_hold_pii(raw) and (kinds := _found(name) | _found_decoded(name)):
        return _HOLDS_PII, f"{_UNSAFE_NAME} ({_kinds(kinds)} in its name)"
    key = parameter_key(name)
    label = name if _SAFE_NAME.fullmatch(name) else key if key in parameters else _UNSAFE_NAME
    return (_LISTED if key in parameters or any(part in key for part in parts) else None), label


@dataclass(frozen=True)
class Scrubber:
    """Removes email addresses, phone numbers and PII query parameters from free text and URLs.

    `parameters` are query parameter names that are PII whatever their value, and `parameter_parts` are parts
    of such names; both are compared as `parameter_key` writes them (given in any spelling).
    """

    parameters: frozenset[str] = DEFAULT_PII_PARAMETERS
    parameter_parts: frozenset[str] = DEFAULT_PII_PARAMETER_PARTS
    # `_parameter_name` verdicts of the (short) names seen: names repeat from event to event. Kept in process
    # memory only, never written anywhere.
    _names: dict[str, tuple[str | None, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in ("parameters", "parameter_parts"):
            object.__setattr__(self, name, frozenset(map(parameter_key, getattr(self, name))) - {""})

    def text(self, value: str) -> tuple[str, tuple[str, ...]]:
        """Free text with its email addresses and phone numbers replaced by `MARKER`; notes say which."""
        if not _may_hold_pii(value):
            return value, ()
        scrubbed, kinds = _redact(value, _WHITESPACE)
        if not kinds:
            return value, ()
        return scrubbed, tuple(_notes(kinds))

    def url(self, value: str) -> tuple[str, tuple[str, ...]]:
        """A URL without PII query parameters, emails and phones; notes say what was scrubbed where."""
        if not (_may_hold_pii(value) or "=" in value):
            return value, ()
        notes: list[str] = []
        rest, hash_, fragment = value.partition("#")
        head, question, query = rest.partition("?")
        head = self._head(head, notes)
        if question:
            scrubbed_query = self._query(query, "query", notes)
            question = "?" if scrubbed_query or not query else ""
            query = scrubbed_query
        if hash_:
            scrubbed_fragment = self._fragment(fragment, notes)
            hash_ = "#" if scrubbed_fragment or not fragment else ""
            fragment = scrubbed_fragment
        if not notes:
            return value, ()
        return head + question + query + hash_ + fragment, tuple(dict.fromkeys(notes))

    def _head(self, head: str, notes: list[str]) -> str:
        """Scheme, authority and path: user info removed, emails and phones replaced."""
        if not _may_hold_pii(head):
            return head
        authority = _SCHEME_AUTHORITY.match(head)
        if authority and "@" in authority.group(1):
            user_info = authority.group(1).rpartition("@")[0]
            start = authority.start(1)
            head = head[:start] + head[start + len(user_info) + 1 :]
            notes.append("user info")
        head, kinds = _redact(head, _PATH_SEGMENTS)
        notes.extend(_notes(kinds, "path"))
        return head

    def _fragment(self, fragment: str, notes: list[str]) -> str:
        """A fragment: a query (`#a=1&email=...`), a path, or a path and a query (`#/thanks?email=...`)."""
        path, question, query = fragment.partition("?")
        if not question and "=" in fragment:
            path, query = "", fragment
        path, kinds = _redact(path, _PATH_SEGMENTS)
        notes.extend(_notes(kinds, "fragment"))
        if not query:
            return path + question
        scrubbed = self._query(query, "fragment", notes)
        if not question:
            return scrubbed
        return path + question + scrubbed if scrubbed else path

    def _query(self, query: str, where: str, notes: list[str]) -> str:
        """`query` without the parameters `_pii_parameter` finds; the others kept byte for byte."""
        if ";" in query:  # also a separator for some servers: split on both, keep each separator
            parts = _PAIR_SEPARATOR.split(query)
            pairs, separators = parts[::2], ["", *parts[1::2]]
        else:
            pairs, separators = query.split("&"), []
        kept = []
        for index, pair in enumerate(pairs):
            note = self._pii_parameter(pair)
            if note is None:
                kept.append(index)
            else:
                notes.append(f"{where} parameter {note}")
        if len(kept) == len(pairs):
            return query
        if not separators:
            return "&".join(pairs[index] for index in kept)
        # each parameter kept with the separator before it, but the first one without
        joined = "".join(separators[index] + pairs[index] for index in kept)
        return joined[len(separators[kept[0]]) :] if kept else ""

    def _name_verdict(self, raw: str) -> tuple[str | None, str]:
        """`_parameter_name`, remembered."""
        verdict = _parameter_name(raw, self.parameters, self.parameter_parts)
        if len(raw) <= _CACHED_NAME_LENGTH:
            if len(self._names) >= _CACHED_NAMES:
                self._names.clear()
            self._names[raw] = verdict
        return verdict

    def _pii_parameter(self, pair: str) -> str | None:
        """Why the `name=value` pair is PII (a value-free note that names the parameter), or None."""
        raw_name, equals, raw_value = pair.partition("=")
        verdict, label = self._names.get(raw_name) or self._name_verdict(raw_name)
        if verdict == _HOLDS_PII or (verdict == _LISTED and equals):
            return label
        if raw_value and ("@" in raw_value or "+" in raw_value or "%" in raw_value):
            value = unquote(raw_value.replace("+", " "))
            kinds = _found(value) | _found_decoded(value)
            # an unencoded `+` may mean a plus: `?to=+15551234567`, `?email=jane+@example.com`
            if "+" in raw_value:
                literal = unquote(raw_value)
                if ("@" in literal or "%40" in literal) and _EMAIL.search(literal):
                    kinds.add(EMAIL)
                # a phone only at the start: `size+10+12345678` is `size 10 12345678`
                if literal[0] == "+" and (match := _PHONE.match(literal)) and _is_phone(literal, match):
                    kinds.add(PHONE)
            if kinds:
                return f"{label} ({_kinds(kinds)} in its value)"
        return None
