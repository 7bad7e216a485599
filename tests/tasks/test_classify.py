"""`bertkit classify` end to end on a tiny model and tiny GLUE-format files: it learns, evaluates, predicts (GLUE's
submission file), resumes exactly, reads OneFlow's OFRecord form to the same result, runs in two processes; the
padding cut changes no logit; the training loop equals a plain transformers loop; bad flags and files are named."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.cli import main
from bertkit.model.bert import BertForSequenceClassification
from bertkit.model.config import BertConfig
from bertkit.runtime import dist
from bertkit.tasks.glue import data as glue
from bertkit.tasks.glue.evaluate import mean_batch_loss, predict_logits
from bertkit.tasks.glue.task import ClassifyConfig, ClassifyLoader, classification_loss, regression_loss

WORDS = "yes no the cat dog sat ran on a mat rug and then it was red blue big small".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture
def one_thread():
    """On two busy cores, two intra-op threads wait on each other far longer than tiny ops take."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    """A free loopback port for the two-process runs (the default 29500 may be held by another job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_task(d: Path, n_train: int = 48, seed: int = 0, stsb: bool = False) -> Path:
    """RTE-format (or STS-B-format) train/dev/test files whose label is the first word of sentence1 (yes/no), a
    tiny vocab.txt and a tiny bert_config.json."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def pair(i: int) -> tuple[str, str, int]:
        y = int(rng.integers(0, 2))
        a = " ".join(["yes" if y else "no", *rng.choice(WORDS[2:], int(rng.integers(2, 9)))])
        return a, " ".join(rng.choice(WORDS[2:], int(rng.integers(1, 6)))), y

    for split, n in (("train", n_train), ("dev", 16), ("test", 8)):
        rows = [pair(i) for i in range(n)]
        if stsb:
            head = "index genre filename year old_index source1 source2 sentence1 sentence2" + (
                " score" if split != "test" else ""
            )
            lines = [head.replace(" ", "\t")] + [
                "\t".join([str(i), "g", "f", "y", "o", "s", "s", a, b] + ([f"{4.0 * y + 0.5:.1f}"] if split != "test" else []))
                for i, (a, b, y) in enumerate(rows)
            ]  # fmt: skip
        else:
            head = "index\tsentence1\tsentence2" + ("\tlabel" if split != "test" else "")
            label = ("not_entailment", "entailment")
            lines = [head] + [f"{i}\t{a}\t{b}" + (f"\t{label[y]}" if split != "test" else "") for i, (a, b, y) in enumerate(rows)]  # fmt: skip
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (d / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=64).to_json_file(d / "tiny.json")  # fmt: skip
    return d


def common(d: Path, out: Path) -> list[str]:
    return ["--data_dir", str(d), "--vocab_file", str(d / "vocab.txt"), "--bert_config_file", str(d / "tiny.json"),
            "--max_seq_length", "24", "--output_dir", str(out / "out"), "--model_save_dir", str(out / "snaps"),
            "--log_dir", str(out / "log"), "--device", "cpu"]  # fmt: skip


TRAIN = ["classify", "--task_name", "rte", "--do_train", "--do_eval", "--learning_rate", "3e-3", "--train_batch_size", "8",
         "--iter_num", "36", "--warmup_batches", "3", "--loss_print_every_n_iter", "12", "--model_save_every_n_iter", "18",
         "--save_last_snapshot", "--eval_every_n_iter", "24"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`bertkit classify --do_train --do_eval --do_predict` on the yes/no task: the tiny model learns it."""
    d = write_task(tmp_path_factory.mktemp("cls") / "RTE")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*TRAIN, "--do_predict", *common(d, d / "run")]) == 0
    finally:
        torch.set_num_threads(before)
    return d


def read_results(path: Path) -> dict[str, str]:
    return dict(line.split(" = ") for line in path.read_text().splitlines())


def test_learns_evaluates_and_writes_glue_submission(trained):
    d = trained
    results = read_results(d / "run" / "out" / "eval_results.txt")
    assert list(results) == ["eval_accuracy", "eval_loss", "global_step", "loss"]  # Google's keys, sorted
    assert float(results["eval_accuracy"]) == 1.0 and results["global_step"] == "36"
    assert float(results["loss"]) == pytest.approx(float(results["eval_loss"]), rel=1e-6)  # 16 dev rows, batches of 8
    lines = (d / "run" / "out" / "RTE.tsv").read_text().splitlines()
    truth = ["entailment" if line.split("\t")[1].startswith("yes") else "not_entailment"
             for line in (d / "test.tsv").read_text().splitlines()[1:]]  # fmt: skip
    assert lines == ["index\tprediction"] + [f"{i}\t{t}" for i, t in enumerate(truth)]
    assert len((d / "run" / "out" / "test_results.tsv").read_text().splitlines()) == 8
    assert (d / "run" / "snaps" / "snapshot_18").is_dir()
    records = [json.loads(line) for line in (d / "run" / "log" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [24, 36]  # --eval_every_n_iter 24, then the closing evaluation
    assert records[-1] == {"step": 36, "eval_accuracy": 1.0, "eval_loss": float(results["eval_loss"])}
    assert len([r for r in records if "total_loss" in r]) == 36


def test_resume_equals_the_uninterrupted_run(trained, tmp_path, one_thread):
    d = trained
    argv = [*TRAIN, *common(d, tmp_path), "--resume", str(d / "run" / "snaps" / "snapshot_18")]
    assert main(argv) == 0
    assert (tmp_path / "out" / "eval_results.txt").read_text() == (d / "run" / "out" / "eval_results.txt").read_text()


def test_oneflow_records_train_to_the_same_model(trained, tmp_path, one_thread, capsys):
    """create-glue-data's OFRecord parts read by --train_data_dir / --eval_data_dir: the same batches, so the same
    losses and dev results as from the tsv files."""
    d = trained
    rec = tmp_path / "records"
    assert main(["create-glue-data", "--task_name", "RTE", "--data_dir", str(d), "--output_dir", str(rec),
                 "--vocab_file", str(d / "vocab.txt"), "--max_seq_length", "24", "--part_num", "3"]) == 0  # fmt: skip
    flags = [a for a in common(d, tmp_path) if a != "--data_dir" and a != str(d)]
    argv = [*TRAIN, *flags, "--train_data_dir", str(rec), "--eval_data_dir", str(rec), "--train_example_num", "48",
            "--seq_length", "24"]  # fmt: skip
    del argv[argv.index("--max_seq_length") : argv.index("--max_seq_length") + 2]
    capsys.readouterr()
    assert main(argv) == 0
    assert (tmp_path / "out" / "eval_results.txt").read_text() == (d / "run" / "out" / "eval_results.txt").read_text()


@pytest.mark.parametrize("fmt", ["bertkit", "hf", "oneflow"])
def test_eval_only_from_the_fine_tuned_model_in_each_format(trained, tmp_path, one_thread, fmt):
    """--do_eval --init_checkpoint: the fine-tuned classifier written as bertkit, Hugging Face or OneFlow, its
    config and vocab.txt taken from beside it; the same dev results as at the end of training."""
    from bertkit.checkpoint.formats import WRITERS
    from bertkit.checkpoint.snapshot import load_snapshot

    d = trained
    weights, bert_cfg, _ = load_snapshot(d / "run" / "snaps" / "last_snapshot")
    ckpt = WRITERS[fmt](weights, bert_cfg, tmp_path / fmt, d / "vocab.txt")
    argv = ["classify", "--task_name", "RTE", "--do_eval", "--init_checkpoint", str(ckpt), *common(d, tmp_path)]
    for flag in ("--vocab_file", "--bert_config_file"):
        del argv[argv.index(flag) : argv.index(flag) + 2]
    assert main(argv) == 0
    mine, theirs = (read_results(p / "out" / "eval_results.txt") for p in (tmp_path, d / "run"))
    assert mine["eval_accuracy"] == theirs["eval_accuracy"]
    assert abs(float(mine["eval_loss"]) - float(theirs["eval_loss"])) < 1e-6
    assert mine["global_step"] == "0"


def test_two_processes_train_and_evaluate(trained, tmp_path, capfd):
    """--gpu_num_per_node 2 on CPU: two gloo workers train (unpadded: --unpad True), and their evaluation (rows
    gathered over ranks) equals one process's evaluation of the snapshot they wrote; the output holds plain lines
    (no progress bar when it is not a terminal)."""
    d = trained
    argv = [
        *TRAIN,
        *common(d, tmp_path),
        "--gpu_num_per_node",
        "2",
        "--iter_num",
        "4",
        "--unpad",
        "True",
        "--master_port",
        str(free_port()),
    ]
    assert main(argv) == 0
    out, err = capfd.readouterr()
    assert "\r" not in out + err and "Eval results" in out + err
    two = read_results(tmp_path / "out" / "eval_results.txt")
    argv = ["classify", "--task_name", "rte", "--do_eval", "--init_checkpoint", str(tmp_path / "snaps" / "last_snapshot"),
            *common(d, tmp_path / "one")]  # fmt: skip
    argv[argv.index("--bert_config_file") + 1] = str(tmp_path / "snaps" / "last_snapshot" / "bert_config.json")
    assert main(argv) == 0
    assert "note: this model was fine-tuned" not in capfd.readouterr().out  # the same --max_seq_length
    one = read_results(tmp_path / "one" / "out" / "eval_results.txt")
    assert two["eval_accuracy"] == one["eval_accuracy"]
    assert abs(float(two["eval_loss"]) - float(one["eval_loss"])) < 1e-6
    argv[argv.index("--max_seq_length") + 1] = "20"  # another length than training's: a note names the flag
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "short")
    assert main(argv) == 0
    assert "fine-tuned with --max_seq_length 24 (its run_config.json); predicting with 20" in capfd.readouterr().out


def test_a_record_of_another_length_is_one_line_from_two_processes(trained, tmp_path, capfd):
    d = trained
    recs = tmp_path / "recs"
    assert main(["create-glue-data", "--task_name", "rte", "--data_dir", str(d), "--output_dir", str(recs),
                 "--vocab_file", str(d / "vocab.txt"), "--max_seq_length", "24"]) == 0  # fmt: skip
    capfd.readouterr()
    argv = ["classify", "--task_name", "rte", "--train_data_dir", str(recs), "--seq_length", "32", "--bert_config_file",
            str(d / "tiny.json"), "--vocab_file", str(d / "vocab.txt"), "--gpu_num_per_node", "2", "--iter_num", "2",
            "--output_dir", str(tmp_path / "out"), "--num_threads", "1", "--device", "cpu",
            "--master_port", str(free_port())]  # fmt: skip
    assert main(argv) == 2
    out, err = capfd.readouterr()
    assert (out + err).count("feature 'input_ids': has 24 values but --seq_length is 32") == 1, out + err


def test_the_model_and_log_go_to_output_dir_and_a_second_run_there_is_refused(tmp_path, one_thread, capsys):
    """Google's run_classifier keeps the fine-tuned model in --output_dir: with no --model_save_dir / --log_dir
    given, so does bertkit, and a second run into that folder is refused rather than replacing the first's."""
    d = write_task(tmp_path / "RTE")
    out = tmp_path / "out"
    argv = ["classify", "--task_name", "rte", "--do_train", "--data_dir", str(d), "--vocab_file", str(d / "vocab.txt"),
            "--bert_config_file", str(d / "tiny.json"), "--max_seq_length", "24", "--train_batch_size", "8",
            "--iter_num", "2", "--output_dir", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "last_snapshot" / "model.safetensors").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # no --do_eval: the two steps' records
    capsys.readouterr()
    assert main(argv) == 2
    assert "last_snapshot already exists; pass --overwrite_output_dir to replace it" in capsys.readouterr().err


def test_sts_b_regression_predicts_scores(tmp_path, one_thread):
    d = write_task(tmp_path / "STS-B", stsb=True)
    argv = ["classify", "--task_name", "sts-b", "--do_train", "--do_eval", "--do_predict", "--learning_rate", "3e-3",
            "--train_batch_size", "8", "--iter_num", "30", *common(d, tmp_path)]  # fmt: skip
    assert main(argv) == 0
    results = read_results(tmp_path / "out" / "eval_results.txt")
    assert set(results) == {"eval_pearson", "eval_spearman", "eval_loss", "global_step", "loss"}
    assert float(results["eval_pearson"]) > 0.8, results
    lines = (tmp_path / "out" / "STS-B.tsv").read_text().splitlines()
    assert (
        lines[0] == "index\tprediction"
        and len(lines) == 9
        and all(len(x.split("\t")[1].split(".")[1]) == 3 for x in lines[1:])
    )


# --- the padding cut, the losses, the loop against transformers ----------------------------------------------


def padded_features(n: int, T: int, g: np.random.Generator, longest: int | None = None) -> glue.Features:
    """n examples padded to T, of random lengths up to `longest` (default T), segment B from mid-example."""
    lengths = g.integers(3, (longest or T) + 1, n)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    ids = g.integers(5, 99, (n, T)).astype(np.int32) * mask
    seg = ((np.arange(T)[None, :] >= lengths[:, None] // 2) * mask).astype(np.int32)
    return glue.Features(ids, mask, seg, g.integers(0, 2, n).astype(np.int32))


def test_bf16_prediction_in_one_autocast_context_equals_a_context_per_batch(tiny_cfg, one_thread):
    """predict_logits casts the weights once for all batches (one autocast context): bit-equal to a context per
    batch on the same sorted batches."""
    from bertkit.runtime.precision import autocast

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_cfg, 3).eval()
    f = padded_features(13, 20, np.random.default_rng(0), longest=16)
    once = predict_logits(model, f, 4, dist.DistEnv(), "bf16")
    lengths = f.input_mask.sum(1)
    order = np.argsort(-lengths, kind="stable")
    for i in range(0, 13, 4):
        idx = order[i : i + 4]
        L = int(lengths[idx].max())
        batch = (torch.from_numpy(a[idx, :L].astype(np.int64)) for a in (f.input_ids, f.segment_ids, f.input_mask))
        with torch.no_grad(), autocast("bf16", torch.device("cpu")):
            assert np.array_equal(once[idx], model(*batch).float().numpy())


def test_prediction_ranks_take_the_same_turns_and_stop_together(tiny_cfg, monkeypatch):
    """Every rank takes the same number of turns and agrees on a stop before each (simulated ranks, the collectives
    recorded): all rows computed once; a signal any rank got stops this one."""
    model = BertForSequenceClassification(tiny_cfg, 3).eval()
    f = padded_features(13, 20, np.random.default_rng(0))
    monkeypatch.setattr(dist, "all_reduce_sum", lambda t, env: t)
    checks, rows = {}, {}
    for rank in (0, 1):
        stop = dist.StopRequest()
        monkeypatch.setattr(stop, "agreed", lambda env: checks.__setitem__(env.rank, checks.get(env.rank, 0) + 1) or 0)
        out = predict_logits(model, f, 4, dist.DistEnv(rank, 2, stop=stop))
        rows[rank] = set(np.flatnonzero((out != 0).any(1)))
    assert checks[0] == checks[1] == 2 and rows[0].isdisjoint(rows[1]) and rows[0] | rows[1] == set(range(13))
    stop = dist.StopRequest()
    monkeypatch.setattr(stop, "agreed", lambda env: 2)  # SIGINT at another rank
    with pytest.raises(dist.Stopped, match="while predicting") as e:
        predict_logits(model, f, 4, dist.DistEnv(1, 2, stop=stop))
    assert e.value.exit_code == 130


def test_evaluation_inside_training_leaves_signals_to_the_training_loop(tmp_path, monkeypatch):
    """--eval_every_n_iter evaluates without the stop request (a signal waits for the loop's stop check and its
    snapshot); the closing evaluation has it."""
    import bertkit.tasks.glue.evaluate as glue_evaluate

    calls, real = [], glue_evaluate.predict_logits
    monkeypatch.setattr(glue_evaluate, "predict_logits", lambda *a, **k: calls.append(a[3].stop) or real(*a, **k))
    d = write_task(tmp_path / "RTE")
    argv = ["classify", "--task_name", "rte", "--do_train", "--do_eval", "--iter_num", "4", "--eval_every_n_iter", "2",
            "--train_batch_size", "8", *common(d, tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert len(calls) >= 3 and all(s is None for s in calls[:-1]) and calls[-1] is not None


def test_cut_batches_give_the_padded_logits_and_losses(tiny_cfg, one_thread):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_cfg, 3).eval()  # the fixture's dropout is 0
    f = padded_features(13, 20, np.random.default_rng(0), longest=16)  # every batch is cut
    cut = predict_logits(model, f, 4, dist.DistEnv())  # sorted, cut, real tokens only (prediction's default)
    model.bert.unpad = False  # the reference: the padded model on full-length batches, and below on padded ones
    with torch.no_grad():
        full = model(*(torch.from_numpy(a.astype(np.int64)) for a in (f.input_ids, f.segment_ids, f.input_mask)))
    np.testing.assert_allclose(cut, full.numpy(), atol=1e-5)
    # training batches: the loader cuts to the batch's longest example; the loss is the padded batch's
    f.label_ids = f.label_ids % 3
    loader = ClassifyLoader(f.arrays(), 5, seed=1)
    for _ in range(3):
        pos = loader.batches
        b = loader.next_batch()
        loader.batches = pos
        idx = loader.next_indices()
        assert b["input_ids"].shape[1] == f.input_mask[idx].sum(1).max() < 20
        padded = {k: torch.from_numpy(getattr(f, k)[idx].astype(np.int64)) for k in glue.FEATURES[:4]}
        with torch.no_grad():
            assert abs(classification_loss(model, b)[0] - classification_loss(model, padded)[0]) < 1e-5


def test_losses_are_googles_cross_entropy_and_mse(tiny_cfg):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_cfg, 2).eval()
    b = {
        k: torch.from_numpy(v.astype(np.int64))
        for k, v in padded_features(6, 9, np.random.default_rng(1)).arrays().items()
    }
    with torch.no_grad():
        logits = model(b["input_ids"], b["segment_ids"], b["input_mask"])
        log_probs = torch.log_softmax(logits, -1)  # Google: -sum(one_hot * log_probs), mean over the batch
        google = -(torch.nn.functional.one_hot(b["label_ids"], 2) * log_probs).sum(-1).mean()
        assert abs(classification_loss(model, b)[0] - google) < 1e-6
        reg = BertForSequenceClassification(tiny_cfg, 1).eval()
        b["label_ids"] = b["label_ids"].float() * 2.5
        want = ((reg(b["input_ids"], b["segment_ids"], b["input_mask"])[:, 0] - b["label_ids"]) ** 2).mean()
        assert abs(regression_loss(reg, b)[0] - want) < 1e-6


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fine_tuning_loop_equals_a_plain_hugging_face_loop(tiny_cfg, tmp_path, dropout):
    """bertkit's classification training (train.fit + classification_loss, AdamW, Google's schedule, clipping) and
    a plain loop over transformers' BertForSequenceClassification from the same weights, batches and RNG state give
    the same losses: with dropout on, both draw the same masks in the same order (embeddings; per layer attention
    probabilities, attention output, FFN output; then the pooled output)."""
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle ([test] extra)")
    from bertkit.checkpoint.convert import to_hf
    from bertkit.train.config import TrainConfig
    from bertkit.train.loop import Task, fit
    from bertkit.train.optim import learning_rate

    tiny_cfg.hidden_dropout_prob = tiny_cfg.attention_probs_dropout_prob = dropout
    torch.manual_seed(0)
    ours = BertForSequenceClassification(tiny_cfg, 3)
    hf_cfg = transformers.BertConfig(**tiny_cfg.to_dict(), num_labels=3, attn_implementation="eager")
    hf = transformers.BertForSequenceClassification(hf_cfg)
    hf.load_state_dict(to_hf(ours.state_dict(), tiny_cfg.num_hidden_layers), strict=True)
    g = np.random.default_rng(1)
    batches = []
    for _ in range(5):
        f = padded_features(4, 12, g)
        # Padding carries id 7, not 0: transformers freezes the id-0 row (padding_idx), Google and bertkit do not.
        f.input_ids = f.input_ids + 7 * (1 - f.input_mask)
        batches.append(
            {k: torch.from_numpy(v.astype(np.int64)) for k, v in f.arrays().items() if k != "is_real_example"}
        )
        batches[-1]["label_ids"] = torch.from_numpy(g.integers(0, 3, 4))

    class Batches:
        def __iter__(self):
            return iter(batches)

        def state_dict(self):
            return {}

    tc = TrainConfig.from_flags(learning_rate=1e-3, batch_size_per_device=4, iter_num=5, warmup_batches=1, optimizer="adamw",
                     loss_print_every_n_iter=100, model_save_every_n_iter=10**9, log_dir=str(tmp_path / "log"),
                     model_save_dir=str(tmp_path / "save"))  # fmt: skip
    with torch.no_grad():
        plain_first = classification_loss(ours.eval(), batches[0])[0].item()
    torch.manual_seed(1234)
    history: list[dict] = []
    fit(ours, tiny_cfg, Task(classification_loss, Batches()), tc, dist.DistEnv(), print_fn=lambda s: None,
        on_log=history.append)  # fmt: skip
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
        loss = torch.nn.functional.cross_entropy(out.logits, b["label_ids"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        hf_losses.append(loss.item())
    assert len(ours_losses) == 5
    assert max(abs(a - b) for a, b in zip(ours_losses, hf_losses, strict=True)) < 1e-4
    assert (abs(ours_losses[0] - plain_first) > 1e-3) == (dropout > 0)


# --- errors a user can make ----------------------------------------------------------------------------------------


def test_loss_in_eval_results_is_the_estimators_mean_of_batch_means():
    """Google's eval_results.txt `loss`: the mean of each eval batch's mean loss (the last batch short), which is
    not eval_loss (the mean per example) when the batch size does not divide the examples."""
    per_example = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0])
    assert mean_batch_loss(per_example, 2) == pytest.approx(((1 + 2) / 2 + (3 + 4) / 2 + 6) / 3)
    assert mean_batch_loss(per_example, 5) == pytest.approx(16 / 5)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--do_train", "--data_dir", "d"], "--task_name is required: one of CoLA, SST-2"),
        (["--task_name", "glue", "--do_eval", "--data_dir", "d"], "'glue' is not a task bertkit knows; the known ones"),
        (["--task_name", "rte", "--data_dir", "d"], "nothing to do: pass at least one of --do_train"),
        (["--task_name", "rte", "--do_train"], "--do_train needs --data_dir (GLUE tsv files) or --train_data_dir"),
        (["--task_name", "rte", "--do_predict", "--train_data_dir", "r"], "--do_predict needs --data_dir"),
        (["--task_name", "rte", "--do_train", "--data_dir", "d", "--train_batch_size", "30", "--gpu_num_per_node", "4"],
         "multiple of the 4 processes"),
        (["--task_name", "rte", "--do_train", "--data_dir", "d", "--num_epochs", "2", "--num_train_epochs", "3"],
         "--num_train_epochs 3.0 and --num_epochs 2.0 name the same thing"),
        (["--task_name", "xnli", "--do_predict", "--data_dir", "d"], "XNLI has no test file"),
        (["--task_name", "ax", "--do_train", "--data_dir", "d"], "AX has no train file: GLUE's diagnostic set is test only; predict it with a model fine-tuned on MNLI"),
        (["--task_name", "rte", "--do_eval", "--data_dir", "d", "--train_batch_size", "64", "--batch_size_per_device", "16"],
         "--train_batch_size 64 is 64 per process for 1 processes, but --batch_size_per_device is 16; give one"),
    ],
)  # fmt: skip
def test_config_errors_name_the_flags(flags, message, capsys):
    with pytest.raises(SystemExit):
        main(["classify", *flags])
    assert message in capsys.readouterr().err


def test_banner_leaves_out_the_pretraining_flags_classify_only_accepts():
    from bertkit.train.runner import banner

    text = banner(ClassifyConfig.from_flags(task_name="rte", do_train=True, data_dir="d"))
    names = {line.split(" = ")[0] for line in text.splitlines()}
    assert {"task_name", "train_data_part_num"} <= names
    assert not names & {"max_predictions_per_seq", "data_part_num", "use_boxing_v2"}


def test_config_reconciles_googles_and_oneflows_names():
    make = ClassifyConfig.from_flags
    cfg = make(task_name="MRPC", do_train=True, data_dir="d", train_batch_size=64, gpu_num_per_node=2,
               num_epochs=2.0, seq_length=96, init_checkpoint="ckpt", num_nodes=1)  # fmt: skip
    assert (cfg.training.batch_size_per_device, cfg.task.num_train_epochs, cfg.data.max_seq_length,
            cfg.model.model_load_dir) == (32, 2.0, 96, "ckpt")  # fmt: skip
    assert (
        cfg.task.eval_batch_size_per_device == 4 and cfg.data.glue_task.name == "MRPC" and cfg.training.iter_num is None
    )
    # Google's default global batch of 32, split over the processes; OneFlow's per-process batch as given
    cfg = make(task_name="rte", do_eval=True, data_dir="d", gpu_num_per_node=4)
    assert cfg.training.batch_size_per_device == 8
    cfg = make(task_name="rte", do_eval=True, data_dir="d", gpu_num_per_node=2, batch_size_per_device=16)
    assert (cfg.training.batch_size_per_device, cfg.task.train_batch_size) == (16, 32)
    cfg = make(task_name="cola", train_data_dir="r", eval_data_dir="e")  # OneFlow's form: both implied
    assert (cfg.task.do_train, cfg.task.do_eval, cfg.task.do_predict) == (True, True, False)


def test_bad_files_are_named_before_any_work(tmp_path, capsys):
    d = write_task(tmp_path / "RTE", n_train=4)
    with open(d / "train.tsv", "a") as f:
        f.write("9\tyes a\tcat\tmaybe\n")
    assert main(["classify", "--task_name", "rte", "--do_train", *common(d, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train.tsv line 6: unknown label 'maybe'; RTE's labels are entailment, not_entailment" in err
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tonly two\n")
    assert main(["classify", "--task_name", "rte", "--do_eval", *common(d, tmp_path)]) == 2
    assert (
        "dev.tsv line 2: 2 tab-separated columns, expected 4 (index, sentence1, sentence2, label)"
        in capsys.readouterr().err
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "eval_results.txt").write_text("x")
    write_task(d)
    assert main(["classify", "--task_name", "rte", "--do_eval", *common(d, tmp_path)]) == 2
    assert "eval_results.txt already exists; pass --overwrite_output_dir" in capsys.readouterr().err
