"""Exam results: one student, their stream's subjects and scores."""

from __future__ import annotations

import msgspec

from core.contract.dataset import Dataset, Row

# Registration numbers have at most 9 digits: inside the Postgres integer column, and a range an
# OpenAPI pattern states exactly (so fuzzers and clients know what is valid without trying).
MAX_STUDENT_ID = 999_999_999
_MAX_DIGITS = len(str(MAX_STUDENT_ID))
STUDENT_ID_PATTERN = rf"^[1-9][0-9]{{0,{_MAX_DIGITS - 1}}}$"
STUDENTS_PER_HASH = 100


def parse_student_id(raw: str) -> int | None:
    """Plain ASCII digits, no sign, no leading zero, no separators: int() alone would take
    '+5', '007', '1_000', ' 5' and non-ASCII digits, which are not registration numbers."""
    if 0 < len(raw) <= _MAX_DIGITS and raw.isascii() and raw.isdigit() and raw[0] != "0":
        student_id = int(raw)
        if student_id <= MAX_STUDENT_ID:
            return student_id
    return None


def student_slot(student_id: int, version: int) -> tuple[str, str]:
    bucket, field = divmod(student_id, STUDENTS_PER_HASH)
    return f"students:v{version}:{bucket}", str(field)


def student_unslot(key: bytes, field: bytes) -> int:
    return int(key.rsplit(b":", 1)[1]) * STUDENTS_PER_HASH + int(field)


# Formatting happens in SQL (dates as text) so both paths hand render() the same values.
_SELECT = """
SELECT s.id, s.full_name, s.sex, to_char(s.birth_date, 'YYYY-MM-DD'), s.school, s.region,
       s.stream, s.exam_year, s.total, s.max_total, s.passed, sc.subjects, sc.scores
FROM students s
CROSS JOIN LATERAL (
    SELECT array_agg(sub.name ORDER BY sub.id) AS subjects,
           array_agg(x.score ORDER BY sub.id) AS scores
    FROM student_scores x JOIN subjects sub ON sub.id = x.subject_id
    WHERE x.student_id = s.id
) sc
"""


class SubjectScore(msgspec.Struct, frozen=True):
    subject: str
    score: int


class StudentRecord(msgspec.Struct, frozen=True):
    """An exam result as served by GET /students/{id}: the JSON fields, in order."""

    id: int
    name: str
    sex: str
    birth_date: str
    school: str
    region: str
    stream: str
    exam_year: int
    scores: list[SubjectScore]
    total: int
    max_total: int
    passed: bool


_encode = msgspec.json.Encoder().encode


def render_student(row: Row) -> bytes:
    (
        sid,
        name,
        sex,
        birth_date,
        school,
        region,
        stream,
        year,
        total,
        max_total,
        passed,
        subjects,
        scores,
    ) = row
    return _encode(
        StudentRecord(
            id=sid,
            name=name,
            sex=sex,
            birth_date=birth_date,
            school=school,
            region=region,
            stream=stream,
            exam_year=year,
            scores=[
                SubjectScore(subject=subject, score=score)
                for subject, score in zip(subjects or (), scores or (), strict=True)
            ],
            total=total,
            max_total=max_total,
            passed=passed,
        )
    )


STUDENTS = Dataset(
    name="students",
    noun="student",
    id_rule=(
        f"a student id is a registration number: plain digits without sign, leading zeros or "
        f"separators, from 1 to {MAX_STUDENT_ID}"
    ),
    id_pattern=STUDENT_ID_PATTERN,
    parse_id=parse_student_id,
    slot=student_slot,
    unslot=student_unslot,
    select_one=_SELECT + "WHERE s.id = %s",
    select_all=_SELECT + "ORDER BY s.id",
    render=render_student,
    record_type=StudentRecord,
)
