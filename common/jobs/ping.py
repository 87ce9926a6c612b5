"""The ``ping`` job kind: sleeps and reports progress (a smoke test of the queue; test-only faults).

Usage::

    jobs.submit(session_factory, publisher, settings, owner=user, kind="ping", params={"seconds": 1})
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.jobs.kinds import JobKind
from common.models import User
from common.platform.config import Settings
from common.platform.errors import UserError


class PingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=1.0, ge=0, le=600, description="how long the job runs")
    steps: int = Field(default=5, ge=1, le=100, description="how many progress reports it makes")
    # test-only faults, refused unless LATENTLAB_FAULT_INJECTION is on
    fault: Literal["none", "crash", "hang", "error"] = "none"


def _prepare_ping(session, params: PingParams, owner: User, settings: Settings) -> None:
    if params.fault != "none" and not settings.fault_injection:
        raise UserError(
            "'fault' is only accepted when LATENTLAB_FAULT_INJECTION is on.", field="params.fault"
        )


KINDS = (JobKind("ping", "interactive", PingParams, prepare=_prepare_ping),)
