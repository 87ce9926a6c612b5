"""Fitted 2-D maps of activations: scaler → optional PCA → UMAP, saved lean and signed.

The chain maps an activation vector x (D = Σ C·H·W over the layers, sorted by name) to
``z = pca((x - mean) / scale)`` (d dims, or D without PCA) and then to the 2-D point ``umap(z)``.

Saved per embedding, under ``embeddings/<id>/``:

* ``chain.npz``: scaler and PCA arrays (plain arrays, no pickle);
* ``umap.pkl``: the fitted UMAP object *without* its training matrix (``_raw_data``), which is either
  ``z.npy`` (when PCA made it small) or rebuilt from the activation shards at load (no second copy of
  the data);
* ``train_ids.npy``: the sample ids the map was fitted on, in row order;
* ``manifest.json``: each file's sha256 and an HMAC over the manifest with a key kept outside the data
  root and the database. The embedding row stores the manifest's sha256. Nothing is unpickled before
  both checks pass.

Usage::

    reducer, xy = fit_reducer(X, params, progress)
    manifest_sha = save_reducer(reducer, folder, key, train_ids)
    reducer = load_reducer(folder, manifest_sha, key, z_loader)
    xy_new = reducer.transform(X_new)
    x_hat = reducer.inverse(xy_center)             # (n, D)
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.storage import atomic_save_npy, atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


class ReducerIntegrityError(ValueError):
    """The saved reducer does not match its manifest, signature or database row; it is not loaded."""


@dataclass
class FitParams:
    layers: list[str]
    scaler: str = "standard"  # standard | none
    pca_dims: int | None = None
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    seed: int = 0


@dataclass
class Reducer:
    """The fitted chain. ``umap`` is a umap.UMAP whose ``_raw_data`` is the training matrix ``z``."""

    layers: list[str]
    dim: int  # D, the activation vector length
    mean: np.ndarray | None  # [D] scaler mean, or None
    scale: np.ndarray | None  # [D] scaler std (zeros replaced by 1), or None
    pca_mean: np.ndarray | None  # [D]
    components: np.ndarray | None  # [d, D]
    umap: Any
    backend: str = "umap-learn"
    info: dict[str, Any] = field(default_factory=dict)

    # -- the chain ------------------------------------------------------------------------------------

    def to_z(self, x: np.ndarray) -> np.ndarray:
        """[n, D] activations -> [n, d] UMAP input (float32)."""
        z = np.asarray(x, dtype=np.float32)
        if self.mean is not None:
            z = (z - self.mean) / self.scale
        if self.components is not None:
            z = (z - self.pca_mean) @ self.components.T  # [n, d]
        return np.ascontiguousarray(z, dtype=np.float32)

    def from_z(self, z: np.ndarray) -> np.ndarray:
        """[n, d] -> [n, D]: undo PCA, then the scaler."""
        x = np.asarray(z, dtype=np.float32)
        if self.components is not None:
            x = x @ self.components + self.pca_mean  # [n, D]
        if self.mean is not None:
            x = x * self.scale + self.mean
        return x.astype(np.float32, copy=False)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """[n, D] activations -> [n, 2] points on the existing map (existing points do not move)."""
        return np.asarray(self.umap.transform(self.to_z(x)), dtype=np.float32)

    def inverse(self, points: np.ndarray) -> np.ndarray:
        """[n, 2] map points -> [n, D] activations (UMAP's inverse in z, then PCA and scaler undone)."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float32))
        return self.from_z(np.asarray(self.umap.inverse_transform(pts), dtype=np.float32))

    @property
    def z(self) -> np.ndarray:
        return self.umap._raw_data

    @property
    def embedding(self) -> np.ndarray:
        return np.asarray(self.umap.embedding_, dtype=np.float32)


# -- fitting --------------------------------------------------------------------------------------------


def default_pca_dims(n_samples: int) -> int | None:
    """None below 20,000 samples; 256 from there (UMAP on the full dimension does not scale)."""
    return None if n_samples < 20_000 else 256


def fit_scaler(batches: Callable[[], Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Streaming per-feature mean and std over row batches ([m, D] arrays), in float64."""
    total = np.zeros(dim)
    total_sq = np.zeros(dim)
    n = 0
    for xb in batches():
        xb = np.asarray(xb, dtype=np.float64)
        total += xb.sum(axis=0)
        total_sq += np.square(xb).sum(axis=0)
        n += xb.shape[0]
    mean = total / n
    var = np.maximum(total_sq / n - np.square(mean), 0.0)
    std = np.sqrt(var)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def fit_reducer(
    batches: Callable[[], Any],
    n: int,
    dim: int,
    params: FitParams,
    progress: Progress | None = None,
) -> tuple[Reducer, np.ndarray]:
    """Fit scaler → PCA → UMAP over ``n`` rows of width ``dim`` read by ``batches()`` (an iterable
    of [m, D] float arrays, re-readable: it is called once per pass). Returns the reducer and [n, 2]."""
    import umap
    from sklearn.decomposition import PCA, IncrementalPCA

    progress = progress or (lambda f, m: None)
    t0 = time.perf_counter()
    mean = scale = None
    if params.scaler == "standard":
        progress(0.02, "scaler: one pass over the activations")
        mean, scale = fit_scaler(batches, dim)

    def scaled():
        for xb in batches():
            xb = np.asarray(xb, dtype=np.float32)
            yield xb if mean is None else (xb - mean) / scale

    pca_mean = components = None
    info: dict[str, Any] = {}
    if params.pca_dims:
        progress(0.1, f"PCA to {params.pca_dims} dims")
        if n * dim * 4 <= 4 * 2**30:  # fits comfortably: one randomized PCA
            x = np.concatenate(list(scaled()))
            pca = PCA(n_components=params.pca_dims, svd_solver="randomized", random_state=params.seed)
            z = pca.fit_transform(x).astype(np.float32)
            del x
        else:  # out of core: two passes over the shards
            pca = IncrementalPCA(n_components=params.pca_dims)
            buf, rows = [], 0
            for xb in scaled():
                buf.append(xb)
                rows += xb.shape[0]
                if rows >= max(params.pca_dims * 2, 2048):
                    pca.partial_fit(np.concatenate(buf))
                    buf, rows = [], 0
            if buf:
                tail = np.concatenate(buf)
                if tail.shape[0] >= params.pca_dims:
                    pca.partial_fit(tail)
            z = np.concatenate([pca.transform(xb).astype(np.float32) for xb in scaled()])
        pca_mean = pca.mean_.astype(np.float32)
        components = pca.components_.astype(np.float32)
        info["pca_explained_variance"] = float(np.sum(pca.explained_variance_ratio_))
    else:
        z = np.ascontiguousarray(np.concatenate(list(scaled())), dtype=np.float32)
    progress(0.3, f"UMAP on {z.shape[0]} × {z.shape[1]}")
    reducer = umap.UMAP(
        n_neighbors=params.n_neighbors,
        min_dist=params.min_dist,
        metric=params.metric,
        random_state=params.seed,
        n_components=2,
        low_memory=True,
    )
    xy = reducer.fit_transform(z).astype(np.float32)
    info["fit_seconds"] = time.perf_counter() - t0
    red = Reducer(list(params.layers), dim, mean, scale, pca_mean, components, reducer, "umap-learn", info)
    return red, xy


# -- saving and loading ----------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    import numba
    import pynndescent
    import sklearn
    import umap

    return {
        "umap-learn": umap.__version__,
        "pynndescent": pynndescent.__version__,
        "scikit-learn": sklearn.__version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
    }


def _sign(key: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _strip_training_matrix(um: Any) -> tuple[Any, Any]:
    """Detach the training matrix (and the search index's reference to it) for pickling."""
    raw = um._raw_data
    index = getattr(um, "_knn_search_index", None)
    um._raw_data = None
    if index is not None and getattr(index, "_raw_data", None) is raw:
        index._raw_data = None
    return raw, index


def _attach_training_matrix(um: Any, raw: Any, index: Any) -> None:
    um._raw_data = raw
    if index is not None and getattr(index, "_raw_data", "absent") is None:
        index._raw_data = raw


def save_reducer(reducer: Reducer, folder: Path, key: bytes, train_ids: np.ndarray) -> str:
    """Write the reducer's files and signed manifest into ``folder``; returns the manifest's sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    arrays = {"dim": np.array(reducer.dim)}
    for name in ("mean", "scale", "pca_mean", "components"):
        value = getattr(reducer, name)
        if value is not None:
            arrays[name] = value
    np.savez(buf, **arrays)
    atomic_write_bytes(folder / "chain.npz", buf.getvalue())
    atomic_save_npy(folder / "train_ids.npy", np.asarray(train_ids, dtype=np.int64))
    um = reducer.umap
    raw, index = _strip_training_matrix(um)
    try:
        atomic_write_bytes(folder / "umap.pkl", pickle.dumps(um, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        _attach_training_matrix(um, raw, index)
    z_source = "shards"
    if reducer.components is not None:  # small: keep it, rebuilding needs a pass over every shard
        atomic_save_npy(folder / "z.npy", np.asarray(raw, dtype=np.float32))
        z_source = "file"
    files = ["chain.npz", "train_ids.npy", "umap.pkl"] + (["z.npy"] if z_source == "file" else [])
    body = {
        "format": "latentlab-reducer-1",
        "layers": reducer.layers,
        "dim": reducer.dim,
        "backend": reducer.backend,
        "z_source": z_source,
        "files": {name: sha256_file(folder / name) for name in files},
        "info": reducer.info,
    }
    manifest = dict(body, hmac=_sign(key, body))
    data = json.dumps(manifest, sort_keys=True, indent=1).encode()
    atomic_write_bytes(folder / "manifest.json", data)
    return hashlib.sha256(data).hexdigest()


def verify_manifest(folder: Path, expected_sha256: str, key: bytes) -> dict[str, Any]:
    """Check the manifest's hash (vs the database row), its HMAC and every file's hash; return it."""
    path = folder / "manifest.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReducerIntegrityError(f"the reducer of this embedding is missing ({path})") from None
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ReducerIntegrityError("the reducer's manifest does not match the embedding's recorded sha256")
    manifest = json.loads(data)
    body = {k: v for k, v in manifest.items() if k != "hmac"}
    if not hmac.compare_digest(str(manifest.get("hmac", "")), _sign(key, body)):
        raise ReducerIntegrityError(
            "the reducer's signature is not valid (signed with another key or tampered)"
        )
    for name, digest in body["files"].items():
        if "/" in name or name.startswith("."):
            raise ReducerIntegrityError(f"the manifest names an unexpected file {name!r}")
        if sha256_file(folder / name) != digest:
            raise ReducerIntegrityError(f"{name} does not match its signed sha256; refusing to load it")
    return manifest


def load_reducer(
    folder: Path, expected_sha256: str, key: bytes, z_loader: Callable[[np.ndarray, Reducer], np.ndarray]
) -> Reducer:
    """Verify, then load. ``z_loader(train_ids, partial_reducer)`` rebuilds the training matrix from the
    shards when it was not saved."""
    manifest = verify_manifest(folder, expected_sha256, key)
    with np.load(folder / "chain.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    with open(folder / "umap.pkl", "rb") as fh:
        um = pickle.load(fh)  # verified above: signed by this installation's key
    reducer = Reducer(
        layers=list(manifest["layers"]),
        dim=int(arrays["dim"]),
        mean=arrays.get("mean"),
        scale=arrays.get("scale"),
        pca_mean=arrays.get("pca_mean"),
        components=arrays.get("components"),
        umap=um,
        backend=manifest.get("backend", "umap-learn"),
        info=manifest.get("info", {}),
    )
    if manifest["z_source"] == "file":
        z = np.load(folder / "z.npy", allow_pickle=False)
    else:
        train_ids = np.load(folder / "train_ids.npy", allow_pickle=False)
        z = z_loader(train_ids, reducer)
    index = getattr(um, "_knn_search_index", None)
    _attach_training_matrix(um, np.ascontiguousarray(z, dtype=np.float32), index)
    return reducer
