"""Ids as users write them: the refusal of digits that are not an id as this lab spells one."""

from __future__ import annotations

from common.models.base import ID_SPELLING, is_id_text, looks_numeric
from common.platform.errors import UserError


def refuse_odd_id(text: str, field: str) -> None:
    """UserError(400) naming ``field`` when ``text`` is digits but not an id as written here: "٣" must not
    reach row 3 and "007" must not reach row 7 by a second spelling."""
    if looks_numeric(text) and not is_id_text(text):
        raise UserError(f"'{field}': {text!r} is not an id; {ID_SPELLING}.", field=field)
