"""Every job kind latentlab knows, with its queue and parameter schema (imported by ``common.jobs``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.config import Settings
from common.errors import UserError
from common.jobs import JobKind, register_kind
from common.models import User


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


register_kind(JobKind("ping", "interactive", PingParams, prepare=_prepare_ping))


# the research loop's kinds register themselves on import
import common.datasets  # noqa: E402,F401
import common.embeddings  # noqa: E402,F401
import common.generations  # noqa: E402,F401
