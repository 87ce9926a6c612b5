"""Ids as users write them: the refusal of digits that are not an id as this lab spells one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models.base import ID_SPELLING, is_id_text, looks_numeric, row_id
from common.platform.errors import UserError


def refuse_odd_id(text: str, field: str) -> None:
    """UserError(400) naming ``field`` when ``text`` is digits but not an id as written here: "٣" must not
    reach row 3 and "007" must not reach row 7 by a second spelling."""
    if looks_numeric(text) and not is_id_text(text):
        raise UserError(f"'{field}': {text!r} is not an id; {ID_SPELLING}.", field=field)


def find_by_id_or_name(session: Session, entity, ref: str | int, field: str):
    """The row of ``entity`` (a model with ``id`` and a unique ``name``) that ``ref`` names, by id first
    and then by name; None when there is none. Digits spelt oddly are refused (``refuse_odd_id``)."""
    row = None
    if isinstance(ref, str):
        refuse_odd_id(ref, field)
    if row_id(ref) is not None:
        row = session.get(entity, row_id(ref))
    if row is None and isinstance(ref, str):
        row = session.scalar(select(entity).where(entity.name == ref))
    return row
