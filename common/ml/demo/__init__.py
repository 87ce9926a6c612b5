"""The embedded demo models: a class-conditional digits EDM teacher and its one-step student.

Usage::

    summary = train_demo("data/models")                 # train, distil, evaluate, write files and cards
    quality = evaluate_demo(student, teacher)           # the figures stored under the cards' "quality"

Files written into the output folder (names fixed; ``.gitignore`` lets ``digits-*`` through):

    digits-edm.safetensors / digits-edm.json            teacher, EDM Heun sampler, 18 steps by default
    digits-onestep.safetensors / digits-onestep.json    student, DMD2's recipe: G(noise * 80, 80, one_hot)
    digits-onestep-sheet.png, digits-edm-sheet.png      a row per class, 10 samples each, 4x upscaled

Images: scikit-learn's 8x8 digits (values 0..16) mapped to ``v / 8 - 1`` in [-1, 1], 1 channel, bilinearly
upsampled to 16x16 (``F.interpolate``, ``align_corners=False``). Quality is measured on fixed seeds
(``eval_seeds``): an RBF SVC trained on the real digits at 16x16 classifies the samples, within-class
pairwise L2 diversity is compared with the real digits', and a 2-D UMAP of the ``encoder_bottleneck`` +
``midblock`` activations is scored by 10-nearest-neighbour class purity.
"""

from common.ml.demo.cards import contact_sheet, read_card, update_card_quality
from common.ml.demo.evaluate import DigitsClassifier, diversity, eval_seeds, evaluate_demo, knn_purity
from common.ml.demo.spec import CAPTURE_LAYERS, EVAL_SEED_BASE, LABEL_NAMES, STUDENT_NAME, TEACHER_NAME
from common.ml.demo.train import train_demo

__all__ = [
    "CAPTURE_LAYERS",
    "DigitsClassifier",
    "EVAL_SEED_BASE",
    "LABEL_NAMES",
    "TEACHER_NAME",
    "STUDENT_NAME",
    "contact_sheet",
    "diversity",
    "eval_seeds",
    "evaluate_demo",
    "knn_purity",
    "read_card",
    "train_demo",
    "update_card_quality",
]
