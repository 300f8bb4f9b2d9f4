"""Deterministic CRM records for the sandbox API.

Record number ``index`` for a given ``seed`` is always the same dictionary, so tests and
benchmarks can compute the expected data without asking the server. Generation takes all
random choices from one BLAKE2b hash of ``(seed, index)`` because seeding a
``random.Random`` per record costs more than the rest of the record.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

LIFECYCLE_STAGES = ("lead", "prospect", "customer", "churned")

# Generated timestamps fall between 2023-01-01 and about 2026-10-27, so a record touched
# through the control API (updated_at = now) sorts after every generated one. The value is
# naive and means UTC, because isoformat() on a naive datetime is several times faster than
# strftime() or format_timestamp().
_CREATED_FROM = datetime(2023, 1, 1)
_CREATED_SPAN_SECONDS = 3 * 365 * 86_400
_UPDATE_SPAN_SECONDS = 300 * 86_400

_FIRST_NAMES = (
    "Ada", "Ben", "Chloé", "David", "Elif", "Farah", "Giulia", "Hannah", "Ivan", "Jonas",
    "Kenji", "Lena", "Mateo", "Nora", "Oskar", "Priya", "Quinn", "Rosa", "Samuel", "Tomás",
    "Uma", "Victor", "Wen", "Ximena", "Yusuf", "Zoë",
)  # fmt: skip
_LAST_NAMES = (
    "Andersen", "Baker", "Costa", "Dubois", "Evans", "Fischer", "García", "Hughes", "Ito",
    "Jansen", "Kowalski", "Larsen", "Müller", "Nakamura", "O'Brien", "Patel", "Rossi",
    "Schmidt", "Tanaka", "Urban", "Varga", "Weber", "Yilmaz", "Zhang",
)  # fmt: skip
_COMPANY_WORDS = (
    "Acme", "Blue Harbor", "Cedar", "Delta", "Evergreen", "Falcon", "Granite", "Horizon",
    "Ironwood", "Juniper", "Keystone", "Lighthouse", "Meridian", "Northwind", "Orbit",
    "Pinnacle", "Quarry", "Riverside", "Summit", "Tidewater",
)  # fmt: skip
_COMPANY_SUFFIXES = ("GmbH", "Ltd", "Inc.", "S.A.", "B.V.", "AB", "LLC", "& Co.")
_STREET_NAMES = (
    "Main Street", "High Street", "Station Road", "Park Avenue", "Church Lane",
    "Mill Road", "Lindenstraße", "Rue de la Paix", "Calle Mayor", "Harbour Way",
    "Market Square", "Oak Drive",
)  # fmt: skip
# City, ISO 3166-1 alpha-2 country code and postal code pattern, in which "9" is a digit and
# "A" is a letter.
_CITIES = (
    ("Berlin", "DE", "99999"),
    ("Munich", "DE", "99999"),
    ("Paris", "FR", "99999"),
    ("London", "GB", "AA9 9AA"),
    ("Dublin", "IE", "A99 A9A9"),
    ("Amsterdam", "NL", "9999 AA"),
    ("Stockholm", "SE", "999 99"),
    ("Warsaw", "PL", "99-999"),
    ("Madrid", "ES", "99999"),
    ("Zürich", "CH", "9999"),
    ("New York", "US", "99999"),
    ("Austin", "US", "99999"),
    ("Toronto", "CA", "A9A 9A9"),
    ("São Paulo", "BR", "99999-999"),
    ("Tokyo", "JP", "999-9999"),
    ("Sydney", "AU", "9999"),
)
_CHURN_REASONS = ("price", "switched_provider", "no_longer_needed", "poor_support", "other")
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"

# Stored in place of annual_revenue while encoding, then replaced by the two-decimal text.
# json.dumps escapes the NUL characters, so ordinary field values do not contain this text.
_REVENUE_MARKER = "\x00annual_revenue\x00"
_REVENUE_MARKER_JSON = json.dumps(_REVENUE_MARKER)
# One shared encoder, because json.dumps() with arguments builds a new one on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

# One BLAKE2b digest unpacked as 12 bytes and 5 unsigned 32-bit integers (32 bytes).
_DIGEST_LAYOUT = struct.Struct("<12B5I")


def _ascii_slug(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(char for char in decomposed if char.isascii() and char.isalnum())


# Lower-case ASCII forms of the names for e-mail addresses, e.g. "O'Brien" -> "obrien".
_SLUGS = {name: _ascii_slug(name) for name in _FIRST_NAMES + _LAST_NAMES}


def _fill_pattern(pattern: str, number: int) -> str:
    chars = []
    for char in pattern:
        if char == "9":
            number, digit = divmod(number, 10)
            chars.append(str(digit))
        elif char == "A":
            number, letter = divmod(number, len(_LETTERS))
            chars.append(_LETTERS[letter])
        else:
            chars.append(char)
    return "".join(chars)


def format_timestamp(moment: datetime) -> str:
    """Format a datetime as ISO 8601 UTC with whole seconds, e.g. ``2026-01-02T03:04:05Z``.

    A naive ``moment`` is taken as UTC. Fractions of a second are dropped.
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds") + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp into an aware UTC datetime, taking a naive value as UTC.

    Raises:
        ValueError: If ``text`` is not an ISO 8601 date or date-time.
    """
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def generate_record(index: int, seed: int) -> dict[str, Any]:
    """Generate CRM record number ``index`` (1-based) for ``seed``.

    Args:
        index: Record number, which is also the record's ``id``.
        seed: Dataset seed. The same ``(index, seed)`` always gives the same record.

    Returns:
        A new JSON-compatible dictionary.
    """
    digest = hashlib.blake2b(b"%d:%d" % (seed, index), digest_size=_DIGEST_LAYOUT.size).digest()
    # Each choice takes a byte or a 32-bit integer modulo the number of options. The modulo
    # makes some options slightly more likely (10/256 instead of 9/256 for 26 first names),
    # which does not matter for test data.
    (
        first_byte, last_byte, company_byte, word_byte, suffix_byte, domain_byte,
        phone_byte, city_byte, street_byte, churn_byte, stage_byte, house_byte,
        phone_number, postal_number, revenue_cents, created_offset, update_offset,
    ) = _DIGEST_LAYOUT.unpack(digest)  # fmt: skip

    first_name = _FIRST_NAMES[first_byte % len(_FIRST_NAMES)]
    last_name = _LAST_NAMES[last_byte % len(_LAST_NAMES)]

    company_name = None
    if company_byte % 5 != 0:
        word = _COMPANY_WORDS[word_byte % len(_COMPANY_WORDS)]
        company_name = f"{word} {_COMPANY_SUFFIXES[suffix_byte % len(_COMPANY_SUFFIXES)]}"

    domain = _EMAIL_DOMAINS[domain_byte % len(_EMAIL_DOMAINS)]
    email = f"{_SLUGS[first_name]}.{_SLUGS[last_name]}.{index}@{domain}"
    phone = None
    if phone_byte % 4 != 0:
        phone_number %= 10_000_000
        phone = f"+1-555-{phone_number // 10_000:03d}-{phone_number % 10_000:04d}"

    city, country, postal_pattern = _CITIES[city_byte % len(_CITIES)]
    street = f"{1 + house_byte} {_STREET_NAMES[street_byte % len(_STREET_NAMES)]}"

    # About 1 in 50 records is churned, and only churned records have a churn_reason.
    churn_reason = None
    if churn_byte % 50 == 0:
        lifecycle_stage = "churned"
        churn_reason = _CHURN_REASONS[stage_byte % len(_CHURN_REASONS)]
        is_active = False
    else:
        lifecycle_stage = LIFECYCLE_STAGES[stage_byte % 3]
        is_active = (stage_byte // 3) % 10 != 0

    created_at = _CREATED_FROM + timedelta(seconds=created_offset % _CREATED_SPAN_SECONDS)
    updated_at = created_at + timedelta(seconds=update_offset % _UPDATE_SPAN_SECONDS)

    return {
        "id": index,
        "customer_id": f"CUST-{index:06d}",
        "first_name": first_name,
        "last_name": last_name,
        "company_name": company_name,
        "contact_info": {
            "email": email,
            "phone": phone,
            "address": {
                "street": street,
                "city": city,
                "postal_code": _fill_pattern(postal_pattern, postal_number),
                "country": country,
            },
        },
        "lifecycle_stage": lifecycle_stage,
        "annual_revenue": round((revenue_cents % 50_000_000) / 100, 2),
        "is_active": is_active,
        "churn_reason": churn_reason,
        "created_at": created_at.isoformat() + "Z",
        "updated_at": updated_at.isoformat() + "Z",
    }


def encode_record(record: dict[str, Any]) -> str:
    """Encode a record as compact JSON, writing a float ``annual_revenue`` with two decimals.

    Raises:
        ValueError: If the record contains NaN or infinity.
        TypeError: If the record contains a value that JSON cannot represent.
    """
    revenue = record.get("annual_revenue")
    if type(revenue) is float and math.isfinite(revenue) and round(revenue, 2) == revenue:
        text = _ENCODER.encode({**record, "annual_revenue": _REVENUE_MARKER})
        return text.replace(_REVENUE_MARKER_JSON, f"{revenue:.2f}", 1)
    return _ENCODER.encode(record)
