"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, SQLModel

_D = TypeVar("_D")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite drops the offset of a stored datetime, so values are normalised to UTC on the way
    in and given the UTC offset back on the way out; naive datetimes are refused rather than
    guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# One row to insert: a prepared Core insert and its values. Issuance writes its rows this
# way (the ORM's unit of work costs more than the insert itself), in the caller's session or
# batched by the group commit.
Insertion = tuple[Insert, dict[str, Any]]


def to_domain(cls: type[_D], row: SQLModel, **converted: Any) -> _D:
    """The domain record `cls` (a frozen dataclass) of `row`: each field from the row's
    attribute of the same name, JSON lists as tuples, `converted` overriding (enums)."""
    values: dict[str, Any] = {}
    for field in fields(cls):  # type: ignore[arg-type]
        value = getattr(row, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(converted)
    return cls(**values)


def row_values(record: Any) -> dict[str, Any]:
    """The column values of a domain record (a dataclass), tuples back to JSON lists."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in asdict(record).items()
    }


def overwrite_row(session: Session, row: SQLModel, values: dict[str, Any]) -> None:
    """Set `values` on `row` (loaded in `session`) and flush the change."""
    for key, value in values.items():
        setattr(row, key, value)
    session.add(row)
    session.flush()
