"""SQuAD answers and commands: Google's write_predictions to the byte, all_results.npy in both formats, the
sorted/unpadded prediction against the padded one, and squad / squad-predict / npy2json end to end on a tiny model
that learns a handful of questions."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.checkpoint.formats import save_pretrained
from bertkit.cli import build_parser, config_from_args, main
from bertkit.data.records import write_ofrecord
from bertkit.model import padding
from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering
from bertkit.model.config import BertConfig
from bertkit.runtime import dist
from bertkit.tasks.squad.data import convert_examples_to_features, read_squad_examples, squad_tokenizer
from bertkit.tasks.squad.predict import RawResults, get_final_text, predict_answers, predict_logits
from bertkit.tasks.squad.task import Npy2JsonConfig, SquadConfig, SquadLoader, run, squad_loss, train_steps


@pytest.fixture
def one_thread():
    """On two busy cores, two intra-op threads wait on each other far longer than tiny ops take."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- answers: Google's write_predictions -------------------------------------------------------------------------


@pytest.mark.parametrize("dataset, version_2", [("dev-v1.1-Super_Bowl_50", False), ("dev-v2.0-first5", True)])
def test_predictions_equal_googles(shared_data, tmp_path, dataset, version_2):
    """Google's logits in, Google's predictions.json / nbest_predictions.json / null_odds.json out, byte for byte
    (so every answer and every probability, not just to 1e-6)."""
    golden = shared_data / "golden"
    tok = squad_tokenizer(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    examples, _ = read_squad_examples(shared_data / "squad" / f"{dataset}.json", False, version_2)
    features = convert_examples_to_features(examples, tok)
    z = np.load(golden / f"google-predictions-{dataset}-logits.npz")
    preds = predict_answers(
        examples, features, RawResults(z["unique_id"], z["start_logits"], z["end_logits"]), tok, 20, 30, version_2
    )
    written = preds.write(tmp_path)
    suffixes = ["", "-nbest", "-null_odds"] if version_2 else ["", "-nbest"]
    for path, suffix in zip(written, suffixes, strict=True):
        assert path.read_bytes() == (golden / f"google-predictions-{dataset}{suffix}.json").read_bytes(), path.name
    assert len(preds.predictions) == len(examples) and all(
        abs(sum(e["probability"] for e in nbest) - 1) < 1e-9 for nbest in preds.nbest.values()
    )


@pytest.mark.parametrize("dataset, version_2", [("dev-v1.1-Super_Bowl_50", False), ("dev-v2.0-first5", True)])
def test_npy2json_equals_googles_write_predictions(shared_data, tmp_path, dataset, version_2):
    """End to end through the command: Google's logits as all_results.npy, `bertkit npy2json` builds the windows
    from the json itself and writes predictions.json / nbest_predictions.json (/ null_odds.json) equal to the
    bytes of Google's write_predictions. Training masks padding out of the span loss; answering is Google's."""
    golden = shared_data / "golden"
    z = np.load(golden / f"google-predictions-{dataset}-logits.npz")
    RawResults(z["unique_id"], z["start_logits"], z["end_logits"]).save(tmp_path / "all_results.npy")
    argv = ["npy2json", "--all_results_file", str(tmp_path / "all_results.npy"),
            "--predict_file", str(shared_data / "squad" / f"{dataset}.json"), "--output_dir", str(tmp_path / "out"),
            "--vocab_file", str(shared_data / "vocab" / "bert-base-uncased-vocab.txt"), "--do_lower_case", "True",
            "--version_2_with_negative", str(version_2)]  # fmt: skip
    assert main(argv) == 0
    names = ["predictions", "nbest_predictions", "null_odds"][: 3 if version_2 else 2]
    for name, suffix in zip(names, ["", "-nbest", "-null_odds"], strict=False):
        ours = (tmp_path / "out" / f"{name}.json").read_bytes()
        assert ours == (golden / f"google-predictions-{dataset}{suffix}.json").read_bytes(), name


def test_get_final_text():
    tok = squad_tokenizer()
    assert get_final_text("steve smith", "Steve Smith's", tok) == "Steve Smith"
    assert get_final_text("1895", "(1895-1943).", tok) == "1895"
    assert get_final_text("cafe", "Café,", tok) == "Café"  # accents stripped in the prediction, kept in the text
    assert get_final_text("nowhere", "Steve Smith's", tok) == "Steve Smith's"  # not found: the whole text


# --- all_results.npy ---------------------------------------------------------------------------------------------


def _results(n: int = 5, T: int = 7) -> RawResults:
    g = np.random.default_rng(0)
    return RawResults(
        np.arange(1000000000, 1000000000 + n),
        g.normal(size=(n, T)).astype(np.float32),
        g.normal(size=(n, T)).astype(np.float32),
    )


def test_all_results_roundtrip(tmp_path):
    r = _results()
    r.save(tmp_path / "all_results.npy")
    a = np.load(tmp_path / "all_results.npy")  # no pickle needed
    assert a.dtype.names == ("unique_id", "start_logits", "end_logits") and a.shape == (5,)
    back = RawResults.load(tmp_path / "all_results.npy")
    for name in ("unique_id", "start_logits", "end_logits"):
        np.testing.assert_array_equal(getattr(back, name), getattr(r, name))


def test_reads_the_seeds_all_results_and_keeps_each_window_once(tmp_path):
    """The seed saves a list of (unique_ids (1,), start (T,), end (T,)) as an object array; its reader cycles, so
    iter_num x batch (2709 x 4 for 10,833 windows) repeats the first windows at the end."""
    r = _results(5)
    rows = np.empty((7, 3), dtype=object)
    for i, k in enumerate([0, 1, 2, 3, 4, 0, 1]):
        rows[i] = (np.array([r.unique_id[k]], np.int32), r.start_logits[k], r.end_logits[k])
    np.save(tmp_path / "seed.npy", rows, allow_pickle=True)
    back = RawResults.load(tmp_path / "seed.npy")
    np.testing.assert_array_equal(back.unique_id, r.unique_id)
    np.testing.assert_array_equal(back.start_logits, r.start_logits)
    np.testing.assert_array_equal(back.end_logits, r.end_logits)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_to_unpickle_anything_but_arrays(tmp_path):
    rows = np.empty((1, 3), dtype=object)
    rows[0] = (_Evil(), np.zeros(3), np.zeros(3))
    np.save(tmp_path / "evil.npy", rows, allow_pickle=True)
    with pytest.raises(ValueError, match="refusing to unpickle builtins.print"):
        RawResults.load(tmp_path / "evil.npy")
    (tmp_path / "junk.npy").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"junk\.npy: cannot read all_results"):
        RawResults.load(tmp_path / "junk.npy")


# --- the model's side --------------------------------------------------------------------------------------------


TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip


@pytest.fixture
def super_bowl_windows(shared_data):
    tok = squad_tokenizer()
    examples, _ = read_squad_examples(shared_data / "squad" / "dev-v1.1-Super_Bowl_50.json", False)
    examples = examples[:60]
    return examples, convert_examples_to_features(examples, tok, 128, 48, 32), tok


def test_a_signal_stops_a_one_process_prediction_at_the_next_batch(super_bowl_windows):
    """A SIGTERM during a long prediction ends it at the next batch (exit 128 + signal), not after every window."""
    _, f, _ = super_bowl_windows
    model = BertForQuestionAnswering(BertConfig(**TINY)).eval()
    stop = dist.StopRequest()
    stop.signum = 15  # as the handler sets it
    with pytest.raises(dist.Stopped, match="while predicting") as e:
        predict_logits(model, f.input_ids, f.input_mask, f.segment_ids, 8, dist.DistEnv(stop=stop))
    assert e.value.exit_code == 143


def test_ranks_take_the_same_turns_and_stop_together(super_bowl_windows, monkeypatch):
    """With several ranks every one agrees on a stop before each turn, and each takes the same number of turns
    (the last ranks' last turn may have no batch), so the collective checks always meet; a signal any rank got
    stops all at the next turn. Two ranks simulated in turn (the collectives recorded, not run)."""
    _, f, _ = super_bowl_windows
    model = BertForQuestionAnswering(BertConfig(**TINY)).eval()
    n, batch = len(f), 8
    assert n % (2 * batch) != 0  # the ranks' shares differ by a batch
    monkeypatch.setattr(dist, "all_reduce_sum", lambda t, env: t)
    checks, seen = {}, {}
    for rank in (0, 1):
        stop = dist.StopRequest()
        monkeypatch.setattr(stop, "agreed", lambda env: checks.__setitem__(env.rank, checks.get(env.rank, 0) + 1) or 0)
        start, _ = predict_logits(
            model, f.input_ids, f.input_mask, f.segment_ids, batch, dist.DistEnv(rank, 2, stop=stop)
        )
        seen[rank] = set(np.flatnonzero((np.isfinite(start) & (start != 0)).any(1)))  # rows it computed
    assert checks[0] == checks[1] == -(-n // (2 * batch))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(n))  # every window once
    stop = dist.StopRequest()
    monkeypatch.setattr(stop, "agreed", lambda env: 15)  # another rank got SIGTERM
    with pytest.raises(dist.Stopped, match="while predicting") as e:
        predict_logits(model, f.input_ids, f.input_mask, f.segment_ids, batch, dist.DistEnv(1, 2, stop=stop))
    assert e.value.exit_code == 143


def test_bf16_prediction_in_one_autocast_context_equals_a_context_per_batch(super_bowl_windows, one_thread):
    """predict_logits opens one autocast context for all batches (the weights cast once): bit-equal to the plain
    loop that opens one per batch, on the same sorted batches."""
    from bertkit.runtime.precision import autocast

    _, f, _ = super_bowl_windows
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**TINY)).eval()
    start, end = predict_logits(model, f.input_ids, f.input_mask, f.segment_ids, 8, dist.DistEnv(), "bf16")
    lengths = f.input_mask.sum(1)
    order = np.argsort(-lengths, kind="stable")
    for i in range(0, len(f), 8):
        idx = order[i : i + 8]
        L = int(lengths[idx].max())
        ids, types, mask = (
            torch.from_numpy(a[idx, :L].astype(np.int64)) for a in (f.input_ids, f.segment_ids, f.input_mask)
        )
        with torch.no_grad(), autocast("bf16", torch.device("cpu")):
            s, e = model(ids, types, mask)
        real = f.input_mask[idx, :L].astype(bool)
        assert np.array_equal(start[idx, :L][real], s.float().numpy()[real])
        assert np.array_equal(end[idx, :L][real], e.float().numpy()[real])


def test_sorted_unpadded_prediction_equals_padded(super_bowl_windows, one_thread):
    """The fast path (windows sorted by length, batches cut to their longest window, real tokens only) against the
    plain one (file order, every window padded to max_seq_length, the padded model): the same logits at every real
    token, the same answers."""
    examples, f, tok = super_bowl_windows
    lengths = f.input_mask.sum(1)
    assert lengths.min() < 100 < lengths.max() == 128  # windows of many lengths
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**TINY)).eval()
    start, end = predict_logits(model, f.input_ids, f.input_mask, f.segment_ids, 8, dist.DistEnv())
    model.bert.unpad = False  # the plain path: padded batches through the padded model
    with torch.no_grad():
        t = {k: torch.from_numpy(getattr(f, k).astype(np.int64)) for k in ("input_ids", "segment_ids", "input_mask")}
        plain = [model(t["input_ids"][i : i + 8], t["segment_ids"][i : i + 8], t["input_mask"][i : i + 8])
                 for i in range(0, len(f), 8)]  # fmt: skip
    model.bert.unpad = None
    mask = f.input_mask.astype(bool)
    for fast, slow in ((start, torch.cat([s for s, _ in plain])), (end, torch.cat([e for _, e in plain]))):
        np.testing.assert_allclose(fast[mask], slow.numpy()[mask], atol=2e-5)
        assert np.isneginf(fast[~mask]).all()
    padded_start = torch.cat([s for s, _ in plain]).numpy()
    padded_end = torch.cat([e for _, e in plain]).numpy()
    padded_start[~mask] = padded_end[~mask] = -np.inf
    a = predict_answers(examples, f, RawResults(f.unique_id, start, end), tok)
    b = predict_answers(examples, f, RawResults(f.unique_id, padded_start, padded_end), tok)
    assert a.predictions == b.predictions
    # bf16 autocast runs and stays close
    s16, _ = predict_logits(model, f.input_ids[:8], f.input_mask[:8], f.segment_ids[:8], 8, dist.DistEnv(), "bf16")
    np.testing.assert_allclose(s16[mask[:8]], start[:8][mask[:8]], atol=0.1)


def test_squad_loss_is_googles_mean_of_two_cross_entropies_over_real_positions():
    class Fixed(torch.nn.Module):
        def forward(self, ids, types, mask):
            start = torch.tensor([[2.0, 0.0, 0.0, 9.0], [0.0, 1.0, 0.0, 5.0]])
            return start, torch.tensor([[0.0, 0.0, 3.0, 7.0], [1.0, 1.0, 1.0, 0.0]])

    b = {k: torch.zeros(2, 4, dtype=torch.long) for k in ("input_ids", "segment_ids")}
    b["input_mask"] = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])  # the last column is padding: not in the softmax
    b |= {"start_positions": torch.tensor([0, 1]), "end_positions": torch.tensor([2, 0])}
    loss, parts = squad_loss(Fixed(), b)

    def ce(row, k):
        return -row[k] + np.log(np.exp(row).sum())

    want = (ce(np.array([2.0, 0, 0]), 0) + ce(np.array([0, 1.0, 0]), 1)) / 4
    want += (ce(np.array([0, 0, 3.0]), 2) + ce(np.array([1.0, 1, 1]), 0)) / 4
    assert abs(loss.item() - want) < 1e-6 and parts == {"total_loss": loss}


def _windows(path: Path, max_seq_length: int) -> dict[str, np.ndarray]:
    """The training windows of a SQuAD json as SquadLoader's arrays, padded to max_seq_length."""
    examples, _ = read_squad_examples(path, True)
    f = convert_examples_to_features(examples, squad_tokenizer(), max_seq_length, 64, 64, is_training=True)
    return {"input_ids": f.input_ids, "input_mask": f.input_mask, "segment_ids": f.segment_ids,
            "start_positions": f.start_position, "end_positions": f.end_position}  # fmt: skip


def test_a_windows_span_loss_does_not_depend_on_its_padding(tmp_path, one_thread):
    """Padding out of the span softmax makes cutting padding columns exact: a window's loss and gradients are the
    same alone (cut to its own length), in a batch with a longer window (padded to that one's length), and
    padded to either of two --max_seq_length values (relative 1e-6). Google's loss, padding logits in, is not."""
    context, qid, question, text, start = QUESTIONS[4]
    short = tmp_path / "short.json"  # "Architecturally, ... a golden statue of the Virgin Mary.": one short window
    short.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context[:126], "qas": [
        {"answers": [{"answer_start": start, "text": text}], "question": question, "id": qid}]}]}]}))  # fmt: skip
    w128, w192 = _windows(short, 128), _windows(short, 192)
    real = int(w128["input_mask"].sum())
    assert len(w128["input_ids"]) == len(w192["input_ids"]) == 1 and real < 64
    assert (w128["input_ids"] == w192["input_ids"][:, :128]).all()
    longer = {k: v[:1] for k, v in _windows(write_questions(tmp_path / "q8.json"), 128).items()}
    assert longer["input_mask"].sum() == 128  # a full window

    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**(TINY | {"max_position_embeddings": 192})))

    def loss_and_grads(batch, loss_fn=squad_loss):
        model.zero_grad()
        loss = loss_fn(model, batch)[0]
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    def same(a, b):  # relative 1e-6: the loss, and the gradient of all parameters as one vector
        assert abs(a[0] - b[0]) <= 1e-6 * abs(b[0])
        assert (a[1] - b[1]).norm() <= 1e-6 * b[1].norm(), ((a[1] - b[1]).norm() / b[1].norm()).item()

    def uncut(arrays):  # every column, as Google feeds a window: all max_seq_length positions
        return {k: torch.from_numpy(v.astype(np.int64)) for k, v in arrays.items()}

    cut = SquadLoader(w128, 1, seed=0).next_batch()  # the loader cuts the padding columns
    assert cut["input_ids"].shape == (1, real)
    alone = loss_and_grads(cut)
    same(loss_and_grads(uncut(w128)), alone)  # padded to --max_seq_length 128
    same(loss_and_grads(uncut(w192)), alone)  # and to 192
    # In a batch with a longer window, padded to its 128: the batch's mean is the mean of the two alone.
    batch = SquadLoader({k: np.concatenate([w128[k], longer[k]]) for k in w128}, 2, seed=0).next_batch()
    assert batch["input_ids"].shape == (2, 128)
    other = loss_and_grads(SquadLoader(longer, 1, seed=0).next_batch())
    same(loss_and_grads(batch), ((alone[0] + other[0]) / 2, (alone[1] + other[1]) / 2))

    def googles(m, b):  # the softmax over every position, padding included
        start, end = m(b["input_ids"], b["segment_ids"], b["input_mask"])
        ce = torch.nn.functional.cross_entropy
        return ((ce(start, b["start_positions"]) + ce(end, b["end_positions"])) / 2,)

    assert abs(loss_and_grads(cut, googles)[0] - loss_and_grads(uncut(w192), googles)[0]) > 0.1


def test_loader_cuts_padding_and_resumes():
    g = np.random.default_rng(0)
    lengths = np.array([5, 9, 3, 7, 4, 6])
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int8)
    arrays = {"input_ids": g.integers(1, 99, (6, 12)) * mask, "input_mask": mask, "segment_ids": mask * 0,
              "start_positions": np.arange(6), "end_positions": np.arange(6)}  # fmt: skip
    loader = SquadLoader(arrays, 2, seed=3)
    batches = [loader.next_batch() for _ in range(5)]
    for b in batches:
        rows = b["start_positions"].numpy()
        assert b["input_ids"].shape == (2, lengths[rows].max()) and b["input_ids"].dtype == torch.int64
    again = SquadLoader(arrays, 2, seed=3)
    again.load_state_dict(loader.state_dict())
    ref = SquadLoader(arrays, 2, seed=3)
    [ref.next_batch() for _ in range(5)]
    assert torch.equal(again.next_batch()["start_positions"], ref.next_batch()["start_positions"])


# --- the commands, end to end ------------------------------------------------------------------------------------

# The first 8 questions of train-v1.1's University_of_Notre_Dame article (SQuAD, CC BY-SA 4.0), written here so that
# the test never skips; it checks the copy against ../shared/data when that is present.
ND = 'Architecturally, the school has a Catholic character. Atop the Main Building\'s gold dome is a golden statue of the Virgin Mary. Immediately in front of the Main Building and facing it, is a copper statue of Christ with arms upraised with the legend "Venite Ad Me Omnes". Next to the Main Building is the Basilica of the Sacred Heart. Immediately behind the basilica is the Grotto, a Marian place of prayer and reflection. It is a replica of the grotto at Lourdes, France where the Virgin Mary reputedly appeared to Saint Bernadette Soubirous in 1858. At the end of the main drive (and in a direct line that connects through 3 statues and the Gold Dome), is a simple, modern stone statue of Mary.'
ND2 = "As at most other universities, Notre Dame's students run a number of news media outlets. The nine student-run outlets include three newspapers, both a radio and television station, and several magazines and journals. Begun as a one-page journal in September 1876, the Scholastic magazine is issued twice monthly and claims to be the oldest continuous collegiate publication in the United States. The other magazine, The Juggler, is released twice a year and focuses on student literature and artwork. The Dome yearbook is published annually. The newspapers have varying publication interests, with The Observer published daily and mainly reporting university and other news, and staffed by students from both Notre Dame and Saint Mary's College. Unlike Scholastic and The Dome, The Observer is an independent publication and does not have a faculty advisor or any editorial oversight from the University. In 1987, when some students believed that The Observer began to show a conservative bias, a liberal newspaper, Common Sense was published. Likewise, in 2003, when other students believed that the paper showed a liberal bias, the conservative paper Irish Rover went into production. Neither paper is published as often as The Observer; however, all three are distributed to all students. Finally, in Spring 2008 an undergraduate journal for political science research, Beyond Politics, made its debut."
QUESTIONS = [
    (ND, "5733be284776f41900661182", "To whom did the Virgin Mary allegedly appear in 1858 in Lourdes France?", "Saint Bernadette Soubirous", 515),
    (ND, "5733be284776f4190066117f", "What is in front of the Notre Dame Main Building?", "a copper statue of Christ", 188),
    (ND, "5733be284776f41900661180", "The Basilica of the Sacred heart at Notre Dame is beside to which structure?", "the Main Building", 279),
    (ND, "5733be284776f41900661181", "What is the Grotto at Notre Dame?", "a Marian place of prayer and reflection", 381),
    (ND, "5733be284776f4190066117e", "What sits on top of the Main Building at Notre Dame?", "a golden statue of the Virgin Mary", 92),
    (ND2, "5733bf84d058e614000b61be", "When did the Scholastic Magazine of Notre dame begin publishing?", "September 1876", 248),
    (ND2, "5733bf84d058e614000b61bf", "How often is Notre Dame's the Juggler published?", "twice", 441),
    (ND2, "5733bf84d058e614000b61c0", "What is the daily student paper at Notre Dame called?", "The Observer", 598),
]  # fmt: skip


def write_questions(path: Path) -> Path:
    paragraphs: dict[str, list] = {}
    for context, qid, q, text, start in QUESTIONS:
        paragraphs.setdefault(context, []).append(
            {"answers": [{"answer_start": start, "text": text}], "question": q, "id": qid}
        )
    data = [
        {
            "title": "University_of_Notre_Dame",
            "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()],
        }
    ]
    path.write_text(json.dumps({"data": data, "version": "1.1"}))
    return path


def test_inline_questions_are_the_real_ones(shared_data, tmp_path):
    real = json.loads((shared_data / "squad" / "train-v1.1-University_of_Notre_Dame.json").read_text())
    real_qas = {qa["id"]: (p["context"], qa) for p in real["data"][0]["paragraphs"] for qa in p["qas"]}
    for context, qid, q, text, start in QUESTIONS:
        rc, qa = real_qas[qid]
        assert (rc, qa["question"], qa["answers"][0]) == (context, q, {"answer_start": start, "text": text})


def tiny_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_bert_config.json"
    BertConfig(**(TINY | {"hidden_size": 64, "intermediate_size": 128})).to_json_file(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`bertkit squad --do_train --do_predict` on the 8 questions: a 2-layer, hidden-64 model learns them."""
    d = tmp_path_factory.mktemp("squad")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["squad", "--do_train", "--do_predict", "--train_file", str(write_questions(d / "q8.json")),
                "--predict_file", str(d / "q8.json"), "--bert_config_file", str(tiny_config_file(d)),
                "--max_seq_length", "128", "--doc_stride", "64", "--batch_size_per_device", "8",
                "--learning_rate", "1e-3", "--num_epochs", "120", "--loss_print_every_n_iter", "1000",
                "--output_dir", str(d / "out"), "--model_save_dir", str(d / "snapshots"), "--log_dir", str(d / "log"),
                "--save_last_snapshot", "--device", "cpu", "--seed", "1"]  # fmt: skip
        # Memorising these 8 questions in 330 steps is seed-sensitive with padding out of the span loss: from
        # seeds 12345 and 3 the tiny model still mixes up two pairs of answers (EM 75, 87.5), from 1 and 2 it has
        # all 8 (with padding logits in the loss, 12345, 2 and 3 all reached 100).
        result = run(config_from_args(SquadConfig, build_parser().parse_args(argv)))
    finally:
        torch.set_num_threads(before)
    return d, result


def test_evaluation_inside_training_leaves_signals_to_the_training_loop(tmp_path, monkeypatch, one_thread):
    """An evaluation during training (--eval_every_n_iter) runs without the stop request, so a signal then waits
    for the loop's stop check, which writes the snapshot; the closing prediction stops at once."""
    import bertkit.tasks.squad.task as squad_task

    calls, real = [], squad_task.predict_logits
    monkeypatch.setattr(squad_task, "predict_logits", lambda *a, **k: calls.append(a[5].stop) or real(*a, **k))
    q8 = str(write_questions(tmp_path / "q8.json"))
    argv = ["squad", "--do_train", "--do_predict", "--train_file", q8, "--predict_file", q8, "--bert_config_file",
            str(tiny_config_file(tmp_path)), "--max_seq_length", "96", "--doc_stride", "32", "--batch_size_per_device",
            "8", "--iter_num", "4", "--eval_every_n_iter", "2", "--output_dir", str(tmp_path / "out"),
            "--model_save_dir", str(tmp_path / "snaps"), "--log_dir", str(tmp_path / "log"), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert len(calls) >= 3 and all(s is None for s in calls[:-1]) and calls[-1] is not None


def test_tiny_model_learns_a_handful_of_questions(trained):
    d, result = trained
    assert result["eval"]["f1"] > 90, result["eval"]
    assert result["train"]["step"] == 330  # the seed's count for --num_epochs: ceil(120 epochs x 22 windows / batch 8)
    preds = json.loads((d / "out" / "predictions.json").read_text())
    assert preds["5733bf84d058e614000b61bf"] == "twice"
    assert (d / "out" / "all_results.npy").is_file() and list((d / "out" / "cache").glob("squad-windows-*.npz"))
    records = [json.loads(line) for line in (d / "log" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_f1" in r]  # one evaluation, the closing one, ends the log
    assert evals == records[-1:] == [{"step": 330, **{f"eval_{k}": v for k, v in result["eval"].items()}}]


def test_squad_predict_and_npy2json(trained, tmp_path, capsys, one_thread):
    d, _ = trained
    snapshot, q8 = d / "snapshots" / "last_snapshot", str(d / "q8.json")
    common = ["--predict_file", q8, "--max_seq_length", "128", "--doc_stride", "64"]
    assert (
        main(["squad-predict", "--init_checkpoint", str(snapshot), "--output_dir", str(tmp_path / "p"), *common]) == 0
    )
    out = capsys.readouterr().out
    assert "new (0): -" in out and '"f1": 100.0' in out and "note: this model was fine-tuned" not in out
    assert (tmp_path / "p" / "predictions.json").read_text() == (d / "out" / "predictions.json").read_text()
    # windows other than the fine-tuning run's: a note naming the flags to pass
    other = ["--predict_file", q8, "--max_seq_length", "96", "--doc_stride", "64", "--output_dir", str(tmp_path / "o")]
    assert main(["squad-predict", "--init_checkpoint", str(snapshot), *other]) == 0
    assert "fine-tuned with --max_seq_length 128 (its run_config.json); predicting with 96" in capsys.readouterr().out
    argv = ["npy2json", "--all_results_file", str(tmp_path / "p" / "all_results.npy"), "--output_dir", str(tmp_path / "j"),
            "--bert_config_file", "ignored.json", "--do_predict=True", *common]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "j" / "nbest_predictions.json").read_bytes() == (
        tmp_path / "p" / "nbest_predictions.json"
    ).read_bytes()
    # Nothing of the user's is replaced without --overwrite_output_dir.
    assert main(argv) == 2
    assert "already exist; pass --overwrite_output_dir" in capsys.readouterr().err
    assert main([*argv, "--overwrite_output_dir"]) == 0


def test_seed_record_windows_give_the_same_logits(trained, tmp_path, capsys, one_thread):
    """The seed's OFRecord windows (unique_ids, input_ids, input_mask, segment_ids), read --data_dir, with
    iter_num x batch beyond the windows: each window predicted once, the same all_results as from the json."""
    d, _ = trained
    tok = squad_tokenizer()
    examples, _ = read_squad_examples(d / "q8.json", False)
    f = convert_examples_to_features(examples, tok, 128, 64, 64)
    (tmp_path / "dev").mkdir()
    write_ofrecord(tmp_path / "dev" / "part-0", [
        {"unique_ids": f.unique_id[i : i + 1], "input_ids": f.input_ids[i], "input_mask": f.input_mask[i].astype(np.int32),
         "segment_ids": f.segment_ids[i].astype(np.int32)} for i in range(len(f))
    ])  # fmt: skip
    argv = ["squad-predict", "--model_load_dir", str(d / "snapshots" / "last_snapshot"), "--data_dir", str(tmp_path / "dev"),
            "--data_part_num", "1", "--seq_length", "128", "--iter_num", "3", "--batch_size_per_device", "10",
            "--output_dir", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    assert not (tmp_path / "r" / "predictions.json").exists()  # no json given: only the logits
    mine, ref = RawResults.load(tmp_path / "r" / "all_results.npy"), RawResults.load(d / "out" / "all_results.npy")
    np.testing.assert_array_equal(mine.unique_id, ref.unique_id)
    np.testing.assert_allclose(mine.start_logits, ref.start_logits, atol=1e-5)
    # ... and with the json beside them, the answers too
    assert main([*argv, "--predict_file", str(d / "q8.json"), "--max_seq_length", "128", "--doc_stride", "64",
                 "--overwrite_output_dir"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "r" / "predictions.json").read_text()) == json.loads(
        (d / "out" / "predictions.json").read_text()
    )


def test_train_from_records_and_a_pretraining_checkpoint(tmp_path, capsys, one_thread):
    """--init_checkpoint takes a pretraining checkpoint: encoder loaded, QA head new, pretraining heads ignored,
    step 0; the training windows come from the seed's OFRecords (--train_data_dir)."""
    cfg = BertConfig(**TINY)
    torch.manual_seed(0)
    save_pretrained(BertForPreTraining(cfg), cfg, tmp_path / "pretrained")
    tok = squad_tokenizer()
    examples, _ = read_squad_examples(write_questions(tmp_path / "q8.json"), True)
    f = convert_examples_to_features(examples, tok, 128, 64, 64, is_training=True)
    (tmp_path / "train").mkdir()
    write_ofrecord(tmp_path / "train" / "part-0", [
        {"input_ids": f.input_ids[i], "input_mask": f.input_mask[i].astype(np.int32), "segment_ids": f.segment_ids[i].astype(np.int32),
         "start_positions": f.start_position[i : i + 1], "end_positions": f.end_position[i : i + 1]} for i in range(len(f))
    ])  # fmt: skip
    argv = ["squad", "--do_train=True", "--train_data_dir", str(tmp_path / "train"), "--seq_length", "128",
            "--init_checkpoint", str(tmp_path / "pretrained"), "--batch_size_per_device", "4", "--num_epochs", "1",
            "--output_dir", str(tmp_path / "out"), "--model_save_dir", str(tmp_path / "snaps"), "--log_dir", str(tmp_path),
            "--loss_print_every_n_iter", "1", "--train_example_num", "22"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "new (2): qa.weight, qa.bias" in out
    assert "ignored (" in out and "mlm." in out and "nsp." in out and "bert.pooler" in out
    assert "loaded (" in out and "bert.layers.{0..1}.attn.qkv.weight" in out
    # the model that runs is the checkpoint's, whatever the (seed's BERT-large) size flags in the banner say
    assert "num_hidden_layers = 24" in out
    assert "model from the checkpoint's config; the size flags above are not used: 2 layers, hidden 32," in out
    assert "iter 0, total_loss" in out  # from step 0; record windows: the seed's count
    assert "iter_num 6 (ceil(1 epochs x 22 windows / batch 4): the seed's count)" in out


@pytest.mark.parametrize(
    "flags, steps, rule",
    [
        (["--num_train_epochs", "2"], 4, "int(8 questions / batch 4 x 2 epochs): Google's count"),
        (["--num_train_epochs", "2.9"], 5, "int(8 questions / batch 4 x 2.9 epochs): Google's count"),
        (["--num_epochs", "2"], 11, "ceil(2 epochs x 22 windows / batch 4): the seed's count"),
        ([], 17, "ceil(3 epochs x 22 windows / batch 4): the seed's count"),
    ],
)
def test_step_count_is_googles_for_num_train_epochs(flags, steps, rule):
    """--num_train_epochs with --train_file counts questions as Google's run_squad.py does (truncated); --num_epochs
    and the default count windows as the seed does, and so does record input, whose questions are not known."""
    cfg = config_from_args(SquadConfig, build_parser().parse_args(["squad", "--train_file", "q.json", *flags]))
    assert train_steps(cfg, windows=22, questions=8, global_batch=4) == (steps, rule)
    assert train_steps(cfg, windows=22, questions=None, global_batch=4)[1].endswith("the seed's count")


def test_skipped_training_questions_are_reported_at_the_end(tmp_path, capsys, one_thread):
    path = write_questions(tmp_path / "q.json")
    data = json.loads(path.read_text())
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "Lourdes France"  # not at answer_start
    path.write_text(json.dumps(data))
    argv = ["squad", "--train_file", str(path), "--bert_config_file", str(tiny_config_file(tmp_path)),
            "--max_seq_length", "128", "--num_train_epochs", "1", "--train_batch_size", "4", "--output_dir",
            str(tmp_path / "o"), "--model_save_dir", str(tmp_path / "s"), "--log_dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "iter_num 1 (int(7 questions / batch 4 x 1 epochs): Google's count)" in out  # the skipped one not counted
    last = out.strip().splitlines()[-1]
    assert "skipped 1 training question" in last and "5733be284776f41900661182" in last


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_epochs", "2", "--num_train_epochs", "3"], "--num_epochs 2.0 and --num_train_epochs 3.0 name the same"),
        (["--model_load_dir", "a", "--init_checkpoint", "b"], "--model_load_dir a and --init_checkpoint b"),
        ([], "nothing to do"),
        (["--do_train"], "--do_train needs one of --train_file"),
        (["--do_predict"], "--do_predict needs --predict_file"),
        (["--train_file", "t.json", "--train_batch_size", "30", "--gpu_num_per_node", "4"], "multiple of the 4"),
        (["--train_file", "t.json", "--max_seq_length", "64", "--max_query_length", "64"], "must exceed"),
    ],
)
def test_config_errors_name_the_flags(flags, message, capsys):
    with pytest.raises(SystemExit):
        main(["squad", *flags])
    assert message in capsys.readouterr().err


def test_config_reconciles_the_seeds_and_googles_names():
    cfg = SquadConfig.from_flags(data_dir="d", data_part_num=2, num_train_epochs=2.0, train_batch_size=64,
                                 gpu_num_per_node=2, init_checkpoint="ckpt", do_eval=True, eval_data_dir="e",
                                 num_nodes=1).flat()  # fmt: skip
    assert (cfg["train_data_dir"], cfg["train_data_part_num"], cfg["num_epochs"], cfg["batch_size_per_device"]) == (
        "d", 2, 2.0, 32)  # fmt: skip
    assert (cfg["model_load_dir"], cfg["do_predict"], cfg["do_train"], cfg["seq_length"], cfg["output_dir"]) == (
        "ckpt", True, True, 384, "squad_output")  # fmt: skip
    assert Npy2JsonConfig.from_flags(predict_file="p.json").answers.output_dir == "."
    # Google's way: the fine-tuned model and the log in --output_dir unless the seed's flags say otherwise
    assert (cfg["model_save_dir"], cfg["log_dir"], cfg["save_last_snapshot"]) == ("squad_output", "squad_output", True)
    seed = SquadConfig.from_flags(data_dir="d", model_save_dir="m", log_dir="l", save_last_snapshot=False).run
    assert (seed.model_save_dir, seed.log_dir, seed.save_last_snapshot) == ("m", "l", False)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fine_tuning_loop_equals_a_plain_hugging_face_loop(tiny_cfg, tmp_path, dropout):
    """bertkit's SQuAD training (train.fit + squad_loss, AdamW, Google's schedule, clipping) and a plain loop over
    transformers' BertForQuestionAnswering from the same weights on the same batches give the same losses. The
    plain loop's loss leaves padding positions out of the span softmax, as bertkit's does (Google's does not).

    With dropout on, both start from the same RNG state: the two models draw their dropout masks in the same order
    and shapes (embeddings; per layer attention probabilities, attention output, FFN output), so the masks are the
    same and so are the losses. transformers' eager attention drops probabilities with F.dropout, as bertkit does.
    """
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle ([test] extra)")
    from bertkit.checkpoint.convert import to_hf
    from bertkit.train.config import TrainConfig
    from bertkit.train.loop import Task, fit
    from bertkit.train.optim import learning_rate

    tiny_cfg.hidden_dropout_prob = tiny_cfg.attention_probs_dropout_prob = dropout
    torch.manual_seed(0)
    ours = BertForQuestionAnswering(tiny_cfg)
    hf = transformers.BertForQuestionAnswering(
        transformers.BertConfig(**tiny_cfg.to_dict(), attn_implementation="eager")
    )
    hf.load_state_dict(to_hf(ours.state_dict(), tiny_cfg.num_hidden_layers), strict=True)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(5):
        mask = (torch.arange(12)[None, :] < torch.randint(6, 13, (4, 1), generator=g)).long()
        start = torch.randint(1, 6, (4,), generator=g)
        # Padding carries id 7, not 0: transformers freezes the id-0 row (padding_idx), Google and bertkit do not.
        ids = torch.randint(1, 99, (4, 12), generator=g) * mask + 7 * (1 - mask)
        batches.append({"input_ids": ids, "input_mask": mask,
                        "segment_ids": (torch.arange(12)[None, :] > 2).long() * mask, "start_positions": start,
                        "end_positions": start + 1})  # fmt: skip

    class Batches:
        def __iter__(self):
            return iter(batches)

        def state_dict(self):
            return {}

    tc = TrainConfig.from_flags(learning_rate=1e-3, batch_size_per_device=4, iter_num=5, warmup_batches=1, optimizer="adamw",
                     loss_print_every_n_iter=100, model_save_every_n_iter=10**9, log_dir=str(tmp_path / "log"), model_save_dir=str(tmp_path / "save"))  # fmt: skip
    with torch.no_grad():  # the first batch's loss without dropout, before any step
        plain_first = squad_loss(ours.eval(), batches[0])[0].item()
    torch.manual_seed(1234)
    history = []
    fit(ours, tiny_cfg, Task(squad_loss, Batches()), tc, dist.DistEnv(), print_fn=lambda s: None, on_log=history.append)
    ours_losses = [r["total_loss"] for r in history]
    decay = [p for n, p in hf.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    rest = [p for n, p in hf.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, eps=1e-6)  # fmt: skip
    hf_losses = []
    hf.train()
    torch.manual_seed(1234)
    for step, b in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, 1e-3, 1, 5)
        out = hf(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])
        ce = torch.nn.functional.cross_entropy
        pad = b["input_mask"] == 0  # the same mask as bertkit's loss: padding positions out of the span softmax
        start, end = out.start_logits.masked_fill(pad, -torch.inf), out.end_logits.masked_fill(pad, -torch.inf)
        loss = (ce(start, b["start_positions"]) + ce(end, b["end_positions"])) / 2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        hf_losses.append(loss.item())
    assert len(ours_losses) == 5
    assert max(abs(a - b) for a, b in zip(ours_losses, hf_losses, strict=True)) < 1e-4
    # dropout really ran (or really did not): the first step's loss against the same weights without it
    assert (abs(ours_losses[0] - plain_first) > 1e-3) == (dropout > 0)
    assert dropout or hf_losses[-1] < hf_losses[0]


def test_unpadded_training_equals_padded_at_dropout_0(tmp_path, one_thread, monkeypatch):
    """`bertkit squad --unpad True` (real tokens only) trains as the padded path does when no dropout is drawn:
    the same loss at every logged step (relative 1e-5), 12 steps on windows of different lengths."""
    cfg_file = tmp_path / "bert_config.json"
    BertConfig(**TINY).to_json_file(cfg_file)  # dropout 0
    q = write_questions(tmp_path / "q8.json")
    losses, calls = {}, []
    real = padding.Unpadded.from_mask
    monkeypatch.setattr(padding.Unpadded, "from_mask", classmethod(lambda cls, m: calls.append(unpad) or real(m)))
    for unpad in ("False", "True"):
        d = tmp_path / unpad
        argv = ["squad", "--do_train", "--train_file", str(q), "--bert_config_file", str(cfg_file),
                "--max_seq_length", "128", "--doc_stride", "64", "--batch_size_per_device", "4", "--iter_num", "12",
                "--learning_rate", "1e-3", "--loss_print_every_n_iter", "1", "--output_dir", str(d / "out"),
                "--model_save_dir", str(d / "snapshots"), "--log_dir", str(d / "log"), "--device", "cpu",
                "--seed", "1", "--unpad", unpad]  # fmt: skip
        assert main(argv) == 0
        lines = (d / "log" / "metrics.jsonl").read_text().splitlines()
        losses[unpad] = [json.loads(line)["total_loss"] for line in lines if "total_loss" in line]
    assert len(losses["True"]) == 12 and calls == ["True"] * 12  # the fast path taken with --unpad only
    np.testing.assert_allclose(losses["True"], losses["False"], rtol=1e-5)
