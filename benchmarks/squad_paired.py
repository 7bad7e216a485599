"""Are two SQuAD v1.1 prediction files equally good? Paired bootstrap over the questions.

Scores every question of DATA.json with the official EM/F1 (bertkit.tasks.squad.evaluate), then resamples the questions
(with replacement, the same sample for both files) to get a 95% interval for the difference B - A. An interval
that contains 0 means the two differ by no more than the choice of questions explains. It says nothing about the
spread between training seeds, which is usually larger: compare several seeds for that.

    python benchmarks/squad_paired.py dev-v1.1.json bertkit-predictions.json hf-predictions.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from bertkit.tasks.squad.evaluate import exact_score, f1_score, load_predictions


def per_question(dataset: dict, predictions: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """EM and F1 (0-100) of every question, in file order; a missing prediction scores 0, as officially."""
    em, f1 = [], []
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                golds = [a["text"] for a in qa["answers"]]
                pred = predictions.get(qa["id"])
                em.append(0.0 if pred is None else max(exact_score(pred, g) for g in golds))
                f1.append(0.0 if pred is None else max(f1_score(pred, g) for g in golds))
    return 100.0 * np.asarray(em), 100.0 * np.asarray(f1)


def paired_interval(a: np.ndarray, b: np.ndarray, samples: int, seed: int) -> tuple[float, float, float]:
    """Mean of b - a and the 2.5/97.5 percentiles of its bootstrap distribution."""
    diff = b - a
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(samples)])
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_file")
    p.add_argument("predictions_a")
    p.add_argument("predictions_b")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with open(args.data_file, encoding="utf-8") as f:
        dataset = json.load(f)
    a = per_question(dataset, load_predictions(args.predictions_a))
    b = per_question(dataset, load_predictions(args.predictions_b))
    for metric, xa, xb in (("exact_match", a[0], b[0]), ("f1", a[1], b[1])):
        mean, lo, hi = paired_interval(xa, xb, args.samples, args.seed)
        line = {"metric": metric, "questions": len(xa), "a": round(xa.mean(), 2), "b": round(xb.mean(), 2),
                "b_minus_a": round(mean, 2), "ci95": [round(lo, 2), round(hi, 2)], "zero_inside": lo <= 0 <= hi}  # fmt: skip
        print(json.dumps(line))


if __name__ == "__main__":
    main()
