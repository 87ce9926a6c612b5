"""``Client``: every research-loop call of the HTTP API (docs/API.md) as a method named after its job kind
or route. Jobs come back as ``Job`` handles (``.wait()``), tables as DataFrames, images as PIL images,
activations as NumPy arrays. Pages are followed until the end."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentlab.frames import SAMPLE_COLUMNS, history_frame, lineage_frame, points_frame, typed
from latentlab.http import ApiError, Http, find_token
from latentlab.jobs import Job, JobFailed

__all__ = ["ApiError", "Client", "Job", "JobFailed"]


class Client:
    """A signed-in connection: ``Client(url=None, token=None, token_file=None, timeout=30)``; ``url`` falls
    back to LATENTLAB_URL (default http://127.0.0.1:8000), the token to LATENTLAB_TOKEN or a file."""

    page_size = 500  # rows per request when following pages (the API's maximum)

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        token_file: str | os.PathLike | None = None,
        timeout: float = 30.0,
    ):
        self.http = Http(url, find_token(token, token_file), timeout)

    def __repr__(self) -> str:
        return f"<latentlab.Client {self.http.url}>"

    # -- who and what ---------------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return self.http.get("/api/v1/auth/me")

    def models(self) -> list[dict[str, Any]]:
        return self.http.get("/api/v1/models")["models"]

    def datasets(self) -> list[dict[str, Any]]:
        return self.http.get("/api/v1/datasets")["datasets"]

    def dataset(self, dataset: int | str) -> dict[str, Any]:
        return self.http.get(f"/api/v1/datasets/{self._dataset_id(dataset)}")

    def embeddings(self, dataset: int | str | None = None) -> list[dict[str, Any]]:
        ds = None if dataset is None else self._dataset_id(dataset)
        return self.http.get("/api/v1/embeddings", dataset=ds)["embeddings"]

    def embedding(self, embedding: int) -> dict[str, Any]:
        return self.http.get(f"/api/v1/embeddings/{int(embedding)}")

    # -- jobs -----------------------------------------------------------------------------------------

    def submit(self, kind: str, **params: Any) -> Job:
        return Job(self.http, self.http.post("/api/v1/jobs", {"kind": kind, "params": params}))

    def generate_dataset(self, **params: Any) -> Job:
        """``generate_dataset(model="tiny", name="run1", num_samples=500, layers=[...], seed=0, ...)``"""
        return Job(self.http, self.http.post("/api/v1/datasets", params))

    def fit_embedding(self, **params: Any) -> Job:
        """``fit_embedding(dataset="run1", n_neighbors=15, min_dist=0.1, seed=0, ...)``"""
        return Job(self.http, self.http.post("/api/v1/embeddings", params))

    def generate_from_neighbors(self, **params: Any) -> Job:
        """``generate_from_neighbors(embedding=3, selected=12, neighbors=[...], variations=4, ...)``;
        the API's ``class`` key may be given as ``class_``."""
        if "class_" in params:
            params["class"] = params.pop("class_")
        return Job(self.http, self.http.post("/api/v1/generations", params))

    def job(self, job_id: int) -> Job:
        return Job(self.http, self.http.get(f"/api/v1/jobs/{int(job_id)}"))

    def cancel(self, job: int | Job) -> Job:
        job_id = job.id if isinstance(job, Job) else int(job)
        return Job(self.http, self.http.post(f"/api/v1/jobs/{job_id}/cancel"))

    def jobs(self, *, kind: str | None = None, status: str | None = None, owner: str | None = None,
             limit: int | None = None) -> list[Job]:  # fmt: skip
        """Your jobs (admins: everyone's), newest first; every page unless ``limit``."""
        out: list[Job] = []
        before = None
        while True:
            page_size = self.page_size if limit is None else min(self.page_size, limit - len(out))
            page = self.http.get(
                "/api/v1/jobs", kind=kind, status=status, owner=owner, limit=page_size, before=before
            )
            out.extend(Job(self.http, j) for j in page["jobs"])
            before = page["next_before"]
            if before is None or (limit is not None and len(out) >= limit):
                return out

    # -- tables ---------------------------------------------------------------------------------------

    def samples(self, dataset: int | str, *, class_label: int | None = None,
                origin: str | None = None) -> pd.DataFrame:  # fmt: skip
        """Every sample of a dataset (origin ``dataset`` or ``generated``), in id order."""
        ds = self._dataset_id(dataset)
        rows: list[dict[str, Any]] = []
        while True:
            page = self.http.get(
                f"/api/v1/datasets/{ds}/samples", limit=self.page_size, offset=len(rows), origin=origin,
                **({"class": class_label} if class_label is not None else {}),
            )  # fmt: skip
            rows.extend(page["samples"])
            if not page["samples"] or len(rows) >= page["total"]:
                return typed(rows, SAMPLE_COLUMNS)

    def points(self, embedding: int) -> pd.DataFrame:
        """Every point of a map: ``sample_id, x, y, class_label, origin, projected``."""
        return points_frame(self.http.get(f"/api/v1/embeddings/{int(embedding)}/points"))

    def neighbors(self, embedding: int, sample: int, k: int = 10, space: str = "2d") -> pd.DataFrame:
        """The ``k`` nearest samples, nearest first: ``sample_id, distance``."""
        path = f"/api/v1/embeddings/{int(embedding)}/neighbors"
        body = self.http.get(path, sample=sample, k=k, space=space)
        return typed(body["neighbors"], {"sample_id": "Int64", "distance": "Float64"})

    def history(self, *, limit: int | None = None, **filters: Any) -> pd.DataFrame:
        """Generations, newest first; filters as the API's (``user, dataset, class_label, parent, mode,
        embedding, since, until``). Every page unless ``limit``."""
        if "class_label" in filters:
            filters["class"] = filters.pop("class_label")
        filters = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in filters.items()}
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            page_size = self.page_size if limit is None else min(self.page_size, limit - len(rows))
            page = self.http.get("/api/v1/history", limit=page_size, offset=offset, **filters)
            rows.extend(page["generations"])
            offset = page["next_offset"]
            if offset is None or (limit is not None and len(rows) >= limit):
                return history_frame(rows)

    def lineage(self, sample: int, depth: int = 6) -> pd.DataFrame:
        """Lineage edges around a sample: ``child_id, parent_id, role, weight`` and each end's level
        relative to ``sample`` (ancestors negative)."""
        return lineage_frame(self.http.get(f"/api/v1/samples/{int(sample)}/lineage", depth=depth))

    def sample(self, sample: int) -> dict[str, Any]:
        return self.http.get(f"/api/v1/samples/{int(sample)}")

    # -- files ----------------------------------------------------------------------------------------

    def image(self, sample: int):
        """The sample's image as a ``PIL.Image``."""
        from PIL import Image

        data = self.http.request("GET", f"/api/v1/samples/{int(sample)}/image").content
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    def activations(self, sample: int, layers: list[str] | str | None = None) -> dict[str, np.ndarray]:
        """The sample's captured activations, ``{layer: array [C, H, W]}`` (all of its dataset's layers
        unless ``layers``)."""
        if layers is None:
            layers = self.dataset(self.sample(sample)["dataset_id"])["layers"]
        names = [layers] if isinstance(layers, str) else list(layers)
        out = {}
        for name in names:
            data = self.http.request(
                "GET", f"/api/v1/samples/{int(sample)}/activations", params={"layer": name}
            ).content
            out[name] = np.load(io.BytesIO(data), allow_pickle=False)
        return out

    # -- exports: whole tables as files, streamed to disk -----------------------------------------------

    def export_history(self, path: str | os.PathLike, format: str = "parquet", **filters: Any) -> Path:
        """Every history row matching ``filters`` (as ``history``) written to ``path`` as csv or parquet."""
        if "class_label" in filters:
            filters["class"] = filters.pop("class_label")
        return self._export("/api/v1/exports/history", path, format, filters)

    def export_samples(self, dataset: int | str, path: str | os.PathLike, format: str = "parquet") -> Path:
        ds = self._dataset_id(dataset)
        return self._export(f"/api/v1/exports/datasets/{ds}/samples", path, format, {})

    def export_points(self, embedding: int, path: str | os.PathLike, format: str = "parquet") -> Path:
        return self._export(f"/api/v1/exports/embeddings/{int(embedding)}/points", path, format, {})

    def _export(self, route: str, path: str | os.PathLike, fmt: str, params: dict[str, Any]) -> Path:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.part")
        response = self.http.request("GET", route, params={**params, "format": fmt}, stream=True)
        try:
            with response, open(tmp, "wb") as fh:
                for chunk in response.iter_content(1 << 16):
                    fh.write(chunk)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _dataset_id(self, dataset: int | str) -> int:
        if isinstance(dataset, int) or (isinstance(dataset, str) and dataset.isdigit()):
            return int(dataset)
        for ds in self.datasets():
            if ds["name"] == dataset:
                return int(ds["id"])
        raise ApiError(404, f"No dataset named {dataset!r}; list them with client.datasets().", "dataset")
