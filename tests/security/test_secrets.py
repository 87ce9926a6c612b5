"""Secrets: the session key (generated into the data root on first run, mode 0600) and the reducer HMAC
key (outside the data root, mode 0600) never appear in any answer, log or job row, nor in the repository;
passwords are hashed with argon2id (memory-hard) and API tokens are stored as sha256 digests only."""

from __future__ import annotations

import base64
import math
import re
import subprocess
from collections import Counter
from pathlib import Path

from sqlalchemy import select, text

from common.models import ApiToken, Job, User
from tests.security.conftest import PASSWORDS, Stack

REPO = Path(__file__).resolve().parents[2]


def forms_of(secret: str) -> list[str]:
    """The key and the encodings it could leak in."""
    raw = secret.encode()
    return [
        secret,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
    ]


def test_keys_never_appear_in_answers_logs_or_job_rows(stack: Stack):
    settings = stack.settings
    secret_file = settings.data_root / "secret_key"
    assert secret_file.exists(), "the web process generates its session key on first run"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    session_key = secret_file.read_text().strip()
    signing_file = settings.signing_key_file.expanduser().resolve()
    assert (
        not signing_file.is_relative_to(settings.data_root) and signing_file.stat().st_mode & 0o777 == 0o600
    )
    signing_key = signing_file.read_text().strip()
    assert len(session_key) >= 32 and len(signing_key) >= 32

    seen: list[str] = []

    def call(method, path, who="A", body=None, headers=None):
        status, payload, hdrs = stack.api(method, path, who, body, headers)
        seen.append(f"{status} {payload} {hdrs}")
        return status, payload

    # a browser sign-in (the answer sets a cookie signed with the session key), API calls, errors
    call("POST", "/api/v1/auth/login", None, {"username": "alice", "password": PASSWORDS["A"]})
    call("POST", "/api/v1/auth/login", None, {"username": "alice", "password": "wrong-password"})
    for path in ("/api/v1/auth/me", "/api/v1/tokens", "/api/v1/jobs", "/api/v1/queues", "/api/openapi.json"):
        call("GET", path)
    call("GET", "/healthz", None)
    call("GET", "/api/v1/jobs/99999999999999999999999")
    call("POST", "/api/v1/jobs", "A", {"kind": "nope"})
    call("POST", "/api/v1/tokens", "B", {"name": "leak-check"})
    # jobs: one that runs, one that loads a reducer (the worker reads the signing key to verify it)
    _, job = call("POST", "/api/v1/jobs", "A", {"kind": "ping", "params": {"seconds": 0, "steps": 2}})
    assert stack.wait(job["id"]).status == "succeeded"
    _, job = call(
        "POST", "/api/v1/jobs", "B", {"kind": "reproject", "params": {"embedding": stack.lab.embedding_id}}
    )
    stack.wait(job["id"])
    for path in (f"/api/v1/jobs/{job['id']}", "/api/v1/jobs?limit=500&include_children=true"):
        call("GET", path, "admin")

    with stack.sessions() as s:
        rows = [repr((j.params, j.result, j.error, j.progress_message)) for j in s.scalars(select(Job))]
    logs = stack.logs()
    haystacks = {"answers": "\n".join(seen), "logs": logs, "job rows": "\n".join(rows)}
    for name, key in (("session key", session_key), ("signing key", signing_key)):
        for form in forms_of(key):
            for where, hay in haystacks.items():
                assert form not in hay, f"the {name} appears in the {where}"
    print(f"\nchecked {len(seen)} answers, {len(logs)} characters of logs and {len(rows)} job rows: no key")


def test_passwords_are_argon2id_and_tokens_are_stored_as_digests(stack: Stack):
    with stack.sessions() as s:
        users = list(s.scalars(select(User)))
        tokens = list(s.scalars(select(ApiToken)))
        dump = "\n".join(
            repr(tuple(row))
            for table in ("users", "api_tokens")
            for row in s.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 - fixed table names
        )
    for user in users:
        match = re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[^$]+\$[^$]+", user.password_hash)
        assert match, user.password_hash[:30]
        memory_kib, time_cost, _ = map(int, match.groups())
        # OWASP's floor for argon2id: 19 MiB with 2 passes (or more memory)
        assert memory_kib >= 19 * 1024 and time_cost >= 2, (memory_kib, time_cost)
    for password in PASSWORDS.values():
        assert password not in dump
    for who, raw in stack.tokens.items():
        assert raw not in dump, who
        assert raw[len("ll_") :] not in dump
    for token in tokens:
        assert re.fullmatch(r"[0-9a-f]{64}", token.token_hash) and len(token.prefix) <= 10


def entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(n / len(s) * math.log2(n / len(s)) for n in counts.values())


def test_the_repository_holds_no_key_files_and_no_high_entropy_secrets():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    names = files.splitlines()
    assert len(names) > 100
    forbidden = re.compile(r"(^|/)(secret_key|signing\.key|\.env|id_rsa|id_ed25519)$|\.(key|pem|p12|pfx)$")
    assert not [n for n in names if forbidden.search(n)]
    assert not [
        n for n in names if n.startswith("data/") and n not in ("data/README.md",) and "/models/" not in n
    ]
    candidates = re.compile(r"[A-Za-z0-9_\-+/]{32,}={0,2}")
    found = []
    for name in names:
        try:
            content = (REPO / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue  # binary: model weights, images
        for match in candidates.finditer(content):
            word = match.group(0)
            mixed = re.search(r"[a-z]", word) and re.search(r"[A-Z]", word) and re.search(r"[0-9]", word)
            # random keys repeat characters; an alphabet literal does not
            if mixed and entropy(word) > 4.5 and len(set(word)) < len(word):
                found.append(f"{name}: {word[:12]}…")
    assert not found, "strings that look like secrets:\n" + "\n".join(found)
