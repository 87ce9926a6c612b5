"""The kind table: every job kind latentlab runs, built explicitly from each module's exported ``KINDS``.

Nothing registers itself on import; ``common.jobs.kinds.kind_table`` loads ``KINDS`` from here the first
time any process (web, worker, reaper, CLI) asks for a kind, so a process that only reaps still runs a
kind's ``on_failed`` hook. To add a kind, export it in its module's ``KINDS`` and list the module below.

Usage::

    from common.research.kinds import KINDS
    KINDS["fit_embedding"].queue   # 'embed'
"""

from __future__ import annotations

from common.jobs import ping
from common.jobs.kinds import JobKind
from common.research import datasets, embeddings, generations, sweeps

KINDS: dict[str, JobKind] = {
    kind.name: kind for module in (ping, datasets, embeddings, generations, sweeps) for kind in module.KINDS
}
