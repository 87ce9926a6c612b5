"""API rows → pandas DataFrames with typed columns (nullable integers, UTC datetimes, categories), and
the columnar points format decoded (docs/API.md "Points format")."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pandas as pd

SAMPLE_COLUMNS = {
    "id": "Int64", "dataset_id": "Int64", "index": "Int64", "class_label": "Int64", "noise_seed": "Int64",
    "origin": "category", "job_id": "Int64", "variation": "Int64", "image_url": "string",
    "created_by_id": "Int64", "created_at": "datetime",
}  # fmt: skip
HISTORY_COLUMNS = {
    "sample_id": "Int64", "generation_id": "Int64", "embedding_id": "Int64", "dataset_id": "Int64",
    "job_id": "Int64", "selected_sample_id": "Int64", "mode": "category", "center_x": "Float64",
    "center_y": "Float64", "actual_x": "Float64", "actual_y": "Float64", "distance_to_intended": "Float64",
    "roundtrip_error": "Float64", "layers": "object", "steps": "Int64", "mask_steps": "Int64",
    "noise_seed": "Int64", "class_mode": "string", "class_label": "Int64", "label_weights": "object",
    "checkpoint_sha256": "string", "code_version": "string", "diagnostics": "object", "created_by": "string",
    "created_at": "datetime",
}  # fmt: skip
LINEAGE_COLUMNS = {
    "child_id": "Int64", "parent_id": "Int64", "role": "category", "weight": "Float64",
    "child_level": "Int64", "parent_level": "Int64",
}  # fmt: skip
POINT_DTYPES = {"int32": np.int32, "float32": np.float32, "int16": np.int16, "uint8": np.uint8}


def typed(rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    """A frame with exactly ``columns`` (in order) cast to their types, also when ``rows`` is empty."""
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    for name, kind in columns.items():
        if kind == "datetime":
            frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
        elif kind != "object":
            frame[name] = frame[name].astype(kind)
    return frame


def history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    flat = []
    for r in rows:
        r = dict(r)
        r["center_x"], r["center_y"] = r.pop("center", None) or (None, None)
        r["actual_x"], r["actual_y"] = r.pop("actual", None) or (None, None)
        flat.append(r)
    return typed(flat, HISTORY_COLUMNS)


def lineage_frame(graph: dict[str, Any]) -> pd.DataFrame:
    levels = {n["sample_id"]: n["level"] for n in graph["nodes"]}
    rows = [
        {
            "child_id": e["child"],
            "parent_id": e["parent"],
            "role": e["role"],
            "weight": e["weight"],
            "child_level": levels.get(e["child"]),
            "parent_level": levels.get(e["parent"]),
        }
        for e in graph["edges"]
    ]
    return typed(rows, LINEAGE_COLUMNS)


def points_frame(body: dict[str, Any]) -> pd.DataFrame:
    cols = {}
    for name, col in body["columns"].items():
        dtype = np.dtype(POINT_DTYPES[col["dtype"]]).newbyteorder("<")
        cols[name] = np.frombuffer(base64.b64decode(col["data"]), dtype=dtype).astype(dtype.newbyteorder("="))
    frame = pd.DataFrame(
        {
            "sample_id": cols["id"].astype(np.int64),
            "x": cols["x"],
            "y": cols["y"],
            "class_label": pd.array(np.where(cols["class"] < 0, 0, cols["class"]), dtype="Int64"),
            "origin": pd.Categorical.from_codes(cols["origin"].astype(np.int8), ["dataset", "generated"]),
            "projected": cols["projected"].astype(bool),
        }
    )
    frame.loc[cols["class"] < 0, "class_label"] = pd.NA
    frame.attrs["label_names"] = body.get("label_names", [])
    frame.attrs["embedding_id"] = body.get("embedding_id")
    return frame
