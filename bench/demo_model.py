"""Demo-model quality: the shipped digits-onestep student (and digits-edm teacher) measured on fixed seeds.

Usage: ``.venv/bin/python bench/demo_model.py [--models-dir data/models] [--per-class 100] [--no-write]
[--no-teacher] [--threads 1]``

Loads both shipped checkpoints strictly through ``load_generator`` with their cards' configs (checking the
sha256 against the card), generates ``--per-class`` samples per class from the fixed evaluation seeds and
prints: the classifier's held-out accuracy on real digits and its accuracy on the one-step samples (and on
the teacher's 18-step samples), within-class diversity against the real digits per class, and the 10-NN
class purity of a 2-D UMAP of the ``encoder_bottleneck`` + ``midblock`` activations. Unless ``--no-write``,
the figures are stored under ``quality`` in both cards. Prints figures; decides nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common.ml.checkpoints import file_sha256, load_generator  # noqa: E402
from common.ml.demo import (  # noqa: E402
    STUDENT_NAME,
    TEACHER_NAME,
    evaluate_demo,
    read_card,
    update_card_quality,
)
from common.research.registry import SHIPPED_MODELS_DIR  # noqa: E402


def _load(models_dir: Path, name: str):
    card = read_card(models_dir / f"{name}.json")
    path = models_dir / card["checkpoint"]
    sha = file_sha256(path)
    if sha != card["sha256"]:
        raise SystemExit(f"{path}: sha256 {sha} does not match the card's {card['sha256']}")
    model, _ = load_generator(path, card["config"], device="cpu")
    return model, card


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=SHIPPED_MODELS_DIR)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-teacher", action="store_true", help="skip the 18-step teacher comparison")
    ap.add_argument("--no-write", action="store_true", help="do not store the figures in the cards")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    student, s_card = _load(args.models_dir, STUDENT_NAME)
    teacher, t_card = (None, None) if args.no_teacher else _load(args.models_dir, TEACHER_NAME)
    print(
        f"loaded {STUDENT_NAME} ({s_card['sha256'][:12]}…)"
        + ("" if teacher is None else f" and {TEACHER_NAME}")
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    q = evaluate_demo(student, teacher, per_class=args.per_class)
    one = q["onestep"]
    print()
    print(f"classifier: {q['classifier']['model']}")
    print(f"  held-out accuracy on real digits: {q['classifier']['held_out_accuracy']:.4f}")
    print(f"one-step samples ({q['samples']['total']}, seeds {q['samples']['seeds']}):")
    print(f"  classifier accuracy: {one['classifier_accuracy']:.4f}  (target >= 0.90)")
    if "teacher" in q:
        print(f"  teacher at {q['teacher']['steps']} steps: {q['teacher']['classifier_accuracy']:.4f}")
    print("  class  accuracy  diversity(samples)  diversity(real)  ratio")
    for c, d in one["diversity"]["per_class"].items():
        acc = one["classifier_accuracy_per_class"][c]
        print(f"  {c:>5}  {acc:8.3f}  {d['samples']:18.3f}  {d['real']:15.3f}  {d['ratio']:5.3f}")
    div = one["diversity"]
    print(
        f"  diversity ratio: mean {div['mean_ratio']:.3f}, min {div['min_ratio']:.3f}  (target: mean >= 0.5)"
    )
    if "teacher" in q:
        print(f"  teacher diversity ratio: mean {q['teacher']['diversity_mean_ratio']:.3f}")
    am = one["activation_map"]
    print(
        f"  UMAP of {' + '.join(am['layers'])} ({am['dims']} dims): 10-NN class purity "
        f"{am['purity_10nn']:.4f}  (target >= 0.85)"
    )
    print(f"evaluation {q['seconds']:.0f} s, total {time.perf_counter() - t0:.0f} s")
    if not args.no_write:
        update_card_quality(args.models_dir, q)
        print(f"quality written to {args.models_dir}/{STUDENT_NAME}.json and {TEACHER_NAME}.json")
    else:
        print(json.dumps({k: v for k, v in q.items() if not k.startswith("_")}, indent=1)[:2000])


if __name__ == "__main__":
    main()
