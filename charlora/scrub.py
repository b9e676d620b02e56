"""Personal data out of chat exports before they become training data.

Chat exports are people's private messages, and a model can repeat what it
was trained on.  `scrub` replaces e-mail addresses, phone numbers, URLs,
payment-card numbers, IBANs and @handles with typed placeholders (<EMAIL>,
<PHONE>, ...) and counts what it replaced.  Numbers are only replaced when
they check out (phone numbers valid for their country by Google's
libphonenumber, the `phonenumbers` package, or of a possible length when
written with +country code; cards by the Luhn digit; IBANs by
their mod-97 check), so years, times, prices and dates stay as written.

Measured on tests/test_scrub.py's planted fixture (docs/reliability.md).
Every pattern starts only at a token boundary (a negative look-behind), so a
long run of letters or digits is scanned once, not once per character.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

from charlora.dialogue import Line

PLACEHOLDERS = {"email": "<EMAIL>", "url": "<URL>", "iban": "<IBAN>", "card": "<CARD>", "phone": "<PHONE>",
                "handle": "<HANDLE>"}
# Numbers written without a country code are read as this country's.
DEFAULT_REGION = "US"

_EMAIL = re.compile(r"(?<![\w.+%-])[\w.+%-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*"
                    r"\.[A-Za-z]{2,24}(?![\w-])")
# Top-level domains that make a bare `word.tld` a web address.  Ones that are
# also English words or abbreviations (us, in, it, me, to, so, ...) are left
# out: "the u.s. army" is not a link.
_TLDS = ("com|org|net|edu|gov|mil|int|io|co|uk|de|fr|nl|es|ru|jp|cn|br|au|ca|ch|se|pl|eu|info|biz|ly|gg|tv|xyz|"
         "app|dev|ai|gl|ee|fm|ie|nz|online|site|shop|blog|news|club|cc|ws|be")
_URL = re.compile(
    r"(?<![\w@./-])(?:(?:https?|ftp)://|www\.)[^\s<>\"'`]+"
    rf"|(?<![\w@./-])(?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+(?:{_TLDS})(?![\w-])(?:[/?#][^\s<>\"'`]*)?",
)
_URL_TRAILER = ".,;:!?)]}'\"*_"
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_CARD = re.compile(r"(?<![\d.,-])\d(?:[ -]?\d){12,18}(?![\d-])")
_HANDLE = re.compile(r"<@[!&]?\d{5,25}>|(?<![\w@.+-])@[A-Za-z0-9_](?:[A-Za-z0-9_.]{0,29}[A-Za-z0-9_])?(?![\w@])")
_DIGITS = re.compile(r"\d")
# libphonenumber needs 7+ digits to call anything a number; fewer, skip it.
_MIN_PHONE_DIGITS = 7
# Candidates libphonenumber examines in one message; an ordinary message has
# a handful, so only a pathological one loses anything to the cap.
_MAX_PHONE_CANDIDATES = 2000


def luhn_ok(digits: str) -> bool:
    """The payment-card check digit (ISO/IEC 7812)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """The IBAN check (ISO 13616): moved country+check to the end, mod 97 == 1."""
    iban = iban.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _url(match: re.Match) -> tuple[str, str] | None:
    text = match[0]
    kept = text.rstrip(_URL_TRAILER)
    return (kept, text[len(kept):]) if kept else None


def _iban(match: re.Match) -> tuple[str, str] | None:
    text = match[0]
    # The pattern may run on into a following capitalised group; drop
    # space-separated groups from the right until the check passes.
    parts = text.split(" ")
    for end in range(len(parts), 0, -1):
        candidate = " ".join(parts[:end])
        if iban_ok(candidate):
            return candidate, text[len(candidate):]
    return None


def _card(match: re.Match) -> tuple[str, str] | None:
    digits = re.sub(r"\D", "", match[0])
    return (match[0], "") if 13 <= len(digits) <= 19 and luhn_ok(digits) else None


def _replace(text: str, pattern: re.Pattern, kind: str, counts: Counter,
             check: Callable[[re.Match], tuple[str, str] | None] | None = None) -> str:
    """Replace each match that `check` accepts (returning the part to replace
    and the rest of the match, which is kept) by its placeholder."""
    out, pos = [], 0
    for match in pattern.finditer(text):
        verdict = check(match) if check else (match[0], "")
        if verdict is None:
            continue
        _, rest = verdict
        out += [text[pos:match.start()], PLACEHOLDERS[kind], rest]
        pos = match.end()
        counts[kind] += 1
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _in_decimal(text: str, start: int, end: int, raw: str) -> bool:
    """The digits of a decimal number, which the library takes for a phone:
    "3.14159265358" (the match starts after "3."), "1.2345678901" (one point,
    five or more digits after it, where a phone written with points has 3-4)."""
    before, after = text[max(0, start - 2):start], text[end:end + 2]
    return ((len(before) == 2 and before[1] in ".," and before[0].isdigit())
            or (len(after) == 2 and after[0] in ".," and after[1].isdigit())
            or re.fullmatch(r"\d+[.,]\d{5,}", raw) is not None)


def _phones(text: str, region: str, counts: Counter) -> str:
    if len(_DIGITS.findall(text)) < _MIN_PHONE_DIGITS:
        return text
    import phonenumbers

    out, pos = [], 0
    # VALID (a number in an allocated range of its country), or merely
    # POSSIBLE (the right length) when written with a leading + : the
    # international form is evidence enough, and ranges new or reserved for
    # fiction (+44 7700 900xxx) are not "valid" to the library.
    # max_tries bounds the work on a pathological message (a megabyte of
    # digit groups took 4 s at the library's default of 65,535 candidates).
    matcher = phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE,
                                              max_tries=_MAX_PHONE_CANDIDATES)
    for match in matcher:
        if not (match.raw_string.startswith("+") or phonenumbers.is_valid_number(match.number)):
            continue
        if _in_decimal(text, match.start, match.end, match.raw_string):
            continue
        out += [text[pos:match.start], PLACEHOLDERS["phone"]]
        pos = match.end
        counts["phone"] += 1
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def scrub(text: str, region: str = DEFAULT_REGION, counts: Counter | None = None) -> str:
    """`text` with personal data replaced by placeholders; `counts` (if
    given) gains one per replacement, by kind ("email", "phone", ...).

    Order matters: e-mails before URLs (an address holds a domain), URLs
    before numbers (a link holds digits), IBANs and cards before phone
    numbers (a card is 16 digits a phone matcher might take), handles last
    (an e-mail holds an @).
    """
    counts = Counter() if counts is None else counts
    if not text:
        return text
    text = _replace(text, _EMAIL, "email", counts)
    text = _replace(text, _URL, "url", counts, _url)
    text = _replace(text, _IBAN, "iban", counts, _iban)
    text = _replace(text, _CARD, "card", counts, _card)
    text = _phones(text, region, counts)
    text = _replace(text, _HANDLE, "handle", counts)
    return text


def scrub_lines(lines: Sequence[Line], region: str = DEFAULT_REGION, counts: Counter | None = None) -> list[Line]:
    """Each line's text scrubbed (speakers are the cast, and stay)."""
    return [Line(line.speaker, scrub(line.text, region, counts), line.after_blank) for line in lines]


def check_region(region: str) -> str:
    """An ISO 3166 region code libphonenumber knows ("US", "GB", ...), upper-cased."""
    import phonenumbers

    from charlora.errors import CharloraError

    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise CharloraError(f"--phone_region must be a two-letter country code such as US, GB or DE, got {region!r}")
    return code


def describe(counts: Counter) -> str:
    """"scrubbed 3 emails, 1 phone" for the summary; "nothing" when empty."""
    names = {"email": "e-mail", "url": "URL", "iban": "IBAN", "card": "card number", "phone": "phone number",
             "handle": "@handle"}
    parts = [f"{counts[k]} {names[k]}{'s' if counts[k] != 1 else ''}" for k in PLACEHOLDERS if counts[k]]
    return ", ".join(parts) if parts else "nothing"
