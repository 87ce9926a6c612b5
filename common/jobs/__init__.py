"""The job system: kinds, submit and cancel, fair-share dispatch, leases, the runner, the reaper, views.

One module per concept (see docs/ARCHITECTURE.md); this package re-exports the public names so callers can
write ``from common import jobs; jobs.submit(...)``. It imports nothing from ``common.research``: the kind
table is loaded by ``common.jobs.kinds.kind_table`` on first use.
"""

from common.jobs.dispatch import DISPATCH_BATCH, dispatch, fair_order, publish
from common.jobs.kinds import JobKind, RowId, get_kind, kind_table, parse_params
from common.jobs.lease import PROGRESS_INTERVAL, Defer, JobCancelled, Lease, LeaseLost, Skip
from common.jobs.reaper import ReapReport, reap
from common.jobs.runner import WAIT_FOR_CHILDREN, Handler, JobContext, Outcome, claim, execute
from common.jobs.submit import cancel, submit
from common.jobs.terminal import settle_parent, terminate
from common.jobs.views import event_for, event_of, job_to_dict, queue_position
from common.models import utcnow as now

__all__ = [
    "DISPATCH_BATCH",
    "PROGRESS_INTERVAL",
    "WAIT_FOR_CHILDREN",
    "Defer",
    "Handler",
    "JobCancelled",
    "JobContext",
    "JobKind",
    "Lease",
    "LeaseLost",
    "Outcome",
    "ReapReport",
    "RowId",
    "Skip",
    "cancel",
    "claim",
    "dispatch",
    "event_for",
    "event_of",
    "execute",
    "fair_order",
    "get_kind",
    "job_to_dict",
    "kind_table",
    "now",
    "parse_params",
    "publish",
    "queue_position",
    "reap",
    "settle_parent",
    "submit",
    "terminate",
]


def __getattr__(name: str):
    if name == "KINDS":  # the kind table, by name (``kind_table()``)
        return kind_table()
    raise AttributeError(f"module 'common.jobs' has no attribute {name!r}")
