"""The demo models' cards (JSON beside each checkpoint) and contact sheets (a row of samples per class).

Usage::

    card = read_card("data/models/digits-onestep.json")
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.ml.demo.spec import LABEL_NAMES, PRESET, RESOLUTION_NOTE, SIGMA_MAX, STUDENT_NAME, TEACHER_NAME


def contact_sheet(images: np.ndarray, rows: int, cols: int, scale: int = 4, gap: int = 2) -> bytes:
    """Usage: ``png = contact_sheet(uint8 [rows * cols, H, W, 1|3], 10, 10)`` -> PNG bytes, row-major
    (one row per class for class-major input), each image upscaled ``scale`` times (nearest)."""
    from PIL import Image

    n, H, W, C = images.shape
    if n < rows * cols:
        raise ValueError(f"{n} images for a {rows}x{cols} sheet")
    h, w = H * scale, W * scale
    sheet = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, C), 255, dtype=np.uint8)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        tile = images[i].repeat(scale, axis=0).repeat(scale, axis=1)  # [h, w, C]
        y0, x0 = gap + r * (h + gap), gap + c * (w + gap)
        sheet[y0 : y0 + h, x0 : x0 + w] = tile
    img = Image.fromarray(sheet[..., 0] if C == 1 else sheet)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _sheet_images(images: np.ndarray, per_class: int, cols: int = 10) -> np.ndarray:
    """The first ``cols`` samples of each class from class-major ``images`` [10 * per_class, H, W, C]."""
    return np.concatenate([images[c * per_class : c * per_class + cols] for c in range(10)])


# ----------------------------------------------------------------------------------------------------------


def read_card(path: str | Path) -> dict[str, Any]:
    """Usage: ``read_card("data/models/digits-onestep.json")`` -> the model card dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    from common.platform.storage import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def update_card_quality(out_dir: str | Path, quality: Mapping[str, Any]) -> None:
    """Usage: ``update_card_quality("data/models", quality)`` -- store ``quality`` (minus ``_images``) in
    both cards: the student card gets everything, the teacher card its own figures plus the student's."""
    out = Path(out_dir)
    q = {k: v for k, v in quality.items() if not k.startswith("_")}
    for name in (STUDENT_NAME, TEACHER_NAME):
        path = out / f"{name}.json"
        if path.exists():
            card = read_card(path)
            card["quality"] = q
            _write_json(path, card)


def _card(
    name: str,
    checkpoint: str,
    sha256: str,
    config: Mapping[str, Any],
    default_steps: int,
    description: str,
    training: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "architecture": "dhariwal-unet",
        "checkpoint": checkpoint,
        "sha256": sha256,
        "config": dict(config),
        "label_names": list(LABEL_NAMES),
        "default_steps": default_steps,
        "default_sigma_max": SIGMA_MAX,
        "preset": PRESET,
        "resolution_note": RESOLUTION_NOTE,
        "training": dict(training),
        "quality": {},
    }


# ----------------------------------------------------------------------------------------------------------
