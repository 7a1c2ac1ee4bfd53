"""Synthetic exam results and ticket bookings, as Postgres COPY text.

Faker is slow (tens of µs a call), so it only fills small pools of names, schools and venues once;
every record then draws from those pools with `random.Random`, at well under a µs a draw. Each
chunk of records has its own Random seeded from (seed, dataset, chunk number), so the output depends
on the seed and the sizes alone, never on how or in which order the chunks are made.

Rows come out as COPY text blocks (tab-separated, one line per row): sending a few big strings
is several times faster than handing psycopg one Python tuple per row. Pool strings are checked
for COPY's special characters once, so the hot loops need no escaping.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from faker import Faker

CHUNK = 10_000
"""Records per block (and per Random): part of the data's definition, like the seed."""

FIRST_STUDENT_ID = 10_000
EXAM_YEAR = 2025
PASS_FRACTION = 0.5
"""A candidate passes with at least half of the stream's maximum total."""

_POOL = 2_048


@dataclass(frozen=True, slots=True)
class Subject:
    id: int
    name: str
    stream: str  # 'both' or the stream that sits it
    max_score: int


SUBJECTS: tuple[Subject, ...] = (
    Subject(1, "English", "both", 100),
    Subject(2, "Scholastic Aptitude", "both", 100),
    Subject(3, "Mathematics (Natural)", "natural", 100),
    Subject(4, "Physics", "natural", 100),
    Subject(5, "Chemistry", "natural", 100),
    Subject(6, "Biology", "natural", 100),
    Subject(7, "Mathematics (Social)", "social", 100),
    Subject(8, "Geography", "social", 100),
    Subject(9, "History", "social", 100),
    Subject(10, "Economics", "social", 100),
)


def stream_subjects(stream: str) -> tuple[Subject, ...]:
    return tuple(s for s in SUBJECTS if s.stream in ("both", stream))


STREAMS = ("natural", "social")
SUBJECTS_PER_STUDENT = len(stream_subjects("natural"))
assert all(len(stream_subjects(s)) == SUBJECTS_PER_STUDENT for s in STREAMS)


@dataclass(frozen=True, slots=True)
class Pools:
    """Everything Faker contributes, made once per seed."""

    female_names: tuple[str, ...]
    male_names: tuple[str, ...]
    last_names: tuple[str, ...]
    schools: tuple[tuple[str, str], ...]  # (school, region)
    events: tuple[tuple[str, str, str], ...]  # (name, venue, city)


_COPY_SPECIAL = frozenset("\t\n\r\\")


def _copy_safe(*texts: str) -> tuple[str, ...]:
    """COPY text gives tab, newline, carriage return and backslash a meaning; no pool value
    holds one (checked here, once), so the hot loops need no escaping."""
    for text in texts:
        if _COPY_SPECIAL.intersection(text):
            raise ValueError(f"pool value {text!r} would need COPY escaping")
    return texts


def _copy_safe_pair(a: str, b: str) -> tuple[str, str]:
    _copy_safe(a, b)
    return a, b


def _copy_safe_triple(a: str, b: str, c: str) -> tuple[str, str, str]:
    _copy_safe(a, b, c)
    return a, b, c


def build_pools(seed: int, events: int) -> Pools:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    regions = list(dict.fromkeys(fake.state() for _ in range(64)))[:12]  # 12 distinct
    kinds = ("High School", "Preparatory School", "Secondary School", "Academy")
    return Pools(
        female_names=_copy_safe(*(fake.first_name_female() for _ in range(_POOL))),
        male_names=_copy_safe(*(fake.first_name_male() for _ in range(_POOL))),
        last_names=_copy_safe(*(fake.last_name() for _ in range(_POOL))),
        schools=tuple(
            _copy_safe_pair(f"{fake.city()} {kinds[i % len(kinds)]}", regions[i % len(regions)])
            for i in range(_POOL)
        ),
        events=tuple(
            _copy_safe_triple(
                (
                    f"{fake.name()}: World Tour {SALE_OPENS.year}",
                    f"{fake.city()} Symphony Orchestra",
                    f"The {fake.last_name()} Brothers Live",
                )[i % 3],
                f"{fake.last_name()} Arena",
                fake.city(),
            )
            for i in range(events)
        ),
    )


def _chunk_rng(seed: int, dataset: str, chunk: int) -> random.Random:
    # A str seed is hashed with SHA-512, so this is stable across runs and Python processes.
    return random.Random(f"{seed}:{dataset}:{chunk}")


def _gaussian_table(rng: random.Random, mu: float, sigma: float, bound: int) -> list[int]:
    """4,096 pre-drawn normal integers within mu ± bound: indexing them with getrandbits(12) is
    ~10x cheaper than a gauss() call per value."""
    return [round(min(max(rng.gauss(mu, sigma), mu - bound), mu + bound)) for _ in range(4096)]


# ---------------------------------------------------------------------------------------------
# Students


def subjects_copy() -> str:
    return "".join(f"{s.id}\t{s.name}\t{s.stream}\t{s.max_score}\n" for s in SUBJECTS)


def student_ids(count: int) -> range:
    return range(FIRST_STUDENT_ID, FIRST_STUDENT_ID + count)


def student_blocks(seed: int, count: int, pools: Pools) -> Iterator[tuple[str, str, int]]:
    """(students COPY text, student_scores COPY text, students in the block) per chunk."""
    ids = student_ids(count)
    for chunk, start in enumerate(range(0, count, CHUNK)):
        block = ids[start : start + CHUNK]
        yield *_student_chunk(_chunk_rng(seed, "students", chunk), block, pools), len(block)


_BIRTH_DAYS = [
    (date(EXAM_YEAR - 21, 1, 1) + timedelta(days=d)).isoformat() for d in range(4 * 365 + 1)
]
# Any raw score (ability + noise, both bounded below, offset to stay positive) indexes straight
# into its score clamped to 0..100, so the loop needs neither min() nor max().
_SCORE_OFFSET = 200
_CLAMPED = [min(max(raw - _SCORE_OFFSET, 0), 100) for raw in range(2 * _SCORE_OFFSET + 100)]


def _student_chunk(rng: random.Random, ids: range, pools: Pools) -> tuple[str, str]:
    rand, bits = rng.random, rng.getrandbits
    # Ability is the candidate's expected score per subject (mean 50, so about half pass);
    # noise is how one paper differs from that.
    ability = _gaussian_table(rng, _SCORE_OFFSET + 50, 14, bound=50)
    noise = _gaussian_table(rng, 0, 11, bound=50)
    female_names, male_names = pools.female_names, pools.male_names
    last_names, schools = pools.last_names, [f"{s}\t{r}" for s, r in pools.schools]
    n_first, n_last, n_school = len(female_names), len(last_names), len(schools)
    n_days = len(_BIRTH_DAYS)
    streams = {}
    for stream in STREAMS:
        subjects = stream_subjects(stream)
        # "{subject}\t{score}\n" for every subject and score, so a score line is two concats.
        lines = [[f"{s.id}\t{score}\n" for score in range(s.max_score + 1)] for s in subjects]
        streams[stream] = (lines, sum(s.max_score for s in subjects))
    pass_fraction = PASS_FRACTION

    students: list[str] = []
    scores: list[str] = []
    add_student, add_score = students.append, scores.append
    for sid in ids:
        female = rand() < 0.5
        first = (female_names if female else male_names)[int(rand() * n_first)]
        stream = "natural" if rand() < 0.55 else "social"
        lines, max_total = streams[stream]
        base = ability[bits(12)]
        prefix = f"{sid}\t"
        total = 0
        for subject_lines in lines:
            score = _CLAMPED[base + noise[bits(12)]]
            total += score
            add_score(prefix + subject_lines[score])
        add_student(
            f"{prefix}{first} {last_names[int(rand() * n_last)]}\t{'F' if female else 'M'}\t"
            f"{_BIRTH_DAYS[int(rand() * n_days)]}\t{schools[int(rand() * n_school)]}\t"
            f"{stream}\t{EXAM_YEAR}\t{total}\t{max_total}\t"
            f"{'t' if total >= max_total * pass_fraction else 'f'}\n"
        )
    return "".join(students), "".join(scores)


# ---------------------------------------------------------------------------------------------
# Bookings: events -> shows -> zones, then bookings of a zone

EVENTS, SHOWS_PER_EVENT = 3, 3
CURRENCY = "USD"
SALE_OPENS = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOLD = 15 * 60
"""Seconds a pending or reserved booking holds its seats before it expires."""

# Zone name, base price in cents, base capacity.
_ZONE_KINDS = (
    ("VIP", 25_000, 500),
    ("Floor", 12_000, 4_000),
    ("Lower Tier", 8_500, 8_000),
    ("Upper Tier", 4_500, 12_000),
    ("Balcony", 3_000, 6_000),
)
# (status, weight, has confirmed_at, has expires_at): most sales go through, some holds lapse.
_STATUSES = (
    ("confirmed", 68, True, False),
    ("pending", 3, False, True),
    ("reserved", 5, False, True),
    ("cancelled", 9, False, False),
    ("expired", 11, False, True),
    ("refunded", 4, True, False),
)
_QUANTITY_WEIGHTS = (28, 38, 10, 16, 4, 4)  # 1..6 tickets: pairs and families of four are common


def event_id(event: int) -> str:
    return f"e0000000-0000-0000-0000-{event:012d}"


def show_id(show: int) -> str:
    return f"a0000000-0000-{show:04d}-0000-000000000000"


def zone_id(show: int, zone: int) -> str:
    return f"b0000000-0000-{show:04d}-{zone:04d}-000000000000"


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    show_id: str
    name: str
    price_cents: int
    capacity: int
    popularity: float


@dataclass(frozen=True, slots=True)
class Catalogue:
    events: str  # COPY text
    shows: str  # COPY text
    zones: tuple[Zone, ...]


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _timestamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S+00")


def catalogue(seed: int, pools: Pools) -> Catalogue:
    rng = _chunk_rng(seed, "catalogue", 0)
    events, shows, zones = [], [], []
    show = 0
    for event in range(1, EVENTS + 1):
        name, venue, city = pools.events[event - 1]
        events.append(f"{event_id(event)}\t{name}\t{venue}\t{city}\n")
        demand = rng.uniform(0.6, 1.4)  # some acts sell better, and cost more
        first_night = SALE_OPENS + timedelta(days=rng.randint(60, 120))
        for night in range(SHOWS_PER_EVENT):
            show += 1
            starts_at = first_night.replace(hour=19) + timedelta(days=night)
            shows.append(f"{show_id(show)}\t{event_id(event)}\t{_timestamp(starts_at)}\n")
            for zone, (zone_name, price, capacity) in enumerate(_ZONE_KINDS, start=1):
                zones.append(
                    Zone(
                        id=zone_id(show, zone),
                        show_id=show_id(show),
                        name=zone_name,
                        price_cents=round(price * demand / 100) * 100 - 1,  # 84.99, not 85.00
                        capacity=capacity,
                        popularity=capacity * demand,
                    )
                )
    return Catalogue("".join(events), "".join(shows), tuple(zones))


def zones_copy(zones: tuple[Zone, ...], tickets: list[int]) -> str:
    """Zones with a capacity that holds every ticket booked in them: the venue's base capacity,
    or the seats sold rounded up to the next hundred when the generator sold more."""
    return "".join(
        f"{z.id}\t{z.show_id}\t{z.name}\t{_money(z.price_cents)}\t"
        f"{max(z.capacity, -(-sold // 100) * 100)}\n"
        for z, sold in zip(zones, tickets, strict=True)
    )


def booking_blocks(
    seed: int, count: int, zones: tuple[Zone, ...], tickets: list[int]
) -> Iterator[tuple[str, int]]:
    """(bookings COPY text, bookings in the block) per chunk; adds each zone's tickets to
    `tickets` (one counter per zone) so the zones can be sized afterwards."""
    users = _user_ids(seed, max(1, count * 3 // 5))  # regulars book more than once
    for chunk, start in enumerate(range(0, count, CHUNK)):
        size = min(CHUNK, count - start)
        rng = _chunk_rng(seed, "bookings", chunk)
        yield _booking_chunk(rng, size, zones, users, tickets), size


def _user_ids(seed: int, count: int) -> list[str]:
    bits = _chunk_rng(seed, "users", 0).getrandbits
    return [uuid4_text(bits(128)) for _ in range(count)]


# What uuid.UUID(int=n, version=4) does to n (RFC 9562 version and variant bits), without
# building a UUID object: half the cost, in a loop that makes one per booking.
_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_V4_SET = (0x4000 << 64) | (0x8000 << 48)


def uuid4_text(random_bits: int) -> str:
    """str(uuid.UUID(int=random_bits, version=4))."""
    h = f"{random_bits & _V4_CLEAR | _V4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


NULL = "\\N"  # COPY text's NULL
_CODE_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CODE_HALVES = [a + b + c for a in _CODE_ALPHABET for b in _CODE_ALPHABET for c in _CODE_ALPHABET]
_HALF = len(_CODE_HALVES)  # 36^3: a code is two halves, picked from one number below 36^6
_SALE_DAYS = 30
_DAY = 86_400
_TIMES = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}+00" for s in range(_DAY)]
_DAYS = [(SALE_OPENS.date() + timedelta(days=d)).isoformat() for d in range(_SALE_DAYS + 2)]
_SALE_START = SALE_OPENS.hour * 3600


def _at(second: int) -> str:
    """COPY text of a timestamp `second` seconds after midnight of the sale's first day."""
    return f"{_DAYS[second // _DAY]} {_TIMES[second % _DAY]}"


def _booking_chunk(
    rng: random.Random, size: int, zones: tuple[Zone, ...], users: list[str], tickets: list[int]
) -> str:
    n_zones = len(zones)
    zone_of = rng.choices(range(n_zones), weights=[z.popularity for z in zones], k=size)
    quantity_of = rng.choices(range(1, 7), weights=_QUANTITY_WEIGHTS, k=size)
    status_of = rng.choices(_STATUSES, weights=[s[1] for s in _STATUSES], k=size)
    # Per zone and quantity: "zone\tquantity\tunit price\ttotal\tcurrency\t", so a row's money
    # columns are one lookup.
    money = [
        [
            f"{z.id}\t{q}\t{_money(z.price_cents)}\t{_money(z.price_cents * q)}\t{CURRENCY}\t"
            for q in range(7)
        ]
        for z in zones
    ]
    # Half the sales happen in the first hours after the sale opens (the spike), the rest
    # trickle in over a month.
    rush = [round(rng.expovariate(1 / 5400)) for _ in range(4096)]
    bits, rand, n_users = rng.getrandbits, rng.random, len(users)
    halves, half = _CODE_HALVES, _HALF
    out: list[str] = []
    add = out.append
    for i in range(size):
        zone, quantity = zone_of[i], quantity_of[i]
        status, _, confirmed, expires = status_of[i]
        tickets[zone] += quantity
        booking = uuid4_text(bits(128))
        if rand() < 0.5:
            offset = min(rush[bits(12)], _DAY - 1)
        else:
            offset = int(rand() * (_SALE_DAYS * _DAY))
        reserved = _SALE_START + offset
        code = bits(48) % (half * half)  # 2^48 >> 36^6: no visible modulo bias
        add(
            f"{booking}\t{users[int(rand() * n_users)]}\t{money[zone][quantity]}{status}\t"
            f"BK-{halves[code // half]}{halves[code % half]}\t{_at(reserved)}\t"
            f"{_at(reserved + 30 + bits(9)) if confirmed else NULL}\t"
            f"{_at(reserved + HOLD) if expires else NULL}\n"
        )
    return "".join(out)
