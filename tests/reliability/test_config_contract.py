"""The configuration every reliability property rests on, checked as data and against a real worker:
late acks, re-queue on a lost worker, prefetch 1, JSON only (a pickled message is refused, not run),
task_time_limit < visibility_timeout < stale_after, and interactive and batch work on separate queues."""

from __future__ import annotations

import uuid

import pytest
import redis
from kombu import Connection, Exchange, Queue
from sqlalchemy import update

from common.jobs import KINDS, get_kind, now
from common.jobs.broker import MARKER_PREFIX, celery_config, soft_time_limit, task_name
from common.jobs.kinds import parse_params
from common.models import Job
from common.platform.config import ConfigError, Settings
from common.research.embeddings import REPROJECT_INTERACTIVE_MAX
from tests.reliability.support import log_lines, trace_of
from tests.support.waiting import wait_until


def test_celery_configuration_and_tasks_keep_the_at_least_once_contract(fast):
    conf = celery_config(fast)
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_serializer"] == "json"
    assert conf["accept_content"] == ["json"] and conf["result_accept_content"] == ["json"]
    assert conf["broker_transport_options"]["visibility_timeout"] == fast.visibility_timeout
    assert conf["task_time_limit"] == fast.task_time_limit
    assert conf["task_soft_time_limit"] < conf["task_time_limit"] < fast.visibility_timeout < fast.stale_after
    restore = conf["broker_transport_options"]["unacked_restore_interval"]
    assert restore * conf["broker_transport_options"]["unacked_restore_throttle"] <= 10
    assert [soft_time_limit(t) for t in (3000, 60, 20, 5, 1)] == [2970, 54, 18, 4, 1]

    from workers.tasks import TASKS

    for kind, task in TASKS.items():
        assert task.name == task_name(kind)
        assert task.acks_late is True and task.reject_on_worker_lost is True, kind


@pytest.mark.parametrize(
    "limits",
    [(3600, 3600, 3900), (3000, 3900, 3900), (4000, 3600, 3900), (3000, 3600, 3000)],
    ids=["limit=visibility", "visibility=stale", "limit>visibility", "stale<visibility"],
)
def test_settings_refuse_limits_out_of_order(limits):
    names = ("LATENTLAB_TASK_TIME_LIMIT", "LATENTLAB_VISIBILITY_TIMEOUT", "LATENTLAB_STALE_AFTER")
    env = {name: str(value) for name, value in zip(names, limits, strict=True)}
    with pytest.raises(
        ConfigError, match="TIME_LIMIT < LATENTLAB_VISIBILITY_TIMEOUT < LATENTLAB_STALE_AFTER"
    ):
        Settings.from_env(env)


def test_interactive_and_batch_work_use_separate_queues():
    get_kind("ping")  # registers every kind
    assert {k: v.queue for k, v in KINDS.items()} == {
        "ping": "interactive",
        "generate_from_neighbors": "interactive",
        "generate_dataset": "batch",
        "dataset_chunk": "batch",
        "fit_embedding": "embed",
        "reproject": "embed",
        "sweep": "interactive",  # a grid of clicks: one interactive job
    }
    # a reprojection of a few listed points is a click; more, or "every unplaced sample", is batch work
    spec = get_kind("reproject")
    few, most = REPROJECT_INTERACTIVE_MAX, REPROJECT_INTERACTIVE_MAX + 1
    for params, queue in (
        ({"embedding": 1, "samples": list(range(1, few + 1))}, "interactive"),
        ({"embedding": 1, "samples": [7]}, "interactive"),
        ({"embedding": 1, "samples": list(range(1, most + 1))}, "embed"),
        ({"embedding": 1}, "embed"),
    ):
        assert spec.queue_for(parse_params(spec, params)) == queue, params


def test_worker_refuses_a_pickled_message_and_consumes_only_its_queues(lab, tiny_model):
    settings = lab.settings
    worker = lab.worker(name="strict", queues="interactive")
    # a real queued job, marked as held by the broker so that only the pickled message could run it
    target = lab.submit("ping", {"seconds": 0}, publisher=None)
    with lab.sessions.begin() as s:
        s.execute(update(Job).where(Job.id == target.id).values(published_at=now()))
    client = redis.Redis.from_url(settings.redis_url)
    client.set(MARKER_PREFIX + str(target.id), "pickled")

    task_id = uuid.uuid4().hex
    headers = {"lang": "py", "task": task_name("ping"), "id": task_id, "root_id": task_id, "retries": 0}
    with Connection(settings.redis_url) as conn:
        conn.Producer(serializer="pickle").publish(
            ([target.id], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}),
            exchange=Exchange("interactive", type="direct"),
            routing_key="interactive",
            declare=[Queue("interactive", Exchange("interactive", type="direct"), "interactive")],
            headers=headers,
        )
    batch = lab.submit("generate_dataset", {"model": "tiny", "name": "not-here", "num_samples": 4})

    probe = lab.submit("ping", {"seconds": 0, "steps": 1})
    assert lab.wait(probe.id, timeout=60).status == "succeeded"
    wait_until(
        lambda: client.llen("interactive") == 0 and client.hlen("unacked") == 0,
        30,
        "the pickled message to be consumed and dropped",
    )
    refused = log_lines(worker, "pickle")
    assert refused, worker.log_text()[-3000:]
    row = lab.job(target.id)
    assert row.status == "queued" and row.attempts == 0 and trace_of(settings, target.id) == []
    # the interactive-only worker left the batch job alone: still queued, its message still in 'batch'
    assert lab.job(batch.id).status == "queued" and client.llen("batch") == 1

    stats = lab_inspect(settings, "strict")
    assert stats["prefetch_count"] == 1, stats
    client.close()
    print(f"\npickled message refused: {refused[0][:160]}")


def lab_inspect(settings, name):
    from workers.app import make_celery

    app = make_celery(settings)
    try:
        replies = app.control.inspect(timeout=5).stats() or {}
    finally:
        app.close()
    (stats,) = [v for k, v in replies.items() if k.startswith(f"{name}@")]
    return stats
