"""A fitted map on disk: the lean signed format (no pickle), saved and loaded with its manifest checked.

Saved per embedding, under ``embeddings/<id>/``:

* ``chain.npz``: scaler and PCA arrays;
* ``map.npz``: embedding [n, 2], sigmas [n], rhos [n];
* ``z.npy``: the training matrix, only when PCA made it small (basis + z within 10 % of the activation
  data); otherwise it is rebuilt from the activation shards at load and checked against the fit's (its
  sha256 without PCA, its row norms through the PCA's matrix product);
* ``train_ids.npy``: the sample ids the map was fitted on, in row order;
* ``manifest.json``: each file's sha256, the map's numbers and an HMAC over the manifest with a key kept
  outside the data root and the database. The embedding row stores the manifest's sha256.

``load_reducer`` verifies the manifest (its sha256 against the database row, its HMAC, every file's sha256)
before it reads anything. Fitting is ``common/maps/reducer.py``, which re-exports these names.

Usage::

    manifest_sha = save_reducer(reducer, folder, key, train_ids)
    reducer = load_reducer(folder, manifest_sha, key, z_loader)   # raises ReducerIntegrityError
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.maps.transform import Reducer, UmapMap
from common.platform.storage import atomic_save_npy, atomic_write_bytes, sha256_file

FORMAT = "latentlab-reducer-2"
SAVED_FRACTION = 0.10  # a saved reducer stays within this share of its activation data when it can


class ReducerIntegrityError(ValueError):
    """The saved reducer does not match its manifest, signature or database row; it is not loaded."""


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"numpy": np.__version__}
    for name in ("umap-learn", "pynndescent", "scikit-learn", "numba", "cuml"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _sign(key: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def z_digest(z: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(z, dtype=np.float32).data).hexdigest()


def save_reducer(reducer: Reducer, folder: Path, key: bytes, train_ids: np.ndarray) -> str:
    """Write the reducer's files and signed manifest into ``folder``; returns the manifest's sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    chain = {"dim": np.array(reducer.dim)}
    for name in ("mean", "scale", "pca_mean", "components"):
        value = getattr(reducer, name)
        if value is not None:
            chain[name] = value
    atomic_write_bytes(folder / "chain.npz", _npz_bytes(chain))
    mp = reducer.map
    z = np.ascontiguousarray(reducer.z, dtype=np.float32)
    arrays = {"embedding": mp.embedding, "sigmas": mp.sigmas, "rhos": mp.rhos}
    # z is kept when PCA made it small enough that basis + z stay within 10 % of the activation data;
    # otherwise it is rebuilt from the shards at load (one pass) and checked against the fit's z
    budget = SAVED_FRACTION * z.shape[0] * reducer.dim * 4
    keep_z = reducer.components is not None and reducer.components.nbytes + z.nbytes <= budget
    if not keep_z:
        arrays["z_row_norms"] = np.linalg.norm(z.astype(np.float64), axis=1)
    atomic_write_bytes(folder / "map.npz", _npz_bytes(arrays))
    atomic_save_npy(folder / "train_ids.npy", np.asarray(train_ids, dtype=np.int64))
    files = ["chain.npz", "map.npz", "train_ids.npy"]
    z_source = "shards"
    if keep_z:
        atomic_save_npy(folder / "z.npy", z)
        files.append("z.npy")
        z_source = "file"
    body = {
        "format": FORMAT,
        "layers": reducer.layers,
        "dim": reducer.dim,
        "backend": reducer.backend,
        "z_source": z_source,
        "z_shape": list(reducer.z.shape),
        "z_sha256": z_digest(z),
        "z_exact": reducer.components is None,  # rebuilt bit for bit (elementwise scaling only)
        "map": mp.numbers(),
        "files": {name: sha256_file(folder / name) for name in files},
        "info": reducer.info,
    }
    manifest = dict(body, hmac=_sign(key, body))
    data = json.dumps(manifest, sort_keys=True, indent=1).encode()
    atomic_write_bytes(folder / "manifest.json", data)
    return hashlib.sha256(data).hexdigest()


def saved_bytes(folder: Path) -> int:
    """Bytes on disk of a saved reducer (every file its manifest lists, and the manifest)."""
    manifest = json.loads((folder / "manifest.json").read_bytes())
    return (
        sum((folder / name).stat().st_size for name in manifest["files"])
        + (folder / "manifest.json").stat().st_size
    )


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
        try:
            actual = sha256_file(folder / name)
        except FileNotFoundError:
            raise ReducerIntegrityError(f"{name} of the reducer is missing") from None
        if actual != digest:
            raise ReducerIntegrityError(f"{name} does not match its signed sha256; refusing to load it")
    return manifest


def load_reducer(
    folder: Path, expected_sha256: str, key: bytes, z_loader: Callable[[np.ndarray, Reducer], np.ndarray]
) -> Reducer:
    """Verify, then load. ``z_loader(train_ids, partial_reducer)`` rebuilds the training matrix from the
    shards when it was not saved; the rebuilt matrix must hash to the recorded sha256."""
    manifest = verify_manifest(folder, expected_sha256, key)
    with np.load(folder / "chain.npz", allow_pickle=False) as npz:
        chain = {k: npz[k] for k in npz.files}
    if manifest.get("format") == FORMAT:
        with np.load(folder / "map.npz", allow_pickle=False) as npz:
            mp = UmapMap.from_arrays({k: npz[k] for k in npz.files}, manifest["map"])
    else:  # latentlab-reducer-1: a pickled umap.UMAP (verified above: signed by this installation's key)
        with open(folder / "umap.pkl", "rb") as fh:
            um = pickle.load(fh)
        mp = UmapMap.from_umap(um)
    placeholder = np.zeros((0, 0), dtype=np.float32)
    reducer = Reducer(
        layers=list(manifest["layers"]),
        dim=int(chain["dim"]),
        mean=chain.get("mean"),
        scale=chain.get("scale"),
        pca_mean=chain.get("pca_mean"),
        components=chain.get("components"),
        map=mp,
        z=placeholder,
        backend=manifest.get("backend", "umap-learn"),
        info=manifest.get("info", {}),
    )
    if manifest["z_source"] == "file":
        z = np.load(folder / "z.npy", allow_pickle=False)
    else:
        train_ids = np.load(folder / "train_ids.npy", allow_pickle=False)
        z = np.ascontiguousarray(z_loader(train_ids, reducer), dtype=np.float32)
        if manifest.get("z_exact", True):
            changed = "z_sha256" in manifest and z_digest(z) != manifest["z_sha256"]
        else:  # through the PCA's matrix product: equal up to BLAS rounding, so compare row norms
            with np.load(folder / "map.npz", allow_pickle=False) as npz:
                norms = npz["z_row_norms"]
            now = np.linalg.norm(z.astype(np.float64), axis=1)
            changed = now.shape != norms.shape or not np.allclose(now, norms, rtol=1e-4, atol=1e-6)
        if changed:
            raise ReducerIntegrityError(
                "the activations this map was fitted on have changed on disk since the fit (they no longer "
                "match what was recorded)"
            )
    reducer.z = np.ascontiguousarray(z, dtype=np.float32)
    if reducer.z.shape[0] != mp.embedding.shape[0]:
        raise ReducerIntegrityError(
            f"the training matrix has {reducer.z.shape[0]} rows; the map has {mp.embedding.shape[0]} points"
        )
    reducer.tree  # noqa: B018 - build the map's KD-tree now, not on the first click
    return reducer
