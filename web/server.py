"""Serving the app with waitress (``latentlab web``), whose own refusals answer in the API's JSON.

Waitress refuses some requests before the app sees them: a ``Content-Length`` over
``max_request_body_size`` (set to the app's body limit, so a large body is refused from its header, before
a byte of it is read), a malformed request line or header, headers over its limit. Its own answer is a
plain-text page; here it is the API's shape, ``{"error": sentence}``, with the headers every answer has.

Usage (cli/main.py)::

    serve(app, settings, host="127.0.0.1", port=8000, threads=8)
"""

from __future__ import annotations

import json
import logging

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask

from common.platform.config import Settings
from web.errors import limit_in_words


def refusal(code: int, detail: str, body_limit: int) -> str:
    """The sentence of a request waitress refused with ``code`` (its own ``detail`` for a bad request)."""
    if code == 413:
        return f"The request body is larger than {limit_in_words(body_limit)}; send less data in one request."
    if code == 431:
        return "The request's headers are too large; send fewer or shorter headers."
    if code == 400:
        return f"The request is malformed ({detail.rstrip('.')}); send a valid HTTP/1.1 request."
    return "The server could not read this request; try again."


class JsonErrorTask(ErrorTask):
    """Waitress's error answer, in JSON (status and connection handling as waitress's own)."""

    body_limit = 0

    def execute(self) -> None:
        error = self.request.error
        sentence = refusal(error.code, str(error.body or ""), self.body_limit)
        body = json.dumps({"error": sentence}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend(
            [
                ("Content-Type", "application/json"),
                ("X-Content-Type-Options", "nosniff"),
                ("Cache-Control", "no-store"),
            ]
        )
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def serve(app, settings: Settings, *, host: str, port: int, threads: int) -> None:
    """Run waitress until stopped, with the body limit and the JSON refusals above."""

    class Task(JsonErrorTask):
        body_limit = settings.max_body_bytes

    class Channel(HTTPChannel):
        error_task_class = Task

    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="latentlab",
        channel_timeout=300,
        # a larger Content-Length is refused before any of the body is read (waitress's default is 1 GiB,
        # buffered to disk before Flask could check it)
        max_request_body_size=settings.max_body_bytes,
    )
    for listener in [server, *getattr(server, "map", {}).values()]:  # one socket, or several
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = Channel
    logging.basicConfig()  # as waitress.serve does: its warnings (queue depth) reach the log
    server.print_listen("Serving on http://{}:{}")
    server.run()
