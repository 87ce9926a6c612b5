"""Model presets, device/precision choice, and the rule that common/ never pulls in Flask or Celery."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from common.ml.device import pick_device, resolve_precision, set_precision
from common.ml.networks import EDMPrecond
from common.ml.presets import get_preset, imagenet_class_names, preset_names

from .reference import REPO


def test_dmd2_imagenet64_preset(manifest):
    p = get_preset("dmd2-imagenet64")
    assert (p.name, p.architecture, p.default_steps, p.default_sigma_max) == (
        "dmd2-imagenet64",
        "dhariwal-unet",
        1,
        80.0,
    )
    assert p.config == manifest["config"]
    assert (
        len(p.label_names) == 1000 and p.label_names[0] == "tench" and p.label_names[999] == "toilet_tissue"
    )
    assert p.label_names == imagenet_class_names()


def test_packaged_class_index_is_the_reference_copy(ref_dir):
    packaged = REPO / "common" / "ml" / "data" / "imagenet_class_index.json"
    assert packaged.read_bytes() == (ref_dir / "imagenet_class_index.json").read_bytes()


def test_tiny16_preset_is_the_reference_config(ref_meta):
    p = get_preset("tiny16")
    assert p.config == ref_meta["config"] and len(p.label_names) == 10


def test_digits16_preset_is_small_with_attention_at_4x4():
    p = get_preset("digits16")
    cfg = p.config
    assert (cfg["img_resolution"], cfg["img_channels"], cfg["label_dim"]) == (16, 1, 10)
    with torch.device("meta"):
        model = EDMPrecond(**cfg)
    n = sum(q.numel() for q in model.parameters())
    assert n * 4 <= 4_000_000, f"{n} parameters = {n * 4 / 1e6:.2f} MB of float32"
    heads = {name: b.num_heads for name, b in model.model.enc.items() if name.startswith("4x4_block")}
    assert heads and all(h >= 1 for h in heads.values())
    assert p.label_names == [str(i) for i in range(10)]


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(KeyError) as info:
        get_preset("sdxl")
    assert all(name in str(info.value) for name in preset_names())


def test_presets_hand_out_copies():
    get_preset("tiny16").config["channel_mult"].append(99)
    get_preset("tiny16").label_names.clear()
    assert get_preset("tiny16").config["channel_mult"] == [1, 8]
    assert len(get_preset("tiny16").label_names) == 10


def test_string_infinity_in_configs():
    with torch.device("meta"):
        model = EDMPrecond(**get_preset("tiny16").config)
    assert model.sigma_max == float("inf") and model.sigma_min == 0.0


def test_device_choice():
    auto = pick_device()
    expected = (
        "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert auto.type == expected
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="unsupported device"):
        pick_device("meta")


def test_cpu_inference_stays_float32():
    assert resolve_precision("cpu") == torch.float32
    assert resolve_precision("cpu", "auto") == torch.float32
    assert resolve_precision("cuda", "bf16") == torch.bfloat16
    assert resolve_precision("cuda", torch.float16) == torch.float16
    with pytest.raises(ValueError, match="only supported on CUDA"):
        resolve_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("cuda", "int8")


def test_reduced_precision_flag_is_ignored_off_cuda(tiny, ref):
    x, sigma, y = (torch.from_numpy(ref[k]) for k in ("x", "sigma", "class_labels"))
    with torch.no_grad():
        before = tiny(x, sigma, y)
        set_precision(tiny, torch.bfloat16)
        assert tiny.use_fp16 and tiny.fp16_dtype == torch.bfloat16
        assert torch.equal(tiny(x, sigma, y), before), "the U-Net only switches dtype on CUDA"
    set_precision(tiny, torch.float32)
    assert not tiny.use_fp16


def test_common_ml_imports_neither_flask_nor_celery():
    code = (
        "import sys; import common.ml.networks, common.ml.hooks, common.ml.activations, "
        "common.ml.checkpoints, common.ml.generation, common.ml.presets, common.ml.device; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'celery', 'web', 'workers')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
