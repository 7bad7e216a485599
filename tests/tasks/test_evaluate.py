"""SQuAD metrics: hand-checked cases, and the recorded outputs of the official evaluate-v1.1.py / evaluate-v2.0.py.

The official scripts are other projects' code, so they are not in this repository. What they print and return on the
inputs built here is recorded in tests/fixtures/squad_eval_expected.json by
tests/fixtures/make_squad_eval_expectations.py (see tests/fixtures/README.md), which imports this module's input
builders, so both sides score the same inputs. `bertkit squad-evaluate` must print the recorded JSON character for
character, so every float matches to the last digit, and bertkit's functions must return the recorded values exactly.
Each recorded run also holds the sha256 of its input files: a test whose inputs drift from what was recorded fails
with that, not with a confusing score mismatch.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest

from bertkit.cli import main
from bertkit.tasks.squad.data import is_squad_v2
from bertkit.tasks.squad.evaluate import (
    best_threshold,
    evaluate_v1,
    evaluate_v2,
    exact_score,
    f1_score,
    load_predictions,
    normalize_answer,
)

EXPECTED_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "squad_eval_expected.json"
# git blob ids of the official scripts that made EXPECTED_FILE (tests/fixtures/README.md cites their sources).
OFFICIAL_BLOBS = {
    "evaluate-v1.1.py": "0137fbca04cf93b3dbb5744832d25723420a4861",
    "evaluate-v2.0.py": "21f52c179c8c6547ae5999215f8afd36038f20ca",
}


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recorded(expected: dict, name: str, **inputs: Path) -> dict:
    """The recorded official run `name`, after checking it was made from the very same input files."""
    run = expected["runs"][name]
    got = {role: sha256(path) for role, path in inputs.items()}
    assert got == run["inputs"], f"{name}: inputs differ from the recorded ones (tests/fixtures/README.md)"
    return run


def run_ours(capsys, *args) -> str:
    capsys.readouterr()
    assert main(["squad-evaluate", *map(str, args)]) == 0
    return capsys.readouterr().out


def squad(questions: list[tuple[str, list[str]]], version: str = "1.1", impossible: bool = False) -> dict:
    """A one-paragraph dataset of (id, gold answers); v2.0 questions with no answers get is_impossible."""
    qas = []
    for qid, answers in questions:
        qa = {"id": qid, "question": f"question {qid}?", "answers": [{"text": a, "answer_start": 0} for a in answers]}
        if impossible:
            qa["is_impossible"] = not answers
        qas.append(qa)
    return {"version": version, "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}


def write_json(tmp_path: Path, name: str, obj) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_expectations_come_from_the_official_scripts(expected):
    # The generator refuses scripts whose blob ids differ, and records the ids it checked.
    assert expected["official_scripts"] == OFFICIAL_BLOBS


# ---------------------------------------------------------------- normalisation and per-answer scores, by hand

NORMALIZED = [
    ("The Denver Broncos", "denver broncos"),
    ("  an  apple,\ta pear!\n", "apple pear"),
    ("theater anthem", "theater anthem"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("Café Été", "café été"),  # lowercasing is Unicode, punctuation removal ASCII only
    ("“quoted” — 5€", "“quoted” — 5€"),
    ("A—B", "—b"),  # the official quirk: "—" is a word boundary, so "a" is an article
    ("the", ""),
]


@pytest.mark.parametrize("text, expected_text", NORMALIZED)
def test_normalize_answer(text, expected_text):
    assert normalize_answer(text) == expected_text


def test_scores_by_hand():
    assert exact_score("the Broncos.", "Broncos") == 1
    assert f1_score("the cat sat", "cat sat on the mat") == 2 * 1.0 * 0.5 / 1.5  # precision 1, recall 2/4
    assert f1_score("cat cat", "cat") == 2 * 0.5 * 1.0 / 1.5  # token counts, not sets
    assert f1_score("dog", "cat") == 0
    # An empty answer: v1.1 never scores it, v2.0 scores it right exactly against an empty gold answer.
    assert f1_score("", "") == 0 and f1_score("", "", version_2=True) == 1
    assert f1_score("the", "", version_2=True) == 1 and f1_score("", "cat", version_2=True) == 0


def function_pairs() -> list[tuple[str, str]]:
    """(prediction, gold) pairs for the function-level comparison: the hand cases, empty ones and 500 seeded random
    ones. make_squad_eval_expectations.py records the official functions' values on exactly this list."""
    words = ["The", "the", "a", "An", "cat", "Cat.", "sat", "on", "mat", "(1990)", "1990", "Café", "—", "", " ", "U.S."]
    rng = random.Random(0)
    pairs = [(t, e) for t, e in NORMALIZED] + [("", ""), ("the", ""), ("", "cat")]
    pairs += [
        (" ".join(rng.choices(words, k=rng.randint(0, 5))), " ".join(rng.choices(words, k=rng.randint(0, 5))))
        for _ in range(500)
    ]
    return pairs


# The columns of expected["functions"]["rows"]: the pair, then the official functions' values on it
# (v1.1: normalize_answer, exact_match_score, f1_score; v2.0: normalize_answer, compute_exact, compute_f1).
FUNCTION_COLUMNS = ["prediction", "gold", "v1_normalize", "v2_normalize", "v1_exact", "v2_exact", "v1_f1", "v2_f1"]


def test_scores_equal_the_official_functions(expected):
    functions = expected["functions"]
    assert functions["columns"] == FUNCTION_COLUMNS
    pairs = function_pairs()
    assert [tuple(row[:2]) for row in functions["rows"]] == pairs, "the pairs differ from the recorded ones"
    for pred, gold, norm_v1, norm_v2, exact_v1, exact_v2, f1_v1, f1_v2 in functions["rows"]:
        assert normalize_answer(pred) == norm_v1 == norm_v2
        assert exact_score(pred, gold) == exact_v1 == exact_v2
        assert f1_score(pred, gold) == f1_v1, (pred, gold)
        assert f1_score(pred, gold, version_2=True) == f1_v2, (pred, gold)


# ---------------------------------------------------------------- whole datasets, by hand


def test_v1_by_hand_and_missing_predictions_score_zero():
    data = squad([("q1", ["Denver Broncos", "Broncos"]), ("q2", ["Denver Broncos"]), ("q3", ["Santa Clara"])])
    with pytest.warns(UserWarning, match="1 of 3 questions have no prediction and score 0: q3"):
        result = evaluate_v1(data, {"q1": "the Broncos", "q2": "Denver", "extra": "ignored"})
    assert result == {"exact_match": 100.0 * 1 / 3, "f1": 100.0 * (1 + 2 / 3) / 3}


V2_QUESTIONS = [("q1", ["Paris"]), ("q2", ["blue whale"]), ("q3", []), ("q4", [])]
V2_PREDS = {"q1": "Paris", "q2": "whale", "q3": "", "q4": "dog"}
V2_NA = {"q1": 0.1, "q2": 0.6, "q3": 0.9, "q4": 0.95}


def test_v2_by_hand():
    data = squad(V2_QUESTIONS, "v2.0", impossible=True)
    f1_q2 = 2 * 1.0 * 0.5 / 1.5  # "whale" vs "blue whale"
    assert evaluate_v2(data, V2_PREDS) == {
        "exact": 50.0,
        "f1": 100.0 * (1 + f1_q2 + 1 + 0) / 4,
        "total": 4,
        "HasAns_exact": 50.0,
        "HasAns_f1": 100.0 * (1 + f1_q2) / 2,
        "HasAns_total": 2,
        "NoAns_exact": 50.0,
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
    }
    # Threshold 0.5: q2, q3, q4 answer "" -> q2 wrong, q3 and q4 right.
    # Best threshold: start with all "" (2 no-answer questions right), then answer in increasing na-prob:
    # q1 +1 -> 3 (exact's best, at 0.1); q2 +0 exact / +2/3 F1 -> 3.67 (F1's best, at 0.6); q3 "" +0; q4 "dog" -1.
    result = evaluate_v2(data, V2_PREDS, V2_NA, na_prob_thresh=0.5)
    assert (result["exact"], result["f1"], result["NoAns_exact"]) == (75.0, 75.0, 100.0)
    assert (result["best_exact"], result["best_exact_thresh"]) == (75.0, 0.1)
    assert (result["best_f1"], result["best_f1_thresh"]) == (100.0 * (3 + f1_q2) / 4, 0.6)


def test_v2_best_threshold_counts_an_article_as_an_answer():
    # "the" normalises to "" (exact 1 against no answer), but officially any non-empty text costs 1 when answered.
    assert best_threshold({"q": "the"}, {"q": 1}, {"q": 0.5}, {"q": False}) == (100.0, 0.0)


V2_PREDS_WITHOUT_Q3 = {k: v for k, v in V2_PREDS.items() if k != "q3"}


def missing_v2_inputs(folder: Path) -> dict[str, Path]:
    return {
        "data": write_json(folder, "d-missing.json", squad(V2_QUESTIONS, "v2.0", impossible=True)),
        "pred": write_json(folder, "p-missing.json", V2_PREDS_WITHOUT_Q3),
    }


def test_v2_missing_predictions_score_zero_where_the_official_script_fails(tmp_path, expected):
    data = squad(V2_QUESTIONS, "v2.0", impossible=True)
    with pytest.warns(UserWarning, match="1 of 4 questions have no prediction"):
        result = evaluate_v2(data, V2_PREDS_WITHOUT_Q3, {k: v for k, v in V2_NA.items() if k != "q3"})
    assert (result["total"], result["NoAns_total"], result["NoAns_exact"]) == (4, 2, 0.0)  # q3 is 0, q4 "dog" 0
    assert result["best_exact"] == 100.0 * 2 / 4  # q1 right, q4 right at the best threshold (0.1), q3 never
    # A recorded fact, not a comparison: the official evaluate-v2.0.py cannot score these inputs at all. Its
    # get_raw_scores prints "Missing prediction for q3" and skips q3, then make_eval_dict sums the NoAns scores over
    # every no-answer question id and raises KeyError: 'q3' (exit status 1). bertkit scores q3 0 and warns instead.
    official = recorded(expected, "missing-v2", **missing_v2_inputs(tmp_path))
    assert official["returncode"] != 0 and official["stderr_last_line"] == "KeyError: 'q3'"
    assert official["stdout"] == "Missing prediction for q3\n"


def test_version_detection():
    assert not is_squad_v2(squad([("q", ["a"])], "1.1"))
    assert is_squad_v2(squad([("q", ["a"])], "v2.0")) and is_squad_v2(squad([("q", ["a"])], "2.0"))
    assert is_squad_v2(squad([("q", [])], "1.1", impossible=True))


# ---------------------------------------------------------------- the command, against the official scripts' output
# Input builders: make_squad_eval_expectations.py runs the official scripts on exactly these files. Thresholds are the
# -t / --na_prob_thresh values recorded for each v2.0 input, one recorded run "<name>-t<threshold>" each.


def crafted_v1_inputs(folder: Path) -> dict[str, Path]:
    data = squad([("q1", ["Denver Broncos", "Broncos"]), ("q2", ["the cat sat"])])
    return {
        "data": write_json(folder, "d-crafted-v1.json", data),
        "pred": write_json(folder, "p-crafted-v1.json", {"q1": "broncos!", "q2": "a cat sat down"}),
    }


CRAFTED_V2_THRESHOLDS = ("1.0", "0.5", "-1")


def crafted_v2_inputs(folder: Path) -> dict[str, Path]:
    return {
        "data": write_json(folder, "d-crafted-v2.json", squad(V2_QUESTIONS, "v2.0", impossible=True)),
        "pred": write_json(folder, "p-crafted-v2.json", V2_PREDS),
        "na": write_json(folder, "na-crafted-v2.json", V2_NA),
    }


def test_cli_matches_official_v1_on_crafted_data(tmp_path, capsys, expected):
    inputs = crafted_v1_inputs(tmp_path)
    official = recorded(expected, "crafted-v1", **inputs)
    assert run_ours(capsys, inputs["data"], inputs["pred"]) == official["stdout"]


def test_cli_matches_official_v2_and_writes_out_file(tmp_path, capsys, expected):
    inputs = crafted_v2_inputs(tmp_path)
    data, preds, na = inputs["data"], inputs["pred"], inputs["na"]
    assert run_ours(capsys, data, preds) == recorded(expected, "crafted-v2", data=data, pred=preds)["stdout"]
    for t in CRAFTED_V2_THRESHOLDS:
        official = recorded(expected, f"crafted-v2-t{t}", **inputs)
        assert run_ours(capsys, data, preds, "--na_prob_file", na, "--na_prob_thresh", t) == official["stdout"]
    run_ours(capsys, data, preds, "--out_file", tmp_path / "ours.json")
    official = recorded(expected, "crafted-v2-out_file", data=data, pred=preds)
    assert (tmp_path / "ours.json").read_text() == official["out_file"]


def test_cli_version_flag_overrides_the_file(tmp_path, capsys):
    data = write_json(tmp_path, "d.json", squad([("q1", ["the"])]))
    preds = write_json(tmp_path, "p.json", {"q1": ""})
    assert json.loads(run_ours(capsys, data, preds)) == {"exact_match": 100.0, "f1": 0.0}  # v1.1 keeps gold "the"
    v2 = json.loads(run_ours(capsys, data, preds, "--squad_version", "2.0"))  # v2.0 drops it: gold is [""]
    assert (v2["exact"], v2["f1"], v2["HasAns_total"]) == (100.0, 100.0, 1)


def perturb(rng: random.Random, answer: str, context_words: list[str]) -> str:
    """A prediction near a gold answer: equal, re-cased, punctuated, cut, extended, unrelated, article or empty."""
    words = answer.split()
    choice = rng.randrange(9)
    if choice == 0:
        return answer
    if choice == 1:
        return "The " + answer.upper() + "."
    if choice == 2:
        return " ".join(words[: max(1, len(words) // 2)])
    if choice == 3:
        return " ".join(words[1:])
    if choice == 4:
        i = rng.randrange(len(context_words))
        return answer + " " + " ".join(context_words[i : i + rng.randint(1, 4)])
    if choice == 5:
        i = rng.randrange(len(context_words))
        return " ".join(context_words[i : i + rng.randint(1, 6)])
    return ["", "the", "a —"][choice - 6]


def random_predictions(dataset: dict, seed: int) -> tuple[dict, dict]:
    """Perturbed predictions for every question, and no-answer scores with many ties, keys in shuffled order."""
    rng = random.Random(seed)
    preds = {}
    for article in dataset["data"]:
        for p in article["paragraphs"]:
            context_words = p["context"].split()
            for qa in p["qas"]:
                answers = qa["answers"] or qa.get("plausible_answers") or [{"text": "nothing"}]
                preds[qa["id"]] = perturb(rng, rng.choice(answers)["text"], context_words)
    ids = list(preds)
    rng.shuffle(ids)
    na = {qid: rng.choice([-2.5, -1.0, 0.0, 0.25, 0.5, 1.0, 3.0]) for qid in ids}  # ties decide best_* order
    return preds, na


def perturbed_v1_inputs(shared: Path, folder: Path) -> dict[str, Path]:
    data = shared / "squad" / "dev-v1.1-Super_Bowl_50.json"
    preds, _ = random_predictions(json.loads(data.read_text()), seed=1)
    preds.pop(next(iter(preds)))  # one unanswered question
    return {"data": data, "pred": write_json(folder, "p-perturbed-v1.json", preds)}


PERTURBED_V2_THRESHOLDS = ("1.0", "0.25")


def perturbed_v2_inputs(shared: Path, folder: Path) -> dict[str, Path]:
    data = shared / "squad" / "dev-v2.0-first5.json"
    preds, na = random_predictions(json.loads(data.read_text()), seed=2)
    return {
        "data": data,
        "pred": write_json(folder, "p-perturbed-v2.json", preds),
        "na": write_json(folder, "na-perturbed-v2.json", na),
    }


def test_cli_matches_official_on_perturbed_real_predictions(shared_data, tmp_path, capsys, expected):
    inputs = perturbed_v1_inputs(shared_data, tmp_path)
    official = recorded(expected, "perturbed-v1", **inputs)
    with pytest.warns(UserWarning, match="1 of 810 questions have no prediction"):
        ours = run_ours(capsys, inputs["data"], inputs["pred"])
    assert ours == official["stdout"]

    inputs = perturbed_v2_inputs(shared_data, tmp_path)
    for t in PERTURBED_V2_THRESHOLDS:
        official = recorded(expected, f"perturbed-v2-t{t}", **inputs)
        ours = run_ours(capsys, inputs["data"], inputs["pred"], "--na_prob_file", inputs["na"], "--na_prob_thresh", t)
        assert ours == official["stdout"]


def golden_v1_inputs(shared: Path) -> dict[str, Path]:
    return {
        "data": shared / "squad" / "dev-v1.1-Super_Bowl_50.json",
        "pred": shared / "golden" / "google-predictions-dev-v1.1-Super_Bowl_50.json",
    }


GOLDEN_V2_THRESHOLDS = ("1.0", "0.0", "-5")  # null_odds are score differences, not probabilities, so may be < 0


def golden_v2_inputs(shared: Path) -> dict[str, Path]:
    return {
        "data": shared / "squad" / "dev-v2.0-first5.json",
        "pred": shared / "golden" / "google-predictions-dev-v2.0-first5.json",
        "na": shared / "golden" / "google-predictions-dev-v2.0-first5-null_odds.json",
    }


def test_cli_matches_official_on_google_golden_predictions(shared_data, capsys, expected):
    inputs = golden_v1_inputs(shared_data)
    ours = run_ours(capsys, inputs["data"], inputs["pred"])
    assert ours == recorded(expected, "golden-v1", **inputs)["stdout"]
    assert json.loads(ours) == {"exact_match": 0.24691358024691357, "f1": 3.7513076772336027}  # noisy logits: 2/810

    inputs = golden_v2_inputs(shared_data)
    data, preds, na = inputs["data"], inputs["pred"], inputs["na"]
    assert run_ours(capsys, data, preds) == recorded(expected, "golden-v2", data=data, pred=preds)["stdout"]
    for t in GOLDEN_V2_THRESHOLDS:
        ours = run_ours(capsys, data, preds, "--na_prob_file", na, "--na_prob_thresh", t)
        assert ours == recorded(expected, f"golden-v2-t{t}", **inputs)["stdout"]
    result = json.loads(ours)
    assert (result["total"], result["HasAns_total"], result["NoAns_total"]) == (1407, 705, 702)


def test_gold_answers_score_100_on_the_full_dev_set(shared_data, tmp_path):
    dataset = json.loads((shared_data / "squad" / "dev-v1.1.json").read_text())
    preds = {qa["id"]: qa["answers"][0]["text"] for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]}
    assert len(preds) == 10570
    assert evaluate_v1(dataset, preds) == {"exact_match": 100.0, "f1": 100.0}


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "drop, json_path",
    [
        ("data", "data"),
        ("paragraphs", "data[0].paragraphs"),
        ("context", "data[0].paragraphs[0].context"),
        ("qas", "data[0].paragraphs[0].qas"),
        ("id", "data[0].paragraphs[0].qas[1].id"),
        ("question", "data[0].paragraphs[0].qas[1].question"),
        ("answers", "data[0].paragraphs[0].qas[1].answers"),
    ],
)
def test_missing_dataset_key_names_file_and_json_path(tmp_path, capsys, drop, json_path):
    data = squad([("q1", ["a"]), ("q2", ["b"])])
    paragraph = data["data"][0]["paragraphs"][0]
    parent = {"data": data, "paragraphs": data["data"][0], "context": paragraph, "qas": paragraph}
    del parent.get(drop, paragraph["qas"][1])[drop]
    path = write_json(tmp_path, "broken.json", data)
    preds = write_json(tmp_path, "p.json", {"q1": "a"})
    capsys.readouterr()
    # The command reports a user's mistake as one line on stderr and exit status 2, not a traceback.
    assert main(["squad-evaluate", str(path), str(preds)]) == 2
    err = capsys.readouterr().err
    assert re.match(r"bertkit squad-evaluate: error: .*" + re.escape(f"broken.json: {json_path} is missing"), err), err


def test_bad_predictions_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"p\.json: predictions should be a JSON object"):
        load_predictions(write_json(tmp_path, "p.json", ["q1", "a"]))
    with pytest.raises(ValueError, match=r"p\.json: the prediction for q1 should be a string, got list"):
        load_predictions(write_json(tmp_path, "p.json", {"q1": ["a"]}))
    (tmp_path / "p.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"p\.json: the predictions file is not valid JSON"):
        load_predictions(tmp_path / "p.json")


def test_na_prob_file_must_cover_the_predictions():
    data = squad(V2_QUESTIONS, "v2.0", impossible=True)
    with pytest.raises(ValueError, match="--na_prob_file lacks 1 of the predicted question ids, e.g. q4"):
        evaluate_v2(data, V2_PREDS, {k: v for k, v in V2_NA.items() if k != "q4"})


def test_paired_bootstrap_of_the_accuracy_benchmark(tmp_path):
    """benchmarks/squad_paired.py: per-question official scores and the interval of the difference."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "squad_paired.py"
    spec = importlib.util.spec_from_file_location("squad_paired", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    qas = [{"id": f"q{i}", "question": "?", "answers": [{"text": "the Denver Broncos", "answer_start": 0}]}
           for i in range(40)]  # fmt: skip
    dataset = {"data": [{"title": "t", "paragraphs": [{"context": "Denver Broncos", "qas": qas}]}]}
    good = {f"q{i}": "Denver Broncos" for i in range(40)}
    half = {f"q{i}": ("Broncos" if i % 2 else "Denver Broncos") for i in range(39)}  # q39 missing: scores 0
    em, f1 = mod.per_question(dataset, half)
    assert em.mean() == 100.0 * 20 / 40 and f1[1] == pytest.approx(100 * 2 * 1 * 0.5 / 1.5) and f1[39] == 0
    assert mod.paired_interval(f1, f1, 200, 0) == (0.0, 0.0, 0.0)
    g_em, _ = mod.per_question(dataset, good)
    mean, lo, hi = mod.paired_interval(em, g_em, 500, 0)
    assert mean == 50.0 and 0 < lo < mean < hi
