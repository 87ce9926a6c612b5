"""Server-Sent Events in tests: read a streamed response frame by frame."""

from __future__ import annotations

import json
import time


class Stream:
    """Reads Server-Sent Event frames from a streamed (``buffered=False``) test-client response."""

    def __init__(self, response):
        self.response = response
        self.chunks = iter(response.response)
        self.buffer = ""

    def frame(self) -> str:
        while "\n\n" not in self.buffer:
            self.buffer += next(self.chunks).decode()
        frame, self.buffer = self.buffer.split("\n\n", 1)
        return frame

    def next_event(self, name: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.frame().split("\n")
            if lines[0] == f"event: {name}":
                return json.loads(lines[1].removeprefix("data: "))
        raise AssertionError(f"no '{name}' event in {timeout}s")

    def close(self):
        self.response.close()
