"""The one terminal transition (``common.jobs.terminal.terminate``) and the kind table it asks for.

A process that only reaps (it imports the job system, never the research modules) must still run a kind's
``on_failed`` hook when it gives up on a job: the hook is found through ``common.jobs.kinds.get_kind``,
which loads the explicit table in ``common/research/kinds.py``, not through whatever the process happened
to import before. Real SQLite, a fresh interpreter, no mocks.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from common.jobs import get_kind, kind_table
from common.models import Dataset, Job
from common.platform import migrate
from common.platform.accounts import create_user
from common.platform.db import make_engine, session_factory
from tests.support.seeded_map import seed_map
from tests.support.settings import make_settings

REPO = Path(__file__).resolve().parents[2]


def test_a_reaper_only_interpreter_runs_the_failure_hook_of_a_research_kind(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    settings = make_settings(tmp_path, url)
    migrate.upgrade(settings)
    engine = make_engine(settings)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        owner = create_user(s, "ada", "ada-password").id
    lab = seed_map(sessions, settings, owner_id=owner, n=4, images=False)
    with sessions.begin() as s:
        s.get(Dataset, lab.dataset_id).status = "generating"
        job = Job(
            kind="generate_dataset",
            queue="batch",
            owner_id=owner,
            params={"dataset_id": lab.dataset_id},
            status="running",
            attempts=3,
        )
        s.add(job)
        s.flush()
        job_id = job.id
    engine.dispose()

    code = textwrap.dedent(
        f"""
        import sys
        from common.jobs.reaper import reap  # what a reaper process imports, and nothing of the research
        from common.jobs.terminal import terminate
        from common.models import Dataset, Job
        from common.platform.db import make_engine, session_factory
        from tests.support.settings import make_settings
        from pathlib import Path

        assert "common.research.datasets" not in sys.modules, "the reaper path imported the research code"
        sessions = session_factory(make_engine(make_settings(Path({str(tmp_path)!r}), {url!r})))
        with sessions.begin() as s:
            event = terminate(s, s.get(Job, {job_id}), "failed", error="gave up")
        with sessions() as s:
            print(event["status"], s.get(Dataset, {lab.dataset_id}).status)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["failed", "failed"], run.stdout + run.stderr
    with session_factory(make_engine(settings))() as s:
        ended = s.get(Job, job_id)
        assert ended.status == "failed" and ended.finished_at is not None and ended.error == "gave up"


def test_the_kind_table_names_every_kind_once_and_the_accessor_refuses_unknown_ones():
    table = kind_table()
    assert sorted(table) == [
        "dataset_chunk",
        "fit_embedding",
        "generate_dataset",
        "generate_from_neighbors",
        "ping",
        "reproject",
        "sweep",
    ]
    assert get_kind("fit_embedding").on_failed is not None
    try:
        get_kind("nope")
    except Exception as exc:  # UserError, naming the public kinds only
        assert "use one of: fit_embedding, generate_dataset, generate_from_neighbors, ping, reproject" in str(
            exc
        )
    else:
        raise AssertionError("an unknown kind was accepted")
