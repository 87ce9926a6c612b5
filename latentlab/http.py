"""Connection settings and one authenticated ``requests`` session with the API's error shape turned into
``ApiError`` (the server's sentence, its status and the field to change)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_FILE = Path("~/.config/latentlab/token")


class ApiError(Exception):
    """A request the server refused: ``status`` (HTTP), ``message`` (what to change), ``field``."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(f"{status}: {message}" + (f" (field: {field})" if field else ""))
        self.status = status
        self.message = message
        self.field = field


def find_token(token: str | None, token_file: str | os.PathLike | None) -> str:
    """The API token: the argument, else LATENTLAB_TOKEN, else the file (argument, LATENTLAB_TOKEN_FILE or
    ~/.config/latentlab/token)."""
    if token:
        return token.strip()
    if os.environ.get("LATENTLAB_TOKEN"):
        return os.environ["LATENTLAB_TOKEN"].strip()
    path = Path(token_file or os.environ.get("LATENTLAB_TOKEN_FILE") or TOKEN_FILE).expanduser()
    try:
        value = path.read_text().strip()
    except OSError:
        value = ""
    if not value:
        raise ApiError(
            401,
            "No API token: pass Client(token=...), set LATENTLAB_TOKEN, or put the token in "
            f"{path} (create one with `latentlab user token NAME` or POST /api/v1/tokens).",
        )
    return value


class Http:
    def __init__(self, url: str | None, token: str, timeout: float):
        self.url = (url or os.environ.get("LATENTLAB_URL") or DEFAULT_URL).rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["User-Agent"] = "latentlab-client"

    def request(self, method: str, path: str, *, stream=False, timeout=None, **kwargs) -> requests.Response:
        if "params" in kwargs and kwargs["params"]:
            kwargs["params"] = {k: v for k, v in kwargs["params"].items() if v is not None}
        try:
            response = self.session.request(
                method, self.url + path, stream=stream, timeout=timeout or self.timeout, **kwargs
            )
        except requests.ConnectionError as exc:
            message = f"Cannot reach {self.url}: {exc}; check LATENTLAB_URL and that the server runs."
            raise ApiError(0, message) from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body).json()


def _error(response: requests.Response) -> ApiError:
    try:
        body = response.json()
        return ApiError(response.status_code, str(body.get("error")), body.get("field"))
    except ValueError:
        return ApiError(response.status_code, response.text[:200] or response.reason)
