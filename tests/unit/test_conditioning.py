"""A diffusers dataset's text conditioning checked against the model's card (common/research/conditioning.py):
defaults, refusals naming the field, and the layer table scaled to the dataset's size. No database: the model
rows are plain objects."""

from __future__ import annotations

import pytest

from common.models import GeneratorModel
from common.platform.errors import UserError
from common.research.conditioning import conditioned_layer_map, refuse_text_fields, text_conditioning

CONFIG = {
    "height": 64,
    "width": 64,
    "vae_scale_factor": 8,
    "size_multiple": 16,
    "guidance_scale": 5.0,
    "allow_guidance": True,
    "negative_prompt": "blurry",
    "layers": [
        ["down_block_0", "unet.down_blocks.0", [32, 4, 4]],
        ["mid_block", "unet.mid_block", [64, 4, 4]],
    ],
}


def model(**config) -> GeneratorModel:
    return GeneratorModel(
        name="sd",
        family="diffusers",
        architecture="diffusers-unet",
        config={**CONFIG, **config},
        label_names=["a cat", "a dog"],
    )


def cond(m, **kw):
    args = dict(prompts=None, negative_prompt=None, guidance_scale=None, height=None, width=None) | kw
    return text_conditioning(m, **args)


def test_defaults_come_from_the_model_card():
    c = cond(model())
    assert c == {
        "prompts": ["a cat", "a dog"],
        "negative_prompt": "blurry",
        "guidance_scale": 5.0,
        "height": 64,
        "width": 64,
    }
    assert cond(model(), prompts=["x"], height=32)["prompts"] == ["x"]


@pytest.mark.parametrize(
    ("config", "kw", "field", "words"),
    [
        ({}, {"prompts": []}, "params.prompts", "at least one prompt"),
        ({}, {"prompts": ["ok", ""]}, "params.prompts", "Prompt 1 is empty"),
        ({}, {"prompts": ["x" * 2001]}, "params.prompts", "truncated"),
        ({}, {"height": 40}, "params.height", "multiple of 16"),
        ({}, {"width": 8}, "params.width", "multiple of 16"),
        (
            {"allow_guidance": False, "guidance_scale": 0.0},
            {"guidance_scale": 2.0},
            "params.guidance_scale",
            "without guidance",
        ),
    ],
)
def test_bad_conditioning_is_refused_naming_the_field(config, kw, field, words):
    with pytest.raises(UserError) as err:
        cond(model(**config), **kw)
    assert err.value.field == field and words in err.value.message


def test_a_class_conditional_model_refuses_text_fields():
    edm = GeneratorModel(name="tiny", family="edm", config={}, label_names=[])
    refuse_text_fields(edm, {"prompts": None, "height": None})
    with pytest.raises(UserError) as err:
        refuse_text_fields(edm, {"prompts": None, "guidance_scale": 3.0})
    assert err.value.field == "params.guidance_scale" and "class-conditional" in err.value.message


def test_layer_shapes_scale_with_the_dataset_size():
    m = model()
    same = conditioned_layer_map(m, cond(m))
    assert same["mid_block"].shape == (64, 4, 4)
    big = conditioned_layer_map(m, cond(m, height=128, width=32))
    assert big["mid_block"].shape == (64, 8, 2) and big["down_block_0"].module == "unet.down_blocks.0"
