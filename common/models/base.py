"""Declarative base, naming convention and the column types every aggregate shares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from sqlalchemy import JSON, DateTime, MetaData, TypeDecorator
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# the largest id every backend can hold: the id columns are INTEGER, 32 bits on PostgreSQL (a larger
# number in a query is "integer out of range" there, a 500 before this bound)
MAX_ROW_ID = 2**31 - 1


ID_SPELLING = "write ids with the ASCII digits 0-9 and no leading zeros"


def is_id_text(text: str) -> bool:
    """``text`` is an id as this lab writes one: ASCII digits, no leading zero ("42", not "042" or "٤٢")."""
    return text.isascii() and text.isdigit() and text[0] != "0"


def looks_numeric(text: str) -> bool:
    """Digits of any script ("٣", "²", "007"): text that means a number, so never a name."""
    return text.isnumeric()


def row_id(ref: object) -> int | None:
    """``ref`` as a row id when it is an int or a string of ASCII digits (no leading zero) in range, else
    None (a name, or an id no row can have)."""
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int):
        return ref if 1 <= ref <= MAX_ROW_ID else None
    if isinstance(ref, str) and is_id_text(ref) and len(ref) <= 19:
        value = int(ref)
        return value if 1 <= value <= MAX_ROW_ID else None
    return None


def _id_spelling(value: object) -> object:
    if isinstance(value, str) and not is_id_text(value.strip()):
        raise ValueError(ID_SPELLING)
    return value


# a database id in a body or a query string: refuses what no backend can bind and other spellings of digits
RowId = Annotated[int, BeforeValidator(_id_spelling), Field(ge=1, le=MAX_ROW_ID)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}
