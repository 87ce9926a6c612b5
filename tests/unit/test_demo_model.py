"""The shipped demo models (data/models/digits-*): strict loading, card integrity, determinism, quality floor,
and registration of their cards into a fresh database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.ml.checkpoints import file_sha256, load_generator
from common.ml.demo import STUDENT_NAME, TEACHER_NAME, DigitsClassifier, eval_seeds, read_card
from common.ml.demo.sd import PROMPTS, SD_NAME
from common.ml.generation import generate
from common.ml.networks import EDMPrecond
from common.research.registry import SHIPPED_MODELS_DIR

NAMES = (TEACHER_NAME, STUDENT_NAME)
CARD_KEYS = {
    "name",
    "checkpoint",
    "sha256",
    "config",
    "label_names",
    "default_steps",
    "default_sigma_max",
    "preset",
    "resolution_note",
    "training",
    "quality",
}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cards() -> dict[str, dict]:
    return {name: read_card(SHIPPED_MODELS_DIR / f"{name}.json") for name in NAMES}


@pytest.fixture(scope="module")
def student(cards) -> EDMPrecond:
    card = cards[STUDENT_NAME]
    model, _ = load_generator(SHIPPED_MODELS_DIR / card["checkpoint"], card["config"], device="cpu")
    return model


def test_cards_have_the_documented_keys(cards):
    for name, card in cards.items():
        assert CARD_KEYS <= set(card), f"{name}: missing {CARD_KEYS - set(card)}"
        assert card["name"] == name and card["checkpoint"] == f"{name}.safetensors"
        assert card["label_names"] == [str(i) for i in range(10)]
        assert card["default_sigma_max"] == 80.0
        assert card["config"]["sigma_max"] == "inf" and card["config"]["img_channels"] == 1
        assert card["training"]["versions"]["torch"]
    assert cards[TEACHER_NAME]["default_steps"] == 18 and cards[STUDENT_NAME]["default_steps"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_shipped_checkpoint_loads_strictly_with_its_cards_config_and_hash(cards, name):
    card = cards[name]
    path = SHIPPED_MODELS_DIR / card["checkpoint"]
    assert file_sha256(path) == card["sha256"]
    config = json.loads(json.dumps(card["config"]))  # what the database hands back
    model, sha = load_generator(path, config, device="cpu")
    assert sha == card["sha256"]
    assert isinstance(model, EDMPrecond) and model.config == EDMPrecond(**config).config
    assert model.img_resolution == 16 and model.label_dim == 10


def test_shipped_checkpoints_fit_in_ten_megabytes(cards):
    total = sum((SHIPPED_MODELS_DIR / c["checkpoint"]).stat().st_size for c in cards.values())
    assert total <= 10 * 1024 * 1024


def test_shipped_text_to_image_demo_fits_in_ten_megabytes_and_loads_offline():
    from common.ml.families import get_family

    card = read_card(SHIPPED_MODELS_DIR / f"{SD_NAME}.json")
    folder = SHIPPED_MODELS_DIR / card["checkpoint"]
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 10 * 1024 * 1024
    assert card["family"] == "diffusers" and card["prompts"] == PROMPTS
    fam = get_family("diffusers")
    config, sha = fam.inspect(folder, prompts=card["prompts"], steps=2, dtype="float32")
    assert sha == card["sha256"] and config["height"] == 16 and config["latent_channels"] == 4
    model, _ = fam.load(folder, config, "cpu")
    res = fam.generate(model, [7, 1], [3, 4], steps=2, prompts=card["prompts"], guidance_scale=3.0)
    assert res.images.shape == (2, 16, 16, 3) and res.images.dtype == np.uint8


def test_one_step_generation_is_deterministic_per_seed(student):
    a = generate(student, [3, 3, 8], [7, 7, 9])
    b = generate(student, [8, 3], [9, 7])
    assert a.images.dtype == np.uint8 and a.images.shape == (3, 16, 16, 1)
    assert np.array_equal(a.images[0], a.images[1]), "same seed and class, same image"
    assert np.array_equal(a.images[2], b.images[0]) and np.array_equal(a.images[0], b.images[1])
    assert not np.array_equal(a.images[0], generate(student, [3], [8]).images[0])


def test_one_step_samples_are_classified_as_their_class(student):
    labels, seeds = eval_seeds(per_class=10)
    res = generate(student, labels, seeds, micro_batch=100)
    clf = DigitsClassifier.fit()
    assert clf.held_out_accuracy >= 0.95
    assert clf.accuracy(res.images, labels) >= 0.85


def test_contact_sheet_is_shipped():
    from PIL import Image

    with Image.open(SHIPPED_MODELS_DIR / f"{STUDENT_NAME}-sheet.png") as img:
        w, h = img.size
    assert w > 10 * 16 and h > 10 * 16


def test_shipped_cards_register_into_a_fresh_database(tmp_path: Path, cards):
    from sqlalchemy import select

    from common.models import GeneratorModel
    from common.platform import migrate
    from common.platform.db import make_engine, session_factory
    from common.research.registry import checkpoint_file, register_shipped_models
    from tests.support.settings import make_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'data' / 'latentlab.db'}")
    migrate.upgrade(settings)
    engine = make_engine(settings)
    try:
        sessions = session_factory(engine)
        with sessions.begin() as session:
            added = register_shipped_models(session, settings)
        assert set(NAMES) <= set(added)
        with sessions() as session:
            for name in NAMES:
                card = cards[name]
                row = session.scalar(select(GeneratorModel).where(GeneratorModel.name == name))
                assert row.config == card["config"] and row.label_names == card["label_names"]
                assert row.checkpoint_sha256 == card["sha256"] and row.preset == card["preset"]
                assert row.default_steps == card["default_steps"] and row.default_sigma_max == 80.0
                assert row.card["quality"] == card["quality"]
                path = checkpoint_file(settings, row)
                assert path.is_relative_to(settings.data_root) and file_sha256(path) == card["sha256"]
                load_generator(path, row.config, device="cpu")
            # the text-to-image demo: its pipeline folder copied into the data root, registered as a
            # diffusers model with its card's prompts and defaults, its weights' digest the card's
            sd_card = read_card(SHIPPED_MODELS_DIR / f"{SD_NAME}.json")
            row = session.scalar(select(GeneratorModel).where(GeneratorModel.name == SD_NAME))
            assert row.family == "diffusers" and row.label_names == sd_card["prompts"]
            assert (
                row.checkpoint_sha256 == sd_card["sha256"] and row.default_steps == sd_card["default_steps"]
            )
            assert row.config["guidance_scale"] == sd_card["defaults"]["guidance_scale"]
            folder = checkpoint_file(settings, row)
            assert folder.is_relative_to(settings.data_root) and (folder / "model_index.json").is_file()
        assert SD_NAME in added
        with sessions.begin() as session:
            assert register_shipped_models(session, settings) == [], "registering twice adds nothing"
    finally:
        engine.dispose()


def test_eval_seeds_are_class_major_and_prefix_stable():
    labels, seeds = eval_seeds(per_class=3)
    assert labels[:4] == [0, 0, 0, 1] and len(set(seeds)) == 30
    big_labels, big_seeds = eval_seeds(per_class=100)
    assert all(s in big_seeds for s in seeds) and big_labels.count(7) == 100


def test_knn_purity_counts_neighbours_of_the_same_class():
    from common.ml.demo import knn_purity

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    separated = rng.normal(size=(60, 2)) * 0.1 + labels[:, None] * 10.0
    assert knn_purity(separated, labels) == 1.0
    assert knn_purity(rng.normal(size=(60, 2)), labels) < 0.6


def test_contact_sheet_tiles_rows_and_columns():
    import io

    from PIL import Image

    from common.ml.demo import contact_sheet

    images = np.zeros((6, 16, 16, 1), dtype=np.uint8)
    images[4] = 255  # row 1, column 1
    with Image.open(io.BytesIO(contact_sheet(images, rows=2, cols=3, scale=2, gap=1))) as img:
        sheet = np.asarray(img)
    assert sheet.shape == (2 * 33 + 1, 3 * 33 + 1)
    assert sheet[1 + 33 + 5, 1 + 33 + 5] == 255 and sheet[1 + 5, 1 + 5] == 0
