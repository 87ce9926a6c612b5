"""The live event stream over real HTTP: a web server process (``latentlab web``, waitress), a real
Celery worker process, a real redis-server and the real database. Members see their own jobs' events
and nothing of each other's; an admin sees both; a client that goes away frees its subscription."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import redis

from cli.redis_server import free_port
from common.jobs.broker import EVENTS_CHANNEL
from common.platform.accounts import create_user, issue_token
from tests.support.services import start_web, start_worker


class SseClient:
    """Reads an event stream in a thread, keeping every ``job`` event with its arrival time."""

    def __init__(self, port: int, token: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.request("GET", "/api/v1/events", headers={"Authorization": f"Bearer {token}"})
        self.sock = self.conn.sock  # the connection forgets it once the response owns it
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.content_type = self.response.getheader("Content-Type")
        self.jobs: list[dict] = []
        self.queues: list[dict] = []
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._thread.start()

    def _read(self) -> None:
        event = None
        try:
            while True:
                line = self.response.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                self.lines.append(text)
                if text.startswith("event: "):
                    event = text.removeprefix("event: ")
                elif text.startswith("data: ") and event == "job":
                    self.jobs.append(json.loads(text.removeprefix("data: ")))
                elif text.startswith("data: ") and event == "queues":
                    self.queues.append(json.loads(text.removeprefix("data: ")))
        except (OSError, ValueError, http.client.HTTPException):
            return
        finally:
            self.response.close()

    def statuses(self, job_id: int) -> list[tuple[str, float]]:
        return [(e["status"], e["progress"]) for e in self.jobs if e["id"] == job_id]

    def close(self) -> None:
        # shut the socket down so the reader sees EOF and closes the response's file object; only then
        # is the descriptor really closed (as when a browser tab goes away)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.conn.close()


def subscribers(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return dict(client.pubsub_numsub(EVENTS_CHANNEL))[EVENTS_CHANNEL.encode()]
    finally:
        client.close()


@pytest.fixture
def people(sessions):
    out = {}
    with sessions.begin() as s:
        for name, role in (("alice", "member"), ("bob", "member"), ("root", "admin")):
            user = create_user(s, name, f"{name}-password", role=role)
            s.flush()
            out[name] = issue_token(s, user)
    return out


@pytest.fixture
def server(settings, tmp_path):
    port = free_port()
    web = start_web(settings, tmp_path, port)
    worker = start_worker(settings, tmp_path)
    yield port
    worker.stop()
    web.stop()


def post_ping(port: int, token: str, seconds: float) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"kind": "ping", "params": {"seconds": seconds, "steps": 4}})
    conn.request(
        "POST",
        "/api/v1/jobs",
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    res = conn.getresponse()
    answer = json.loads(res.read())
    conn.close()
    assert res.status == 202, answer
    return answer["id"]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_each_member_streams_only_their_own_job_events_and_an_admin_streams_both(server, people, settings):
    port = server
    streams = {name: SseClient(port, token) for name, token in people.items()}
    try:
        for name, stream in streams.items():
            assert stream.status == 200 and stream.content_type.startswith("text/event-stream"), name
        wait_for(lambda: all(s.queues for s in streams.values()), 20, "the first queue summaries")
        assert all(s.lines[0] == "retry: 3000" for s in streams.values())
        wait_for(lambda: subscribers(settings.redis_url) == 3, 10, "three subscriptions")

        mine = post_ping(port, people["alice"], seconds=1.5)
        theirs = post_ping(port, people["bob"], seconds=0.5)

        def finished(stream, job_id):
            return any(e["id"] == job_id and e["status"] == "succeeded" for e in stream.jobs)

        wait_for(lambda: finished(streams["alice"], mine), 90, "alice's job to succeed on her stream")
        wait_for(lambda: finished(streams["bob"], theirs), 90, "bob's job to succeed on his stream")
        wait_for(
            lambda: finished(streams["root"], mine) and finished(streams["root"], theirs), 30, "the admin's"
        )
        time.sleep(0.5)  # anything misrouted would have arrived by now

        alice_seen = streams["alice"].statuses(mine)
        order = [status for status, _ in alice_seen]
        assert order[0] == "queued" and order[-1] == "succeeded", alice_seen
        assert order.index("running") < order.index("succeeded")
        progress = [p for status, p in alice_seen if status == "running" and 0 < p < 1]
        assert progress and progress == sorted(progress), alice_seen
        assert {e["id"] for e in streams["alice"].jobs} == {mine}
        assert {e["id"] for e in streams["bob"].jobs} == {theirs}
        assert {e["id"] for e in streams["root"].jobs} == {mine, theirs}
        assert [s for s, _ in streams["root"].statuses(theirs)][-1] == "succeeded"
        assert all(e["owner_id"] for e in streams["alice"].jobs)
    finally:
        for stream in streams.values():
            stream.close()
    # the server notices the closed sockets at its next write (a queue summary, at most 5 s away)
    wait_for(lambda: subscribers(settings.redis_url) == 0, 30, "the subscriptions to be closed")


def test_event_stream_answers_503_json_when_the_broker_is_down(settings, people, tmp_path):
    port = free_port()
    web = start_web(
        settings, tmp_path, port, extra_env={"LATENTLAB_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/v1/events", headers={"Authorization": f"Bearer {people['alice']}"})
        res = conn.getresponse()
        body = json.loads(res.read())
        assert res.status == 503 and "poll" in body["error"]
        conn.close()
    finally:
        web.stop()
