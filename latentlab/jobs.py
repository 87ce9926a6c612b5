"""A handle on a submitted job: ``refresh()``, ``cancel()`` and ``wait()`` with a progress bar fed by the
server's event stream (``GET /api/v1/events``), falling back to polling ``GET /api/v1/jobs/<id>`` when the
stream is unavailable (503) or drops."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from latentlab.http import ApiError

if TYPE_CHECKING:
    from latentlab.http import Http

FINAL = ("succeeded", "failed", "cancelled")


class JobFailed(Exception):
    """The job ended failed or cancelled; ``job`` holds its last state (``job.error`` says why)."""

    def __init__(self, job: Job):
        super().__init__(f"job {job.id} ({job.kind}) {job.status}: {job.error or 'no error recorded'}")
        self.job = job


class Job:
    def __init__(self, http: Http, data: dict[str, Any]):
        self._http = http
        self.data = data

    id = property(lambda self: self.data["id"])
    kind = property(lambda self: self.data["kind"])
    status = property(lambda self: self.data["status"])
    progress = property(lambda self: float(self.data.get("progress") or 0.0))
    result = property(lambda self: self.data.get("result"))
    error = property(lambda self: self.data.get("error"))
    done = property(lambda self: self.data["status"] in FINAL)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind} {self.status} {self.progress:.0%}>"

    def refresh(self) -> Job:
        self.data = self._http.get(f"/api/v1/jobs/{self.id}")
        return self

    def cancel(self) -> Job:
        self.data = self._http.post(f"/api/v1/jobs/{self.id}/cancel")
        return self

    def wait(self, timeout: float | None = None, progress: bool = True, poll: float = 0.5) -> Job:
        """Block until the job ends; returns self when it succeeded, raises ``JobFailed`` otherwise and
        ``TimeoutError`` after ``timeout`` seconds. ``progress`` shows a tqdm bar."""
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = tqdm(total=100, desc=f"job {self.id} {self.kind}", unit="%", disable=not progress, leave=True)
        try:
            self.refresh()
            self._show(bar)
            if not self.done:
                try:
                    self._follow_events(bar, deadline)
                except (ApiError, OSError, ValueError):
                    pass  # no stream (503, dropped connection): poll instead
            while not self.done:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
                time.sleep(poll)
                self.refresh()
                self._show(bar)
        finally:
            bar.close()
        if self.status != "succeeded":
            raise JobFailed(self)
        return self

    def _show(self, bar) -> None:
        bar.n = round(self.progress * 100)
        bar.set_postfix_str(f"{self.status} {self.data.get('progress_message') or ''}"[:60], refresh=True)

    def _follow_events(self, bar, deadline: float | None) -> None:
        import requests

        response = self._http.request(
            "GET", "/api/v1/events", stream=True, timeout=(10, 30), headers={"Accept": "text/event-stream"}
        )
        with response:
            self.refresh()  # anything that happened before the stream opened
            self._show(bar)
            event = None
            try:
                for line in response.iter_lines(decode_unicode=True):
                    if self.done or (deadline is not None and time.monotonic() > deadline):
                        return
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "job":
                        data = json.loads(line[5:])
                        if data.get("id") == self.id:
                            self.data.update({k: v for k, v in data.items() if k != "chunk"})
                            self._show(bar)
                            if self.done:
                                return
                    elif not line:
                        event = None
            except requests.RequestException as exc:
                raise OSError(str(exc)) from None
