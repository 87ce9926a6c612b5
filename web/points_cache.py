"""The points answer of a map (``GET /api/v1/embeddings/<id>/points``): its ETag, its encoding, and a
per-process cache of encoded bodies and decoded columns.

The body is the whole map as typed columns in one of two encodings (docs/API.md "Points format"):
JSON with base64 columns (the default), or a binary body (``?format=binary`` or ``Accept:
application/vnd.latentlab.points``) whose columns the browser views in place as typed arrays, with
the extra columns colour-by needs (owner, job, depth, round-trip error). Its ETag hashes
(embedding, num_points, reducer, and the count, largest and sum of the sample ids on it): points never
move once placed (reprojection only adds), so a map changes exactly when points are added or removed.
The encoded body (and its gzip form) is cached per process by ETag, bounded by ``PointsCache.max_bytes``,
so reloading a 100k-point map costs one aggregate query (``common.research.reads.map_stats``); after a
generation adds points, only the new rows are read (``PointsCache.columns``). The columns last read are
also kept on disk (``<data root>/cache/points/emb-<id>-<reducer>.llpt``, written in the background, in the
binary body's own layout), so the first load after a server start reads one file into memory and views its
columns in place instead of reading a million rows; that read starts alongside the request's stats query
(``PointsCache.prefetch``). Its stats are recomputed from the file, so a stale one is read like an older
copy in memory (only the tail, or the whole map again).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flask import Flask

from common.models import Embedding
from common.platform.storage import atomic_write_bytes
from common.research.embeddings import points_columns
from common.research.reads import MapStats

log = logging.getLogger(__name__)

POINTS_FORMAT = "points-v1"
GZIP_LEVEL = 1  # 100k points: 2.1 MB → 1.03 MB; level 5 saves 3% more at 1.3× the time
COLUMN_TYPES = {
    "id": "<i4",
    "x": "<f4",
    "y": "<f4",
    "class": "<i2",
    "origin": "u1",
    "projected": "u1",
}
# the binary body carries these too (colour and size by owner, job, generation depth, round-trip error)
BINARY_COLUMN_TYPES = {**COLUMN_TYPES, "owner": "<i4", "job": "<i4", "depth": "<u2", "rt_error": "<f4"}
DTYPE_NAMES = {"<i4": "int32", "<f4": "float32", "<i2": "int16", "u1": "uint8", "<u2": "uint16"}
BINARY_MEDIA_TYPE = "application/vnd.latentlab.points"
BINARY_MAGIC = b"LLPT"
BINARY_ALIGN = 8


class EncodedPoints:
    """One encoded points body; its gzip form is made on first request and kept."""

    def __init__(self, body: bytes):
        self.body = body
        self._gzipped: bytes | None = None
        self._lock = threading.Lock()

    def gzipped(self) -> bytes:
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, compresslevel=GZIP_LEVEL, mtime=0)
            return self._gzipped

    @property
    def size(self) -> int:
        return len(self.body) + len(self._gzipped or b"")


@dataclass(frozen=True)
class KnownMap:
    """The decoded columns of a map as last read, so that a read after additions fetches only the tail."""

    reducer: str | None
    stats: MapStats
    cols: dict[str, np.ndarray]


class PointsCache:
    """Encoded bodies by ETag (least recently used out beyond ``max_bytes``) and the last columns read of
    up to ``max_maps`` maps. Points are only ever added with new sample ids (generations, reprojection
    of a grown dataset), so when a map grew and its count and id sum agree with the known columns plus
    the rows after the known largest id, only those rows are read; anything else reads the whole map."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024, max_maps: int = 8, disk: Path | None = None):
        self.max_bytes = max_bytes
        self.max_maps = max_maps
        self.disk = disk
        self.disk_reads = 0
        self._writers: list[threading.Thread] = []
        self._bodies: OrderedDict[str, EncodedPoints] = OrderedDict()
        self._maps: OrderedDict[int, KnownMap] = OrderedDict()
        self._reading: dict[int, tuple[threading.Thread, list]] = {}
        self._lock = threading.Lock()
        self.full_reads = 0
        self.tail_reads = 0

    def body(self, etag: str) -> EncodedPoints | None:
        with self._lock:
            found = self._bodies.get(etag)
            if found is not None:
                self._bodies.move_to_end(etag)
            return found

    def put_body(self, etag: str, encoded: EncodedPoints) -> None:
        with self._lock:
            if etag in self._bodies or encoded.size > self.max_bytes:
                return
            self._bodies[etag] = encoded
            while sum(e.size for e in self._bodies.values()) > self.max_bytes:
                self._bodies.popitem(last=False)

    def _snapshot_path(self, emb: Embedding) -> Path | None:
        if self.disk is None or not emb.reducer_sha256:
            return None
        return self.disk / f"emb-{int(emb.id)}-{emb.reducer_sha256[:16]}.llpt"

    def prefetch(self, emb: Embedding) -> None:
        """Start reading the disk copy of a map this process does not hold yet, so that the read overlaps
        the request's stats query (``columns`` takes it up); a no-op when the map is in memory."""
        path = self._snapshot_path(emb)
        with self._lock:
            if path is None or emb.id in self._maps or emb.id in self._reading or not path.exists():
                return
            box: list[KnownMap | None] = []
            reader = threading.Thread(target=lambda: box.append(self._read_disk(emb, path)), daemon=True)
            self._reading[emb.id] = (reader, box)
        reader.start()

    def _from_disk(self, emb: Embedding) -> KnownMap | None:
        with self._lock:
            pending = self._reading.pop(emb.id, None)
        if pending is not None:
            reader, box = pending
            reader.join()
            known = box[0] if box else None
            if known is not None and known.reducer == emb.reducer_sha256:
                return known
        path = self._snapshot_path(emb)
        return None if path is None else self._read_disk(emb, path)

    def _read_disk(self, emb: Embedding, path: Path) -> KnownMap | None:
        try:
            _, cols = decode_points_binary(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError):  # missing, or not a body of this format
            return None
        if set(cols) != set(BINARY_COLUMN_TYPES):
            return None
        ids = cols["id"]
        with self._lock:
            self.disk_reads += 1
        stats = MapStats(len(ids), int(ids[-1]) if len(ids) else None, int(ids.sum(dtype=np.int64)))
        return KnownMap(emb.reducer_sha256, stats, cols)

    def _to_disk(self, emb: Embedding, cols: dict[str, np.ndarray]) -> None:
        path = self._snapshot_path(emb)
        if path is None:
            return

        def write():
            try:
                atomic_write_bytes(path, encode_points_binary(emb, [], "", cols, {}))
                for old in path.parent.glob(f"emb-{int(emb.id)}-*"):  # an earlier fit's (or format's) copy
                    if old != path and old.suffix in (".llpt", ".npy"):
                        old.unlink(missing_ok=True)
            except OSError as exc:  # a full or read-only disk: the cache in memory still serves
                log.warning("could not keep the points of map %s on disk: %s", emb.id, exc)

        writer = threading.Thread(target=write, name=f"points-snapshot-{emb.id}", daemon=True)
        with self._lock:
            self._writers = [w for w in self._writers if w.is_alive()] + [writer]
        writer.start()

    def wait_for_disk(self, timeout: float = 30.0) -> None:
        """Wait until the copies being written to disk are written (tests, an orderly shutdown)."""
        with self._lock:
            writers = list(self._writers)
        for writer in writers:
            writer.join(timeout)

    def columns(self, db, emb: Embedding, stats: MapStats) -> dict[str, np.ndarray]:
        with self._lock:
            known = self._maps.get(emb.id)
        if known is None:
            known = self._from_disk(emb)
        cols = None
        if known is not None and known.reducer == emb.reducer_sha256 and known.stats.max_id is not None:
            if known.stats == stats:
                cols = known.cols
            elif (
                stats.max_id is not None
                and stats.max_id > known.stats.max_id
                and stats.count > known.stats.count
            ):
                tail = points_columns(db, emb, after=known.stats.max_id)
                self.tail_reads += 1
                grown = MapStats(
                    known.stats.count + len(tail["id"]),
                    int(tail["id"][-1]) if len(tail["id"]) else known.stats.max_id,
                    known.stats.id_sum + int(tail["id"].sum()),
                )
                if grown == stats:
                    cols = {name: np.concatenate([known.cols[name], tail[name]]) for name in known.cols}
        if cols is None:
            cols = points_columns(db, emb)
            self.full_reads += 1
        if known is None or cols is not known.cols:
            self._to_disk(emb, cols)
        ids = cols["id"]
        read = MapStats(len(ids), int(ids[-1]) if len(ids) else None, int(ids.sum(dtype=np.int64)))
        with self._lock:
            self._maps[emb.id] = KnownMap(emb.reducer_sha256, read, cols)
            self._maps.move_to_end(emb.id)
            while len(self._maps) > self.max_maps:
                self._maps.popitem(last=False)
        return cols


CACHE_KEY = "latentlab.points_cache"


def cache_for(app: Flask) -> PointsCache:
    """The app's points cache: one per app (so per database), never shared between apps in a process."""
    found = app.extensions.get(CACHE_KEY)
    if found is None:
        services = app.extensions.get("latentlab")
        disk = services.settings.data_root / "cache" / "points" if services is not None else None
        found = app.extensions.setdefault(CACHE_KEY, PointsCache(disk=disk))
    return found


def points_etag(emb: Embedding, stats: MapStats, binary: bool = False) -> str:
    key = (
        f"{POINTS_FORMAT}{':binary' if binary else ''}:{emb.id}:{emb.num_points}:{emb.reducer_sha256}:"
        f"{stats.max_id}:{stats.count}:{stats.id_sum}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _check_ids(cols: dict[str, np.ndarray]) -> int:
    n = len(cols["id"])
    if n and int(cols["id"].max()) > np.iinfo(np.int32).max:
        raise RuntimeError("sample ids no longer fit the int32 points format; bump POINTS_FORMAT")
    return n


def _bounds(cols: dict[str, np.ndarray]) -> list[float] | None:
    if not len(cols["id"]):
        return None
    x, y = cols["x"], cols["y"]
    return [float(x.min()), float(x.max()), float(y.min()), float(y.max())]


def encode_points_binary(
    emb: Embedding, label_names: list, etag: str, cols: dict[str, np.ndarray], owners: dict[int, str]
) -> bytes:
    """The binary points body (docs/API.md "Points format"): ``LLPT``, a little-endian uint32 header
    length, the JSON header (padded with spaces to a multiple of 8 bytes), then the columns, each
    little-endian and 8-aligned at the ``offset`` the header gives (counted from the end of the header),
    so the browser views them in place (``new Float32Array(buffer, 8 + header + offset, n)``). Each
    column is written once, straight into the body."""
    n = _check_ids(cols)
    specs = []
    offset = 0
    for name, dtype in BINARY_COLUMN_TYPES.items():
        specs.append({"name": name, "dtype": DTYPE_NAMES[dtype], "offset": offset})
        size = n * np.dtype(dtype).itemsize
        offset += size + (-size) % BINARY_ALIGN
    header = {
        "embedding_id": emb.id,
        "n": n,
        "etag": etag,
        "label_names": label_names,
        "bounds": _bounds(cols),
        "owners": {str(k): v for k, v in owners.items()},
        "columns": specs,
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % BINARY_ALIGN)
    base = 8 + len(text)
    body = bytearray(base + offset)
    body[:base] = BINARY_MAGIC + len(text).to_bytes(4, "little") + text
    for spec, (name, dtype) in zip(specs, BINARY_COLUMN_TYPES.items(), strict=True):
        np.frombuffer(body, dtype=dtype, count=n, offset=base + spec["offset"])[:] = cols[name]
    return bytes(body)


def decode_points_binary(body: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, columns) of a binary points body; the columns are read-only views into ``body``."""
    if body[:4] != BINARY_MAGIC or len(body) < 8:
        raise ValueError("not a binary points body")
    size = int.from_bytes(body[4:8], "little")
    header = json.loads(body[8 : 8 + size])
    types = {v: k for k, v in DTYPE_NAMES.items()}
    n = int(header["n"])
    cols = {
        c["name"]: np.frombuffer(body, dtype=types[c["dtype"]], count=n, offset=8 + size + int(c["offset"]))
        for c in header["columns"]
    }
    return header, cols


def owner_ids(cols: dict[str, np.ndarray]) -> set[int]:
    """The user ids that own points of the map (for the binary header's names)."""
    return {int(u) for u in np.unique(cols["owner"]) if u >= 0}


def encode_points(emb: Embedding, label_names: list, etag: str, cols: dict[str, np.ndarray]) -> bytes:
    """The points JSON body: each column little-endian, base64 (docs/API.md "Points format")."""
    n = _check_ids(cols)
    columns = {}
    for name, dtype in COLUMN_TYPES.items():
        data = np.ascontiguousarray(cols[name], dtype=dtype)
        encoded = base64.b64encode(data.tobytes()).decode("ascii")
        columns[name] = {"dtype": DTYPE_NAMES[dtype], "data": encoded}
    body = {
        "embedding_id": emb.id,
        "n": n,
        "etag": etag,
        "label_names": label_names,
        "bounds": _bounds(cols),
        "columns": columns,
    }
    return json.dumps(body, separators=(",", ":")).encode()
