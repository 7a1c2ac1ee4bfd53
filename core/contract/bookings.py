"""Ticket bookings: the booking with its event, show and zone, so a customer needs one call."""

from __future__ import annotations

import re

import msgspec

from core.contract.dataset import Dataset, Row

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
BOOKING_ID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

# Random v4 ids spread evenly over 16^4 hashes: ~8 bookings per hash at 500k, ~80 at 5M,
# inside the listpack limits whatever SURGE_BOOKINGS is.
_BUCKET_HEX_DIGITS = 4


def parse_booking_id(raw: str) -> str | None:
    """A UUID in its canonical 8-4-4-4-12 form; hex digits may be either case (RFC 9562)."""
    if len(raw) != 36:
        return None
    lowered = raw.lower()
    return lowered if _UUID.fullmatch(lowered) else None


def booking_slot(booking_id: str, version: int) -> tuple[str, str]:
    hexdigits = booking_id.replace("-", "")
    return f"bookings:v{version}:{hexdigits[:_BUCKET_HEX_DIGITS]}", hexdigits[_BUCKET_HEX_DIGITS:]


def booking_unslot(key: bytes, field: bytes) -> str:
    h = (key.rsplit(b":", 1)[1] + field).decode()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _utc(column: str) -> str:
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


# Ids, prices and times become text in SQL so both paths hand render() the same strings
# (prices keep their two decimals; times are UTC whatever the session's TimeZone).
_SELECT = f"""
SELECT b.id::text, b.user_id::text, b.status, b.confirmation_code, b.quantity,
       b.unit_price::text, b.total_price::text, b.currency,
       {_utc("b.reserved_at")}, {_utc("b.confirmed_at")}, {_utc("b.expires_at")},
       e.id::text, e.name, e.venue, e.city, sh.id::text, {_utc("sh.starts_at")},
       z.id::text, z.name
FROM bookings b
JOIN zones z ON z.id = b.zone_id
JOIN shows sh ON sh.id = z.show_id
JOIN events e ON e.id = sh.event_id
"""


class EventRef(msgspec.Struct, frozen=True):
    id: str
    name: str
    venue: str
    city: str


class ShowRef(msgspec.Struct, frozen=True):
    id: str
    starts_at: str


class ZoneRef(msgspec.Struct, frozen=True):
    id: str
    name: str


class BookingRecord(msgspec.Struct, frozen=True):
    """A booking as served by GET /bookings/{id}: the JSON fields, in order. Prices are decimal
    strings (no float rounding); times are UTC RFC 3339; confirmed_at/expires_at may be null."""

    id: str
    user_id: str
    status: str
    confirmation_code: str
    quantity: int
    unit_price: str
    total_price: str
    currency: str
    reserved_at: str
    confirmed_at: str | None
    expires_at: str | None
    event: EventRef
    show: ShowRef
    zone: ZoneRef


_encode = msgspec.json.Encoder().encode


def render_booking(row: Row) -> bytes:
    (
        bid,
        user_id,
        status,
        code,
        quantity,
        unit_price,
        total_price,
        currency,
        reserved_at,
        confirmed_at,
        expires_at,
        event_id,
        event_name,
        venue,
        city,
        show_id,
        starts_at,
        zone_id,
        zone_name,
    ) = row
    return _encode(
        BookingRecord(
            id=bid,
            user_id=user_id,
            status=status,
            confirmation_code=code,
            quantity=quantity,
            unit_price=unit_price,
            total_price=total_price,
            currency=currency,
            reserved_at=reserved_at,
            confirmed_at=confirmed_at,
            expires_at=expires_at,
            event=EventRef(id=event_id, name=event_name, venue=venue, city=city),
            show=ShowRef(id=show_id, starts_at=starts_at),
            zone=ZoneRef(id=zone_id, name=zone_name),
        )
    )


BOOKINGS = Dataset(
    name="bookings",
    noun="booking",
    id_rule="a booking id is a UUID in its 8-4-4-4-12 hexadecimal form",
    id_pattern=BOOKING_ID_PATTERN,
    parse_id=parse_booking_id,
    slot=booking_slot,
    unslot=booking_unslot,
    select_one=_SELECT + "WHERE b.id = %s::uuid",
    select_all=_SELECT + "ORDER BY b.id",
    render=render_booking,
    record_type=BookingRecord,
)
