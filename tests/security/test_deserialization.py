"""No file and no message becomes code.

* Fitted reducers are loaded only from the data root and only after their manifest's sha256 (stored in
  the database), its HMAC (a key kept outside the data root and the database) and every file's sha256
  check out. A reducer directory carrying a pickle whose ``__reduce__`` writes a marker file is refused
  before anything is unpickled, through ``common.maps.store.load_reducer``,
  ``common.research.embeddings.ReducerCache`` and a real ``reproject`` job on a real worker: the marker
  never appears.
* The repository's Python code has no ``np.load(allow_pickle=True)``, no ``torch.load`` without
  ``weights_only=True``, no ``pickle.load``/``loads`` outside the one verified place, no ``yaml.load``
  without a safe loader and no ``eval``/``exec`` (an AST scan of every tracked file).
* The Celery worker accepts JSON only: a pickle-serialised message whose argument would write a marker
  when unpickled is refused by a real worker and the marker never appears.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from sqlalchemy import update

from common.maps.reducer import ReducerIntegrityError, _sign, load_reducer
from common.models import Embedding
from common.platform.storage import UnsafePath
from common.research.embeddings import ReducerCache, ReducerRefused
from tests.security.conftest import Stack, World

REPO = Path(__file__).resolve().parents[2]


class WritesMarker:
    """Unpickling this object creates ``path`` (what an attacker's payload would do, harmlessly)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def payload(marker: Path) -> bytes:
    return pickle.dumps({"umap": WritesMarker(marker)}, protocol=pickle.HIGHEST_PROTOCOL)


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_reducer(folder: Path, key: bytes, pickled: bytes, *, sign_with: bytes | None = None) -> str:
    """A reducer directory in the pickled format (``latentlab-reducer-1``: ``umap.pkl``), its manifest
    listing every file's sha256 and signed with ``sign_with`` (default: ``key``); returns the manifest's
    sha256 (what the embedding row stores)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "chain.npz": npz(dim=np.array(4), mean=np.zeros(4, np.float32), scale=np.ones(4, np.float32)),
        "umap.pkl": pickled,
        "z.npy": _npy(np.zeros((3, 4), np.float32)),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    body = {
        "format": "latentlab-reducer-1",
        "layers": ["midblock"],
        "dim": 4,
        "z_source": "file",
        "z_shape": [3, 4],
        "files": {name: sha(data) for name, data in files.items()},
        "info": {},
    }
    manifest = json.dumps(dict(body, hmac=_sign(sign_with or key, body)), sort_keys=True, indent=1).encode()
    (folder / "manifest.json").write_bytes(manifest)
    return sha(manifest)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def no_z(train_ids, partial):  # the crafted reducers keep z in a file
    raise AssertionError("z_loader should not be needed")


def tampered_variants(root: Path, key: bytes, marker: Path) -> dict[str, tuple[Path, str]]:
    """Reducer directories an attacker with write access to the data root (and even the database) could
    leave behind, each as (folder, the sha256 the embedding row would hold)."""
    out = {}
    # 1. a genuine, signed reducer whose pickle was swapped afterwards
    folder = root / "swapped"
    digest = write_reducer(folder, key, pickle.dumps({"umap": "benign"}))
    (folder / "umap.pkl").write_bytes(payload(marker))
    out["pickle swapped after signing"] = (folder, digest)
    # 2. the manifest rewritten to the payload's hash, its HMAC kept; the row updated to match
    folder = root / "rewritten"
    write_reducer(folder, key, pickle.dumps({"umap": "benign"}))
    manifest = json.loads((folder / "manifest.json").read_bytes())
    (folder / "umap.pkl").write_bytes(payload(marker))
    manifest["files"]["umap.pkl"] = sha(payload(marker))
    data = json.dumps(manifest, sort_keys=True, indent=1).encode()
    (folder / "manifest.json").write_bytes(data)
    out["manifest rewritten, old HMAC, row updated"] = (folder, sha(data))
    # 3. everything consistent, signed with a key of the attacker's own
    folder = root / "own-key"
    out["signed with another key"] = (
        folder,
        write_reducer(folder, key, payload(marker), sign_with=b"k" * 48),
    )
    # 4. a manifest without any HMAC
    folder = root / "unsigned"
    write_reducer(folder, key, payload(marker))
    manifest = json.loads((folder / "manifest.json").read_bytes())
    manifest.pop("hmac")
    data = json.dumps(manifest).encode()
    (folder / "manifest.json").write_bytes(data)
    out["no HMAC"] = (folder, sha(data))
    # 5. a correctly signed manifest, but not the one the database row names
    folder = root / "other-row"
    write_reducer(folder, key, payload(marker))
    out["manifest not the row's"] = (folder, "0" * 64)
    return out


def test_the_payload_is_live_when_unpickled(tmp_path):
    """The control: unpickled (in another process), the payload does write its marker."""
    marker = tmp_path / "control-marker"
    (tmp_path / "payload.pkl").write_bytes(payload(marker))
    code = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "payload.pkl")], check=True, timeout=60)
    assert marker.exists()


def test_load_reducer_refuses_every_tampered_reducer_before_unpickling(tmp_path):
    key = b"the-installations-signing-key-" + uuid.uuid4().hex.encode()
    marker = tmp_path / "MARKER-load-reducer"
    for what, (folder, digest) in tampered_variants(tmp_path / "reducers", key, marker).items():
        with pytest.raises(ReducerIntegrityError):
            load_reducer(folder, digest, key, no_z)
        assert not marker.exists(), f"{what}: the payload ran"


def point_embedding(world_or_stack, folder_rel: str, digest: str) -> int:
    sessions = world_or_stack.sessions
    emb_id = world_or_stack.lab.embedding_id
    with sessions.begin() as s:
        s.execute(
            update(Embedding)
            .where(Embedding.id == emb_id)
            .values(reducer_path=folder_rel, reducer_sha256=digest)
        )
    return emb_id


def test_reducer_cache_refuses_tampered_reducers_and_any_outside_the_data_root(world: World, tmp_path):
    settings = world.settings
    key = settings.resolved_signing_key()
    marker = tmp_path / "MARKER-cache"
    root = settings.data_root
    variants = tampered_variants(root / "embeddings" / "tampered", key, marker)
    cache = ReducerCache()
    for what, (folder, digest) in variants.items():
        emb_id = point_embedding(world, folder.relative_to(root).as_posix(), digest)
        with world.sessions() as s, pytest.raises(ReducerRefused, match="refused and was not loaded"):
            cache.get(settings, s, s.get(Embedding, emb_id))
        assert not marker.exists(), f"{what}: the payload ran"
    # signed with the real key, consistent with its row: still refused when it lies outside the data root,
    # whether named by a relative path, an absolute one or through a symlink inside the root
    outside = tmp_path / "outside-reducer"
    digest = write_reducer(outside, key, payload(marker))
    (root / "embeddings" / "link").symlink_to(outside, target_is_directory=True)
    for stored in (
        "../outside-reducer",
        str(outside),
        "embeddings/link",
        "embeddings/%2e%2e/../outside-reducer",
    ):
        emb_id = point_embedding(world, stored, digest)
        with world.sessions() as s, pytest.raises(UnsafePath):
            cache.get(settings, s, s.get(Embedding, emb_id))
        assert not marker.exists(), f"{stored}: the payload ran"
    assert cache.loads == 0


def test_the_signing_key_lives_outside_the_data_root(settings, tmp_path):
    from common.platform.config import ConfigError

    inside = settings.with_(signing_key_file=settings.data_root / "signing.key")
    with pytest.raises(ConfigError, match="inside the data root"):
        inside.resolved_signing_key()
    key_file = settings.signing_key_file.expanduser().resolve()
    settings.resolved_signing_key()
    assert not key_file.is_relative_to(settings.data_root)
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_a_reproject_job_on_a_real_worker_refuses_a_tampered_reducer(stack: Stack, tmp_path):
    """Through the API and a real worker: the job fails with the refusal and the payload never runs."""
    key = stack.settings.resolved_signing_key()
    root = stack.settings.data_root
    marker = tmp_path / "MARKER-worker"
    for what, (folder, digest) in tampered_variants(root / "embeddings" / "attack", key, marker).items():
        point_embedding(stack, folder.relative_to(root).as_posix(), digest)
        status, job, _ = stack.api(
            "POST",
            "/api/v1/jobs",
            "B",
            {"kind": "reproject", "params": {"embedding": stack.lab.embedding_id}},
        )
        assert status == 202, job
        done = stack.wait(job["id"])
        assert done.status == "failed" and "refused and was not loaded" in done.error, (what, done.error)
        assert not marker.exists(), f"{what}: the payload ran in the worker"
    # and a reducer outside the data root, signed with the real key
    outside = tmp_path / "outside"
    digest = write_reducer(outside, key, payload(marker))
    point_embedding(stack, os.path.relpath(outside, root), digest)
    status, job, _ = stack.api(
        "POST", "/api/v1/jobs", "B", {"kind": "reproject", "params": {"embedding": stack.lab.embedding_id}}
    )
    done = stack.wait(job["id"])
    assert done.status == "failed" and "outside the data root" in done.error, done.error
    assert not marker.exists()
    print(f"\nreproject with a tampered reducer: failed, '{done.error[:120]}'")


def test_the_worker_refuses_a_pickled_message_and_its_payload_never_runs(stack: Stack, tmp_path):
    from kombu import Connection, Exchange, Queue

    from common.jobs.broker import task_name

    marker = tmp_path / "MARKER-celery"
    task_id = uuid.uuid4().hex
    headers = {"lang": "py", "task": task_name("ping"), "id": task_id, "root_id": task_id, "retries": 0}
    exchange = Exchange("interactive", type="direct")
    with Connection(stack.settings.redis_url) as conn:
        conn.Producer(serializer="pickle").publish(
            ([WritesMarker(marker)], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}),
            exchange=exchange,
            routing_key="interactive",
            declare=[Queue("interactive", exchange, "interactive")],
            headers=headers,
        )
    # a job submitted after it runs: the worker took the pickled message first and went on
    status, job, _ = stack.api(
        "POST", "/api/v1/jobs", "A", {"kind": "ping", "params": {"seconds": 0, "steps": 1}}
    )
    assert stack.wait(job["id"]).status == "succeeded"
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        deadline = time.monotonic() + 30
        while client.llen("interactive") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.llen("interactive") == 0
    finally:
        client.close()
    refused = [line for line in stack.worker.log_text().splitlines() if "pickle" in line.lower()]
    assert refused, stack.worker.log_text()[-3000:]
    assert not marker.exists()
    print(f"\npickled message: {refused[0][:200]}")


# -- the static scan -----------------------------------------------------------------------------------

# the one place that unpickles: a reducer in the old pickled format, after verify_manifest
ALLOWED_PICKLE = {("common/maps/store.py", "load_reducer")}


def tracked_python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / line for line in out.stdout.splitlines() if line]


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def dangerous_calls(source: str, path: str) -> list[str]:
    """Every call in ``source`` that could turn data into code (see the module docstring)."""
    tree = ast.parse(source)
    found = []
    function_of: dict[ast.AST, str] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(fn):
                function_of.setdefault(inner, fn.name)
    imported_pickle_names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "dill", "cloudpickle")
        for alias in node.names
        if alias.name in ("load", "loads", "Unpickler")
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        where = f"{path}:{node.lineno} {name}"
        last = name.rsplit(".", 1)[-1]
        if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append(where)
        elif (
            last == "load"
            and name.split(".")[0] in ("np", "numpy")
            and is_true(keyword(node, "allow_pickle"))
        ):
            found.append(where + "(allow_pickle=True)")
        elif name in ("torch.load",):
            weights_only = keyword(node, "weights_only")
            if not is_true(weights_only):
                found.append(where + " without weights_only=True")
        elif (
            (
                name.split(".")[0]
                in ("pickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")
                and last in ("load", "loads", "Unpickler", "open")
            )
            or name in imported_pickle_names
            or name in ("pandas.read_pickle", "pd.read_pickle")
        ):
            if (path, function_of.get(node, "")) not in ALLOWED_PICKLE:
                found.append(where)
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if dotted(loader) not in ("yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"):
                found.append(where + " without SafeLoader")
        elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            found.append(where)
    return found


def test_the_scan_catches_what_it_looks_for():
    bad = """
import pickle, yaml, torch, numpy as np
from pickle import loads as l
np.load("x", allow_pickle=True)
torch.load("x")
torch.load("x", weights_only=False)
pickle.load(open("x", "rb"))
l(b"")
yaml.load("a: 1")
yaml.load("a: 1", Loader=yaml.FullLoader)
eval("1")
exec("x = 1")
"""
    good = """
import numpy as np, torch, yaml
np.load("x", allow_pickle=False)
np.load("x")
torch.load("x", weights_only=True, map_location="cpu")
yaml.safe_load("a: 1")
yaml.load("a: 1", Loader=yaml.SafeLoader)
model.eval()
"""
    assert len(dangerous_calls(bad, "bad.py")) == 9, dangerous_calls(bad, "bad.py")
    assert dangerous_calls(good, "good.py") == []


def test_no_tracked_python_code_turns_data_into_code():
    files = tracked_python_files()
    assert len(files) > 50
    found = []
    for path in files:
        found += dangerous_calls(path.read_text(errors="replace"), path.relative_to(REPO).as_posix())
    assert not found, "calls that could run code from data:\n" + "\n".join(found)
    # the allowed place still verifies first: verify_manifest runs before pickle.load in load_reducer
    source = (REPO / "common" / "maps" / "store.py").read_text()
    body = ast.get_source_segment(
        source,
        next(
            n
            for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.FunctionDef) and n.name == "load_reducer"
        ),
    )
    if "pickle.load" in body:
        assert body.index("verify_manifest(") < body.index("pickle.load")
    print(f"\nscanned {len(files)} tracked Python files: nothing unpickles, evals or loads unsafely")
