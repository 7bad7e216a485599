"""SQuAD fine-tuning and prediction: the commands `bertkit squad`, `bertkit squad-predict` and `bertkit npy2json`
(their flags: config.py).

References: google-research/bert `run_squad.py` @ eedf5716 (the loss, the flags) and the seed's OneFlow-Benchmark
BERT scripts: `run_squad.py` (its tutorial form takes run_pretraining.py's flags and an OFRecord `--data_dir`; its
later form adds `--do_train/--do_eval`, `--train_data_dir`, `--num_epochs`, ...), `run_squad_predict.py` (OFRecord
windows -> `all_results.npy`) and `npy2json.py` (`all_results.npy` + SQuAD json -> `predictions.json`). Windows
("features") are built by `squad_data.convert_examples_to_features`; logits become answers and files (Google's
write_predictions, the all_results.npy format) in `squad_predict`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.checkpoint.snapshot import check_writable, existing_snapshots
from bertkit.data.loader import ArrayLoader, id_limits, read_dataset, resolve_inputs
from bertkit.data.records import squad_features
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.model.bert import BertForQuestionAnswering
from bertkit.model.config import BertConfig
from bertkit.runtime import dist
from bertkit.runtime.atomic import refuse_existing
from bertkit.runtime.precision import quantize
from bertkit.tasks.squad.config import (
    Npy2JsonConfig,
    SquadConfig,
    SquadPredictConfig,
    make_tokenizer,
    record_data,
    train_steps,
)
from bertkit.tasks.squad.data import (
    SquadExample,
    SquadFeatures,
    convert_examples_to_features,
    is_squad_v2,
    load_squad,
    read_squad_examples,
)
from bertkit.tasks.squad.evaluate import evaluate_v1, evaluate_v2
from bertkit.tasks.squad.predict import PREDICTION_FILES, RawResults, SquadPredictions, predict_answers, predict_logits
from bertkit.tasks.squad.records import WindowFlags
from bertkit.train import runner
from bertkit.train.build import build_model, checkpoint_path, fine_tuned_differently, model_config
from bertkit.train.config import with_schedule
from bertkit.train.loop import Task, fit
from bertkit.train.metrics import log_final_eval

ModelConfigs = SquadConfig | SquadPredictConfig  # the commands that run a model
AnyConfig = SquadConfig | SquadPredictConfig | Npy2JsonConfig  # their sections tokenizer, windows, answers

# --- training: Google's loss and shuffled batches of windows -------------------------------------------------


def span_logits(logits: Tensor, input_mask: Tensor) -> Tensor:
    """Start or end logits (B, T) in fp32 with padding positions (input_mask 0) at -inf: out of the softmax.

    So a window's loss and gradients do not depend on how much padding it carries (its batch's longest window,
    --max_seq_length). A masked position gets probability exactly 0 and gradient exactly 0; every window has a
    real [CLS], so no row is all -inf. Google's loss runs the softmax over the padding logits too."""
    return logits.float().masked_fill(~input_mask.bool(), float("-inf"))


def squad_loss(model: nn.Module, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Google's loss, the mean of the start and end cross-entropies (B, T) -> (), over the real positions of each
    window only (`span_logits`: the one difference from Google), in fp32 whatever the autocast."""
    start, end = model(b["input_ids"], b["segment_ids"], b["input_mask"])
    start_loss = F.cross_entropy(span_logits(start, b["input_mask"]), b["start_positions"])
    end_loss = F.cross_entropy(span_logits(end, b["input_mask"]), b["end_positions"])
    total = (start_loss + end_loss) / 2
    return total, {"total_loss": total}


class SquadLoader(ArrayLoader):
    """Endless batches of training windows {input_ids, input_mask, segment_ids (B, T'); start_positions,
    end_positions (B,)}, int64, T' the batch's longest window. Padding columns are cut (faster), and exactly so:
    `squad_loss` leaves padding positions out of the span softmax, so no window's loss depends on T'.

    The sample stream, its epochs and the resumable position are ArrayLoader's (one global permutation per
    epoch, batches dealt round-robin to the ranks); the windows are already in memory.
    """

    def next_batch(self) -> dict[str, Tensor]:
        idx = self.next_indices()
        L = int(self.arrays["input_mask"][idx].astype(bool).sum(1).max())
        batch = {
            k: torch.from_numpy(self.arrays[k][idx, :L].astype(np.int64))
            for k in ("input_ids", "input_mask", "segment_ids")
        }
        for k in ("start_positions", "end_positions"):
            batch[k] = torch.from_numpy(self.arrays[k][idx].reshape(-1).astype(np.int64))
        return batch


# --- running: model, windows, answers ------------------------------------------------------------------------


def check_lengths(cfg: ModelConfigs, bert_cfg: BertConfig) -> None:
    """Windows no longer than the model takes: --max_seq_length for json, --seq_length for record windows."""
    uses_json = cfg.answers.predict_file or getattr(cfg.data, "train_file", None)
    uses_records = cfg.data.data_dir or cfg.data.eval_data_dir or getattr(cfg.data, "train_data_dir", None)
    for flag, length, used in (("max_seq_length", cfg.windows.max_seq_length, uses_json),
                               ("seq_length", cfg.data.seq_length, uses_records)):  # fmt: skip
        if used and length > bert_cfg.max_position_embeddings:
            raise ValueError(f"--{flag} {length} exceeds the model's max_position_embeddings "
                             f"{bert_cfg.max_position_embeddings}")  # fmt: skip


WINDOWS_VERSION = 2  # bump when convert_examples_to_features changes what it makes (2: answers in leading whitespace)


def _cache_key(path: str | Path, tokenizer: WordPieceTokenizer, w: WindowFlags, training: bool, v2: bool) -> str:
    h = hashlib.sha256(Path(path).read_bytes())
    h.update("\n".join(tokenizer.inv_vocab).encode())
    params = [WINDOWS_VERSION, tokenizer.do_lower_case, tokenizer.max_input_chars_per_word, w.max_seq_length,
              w.doc_stride, w.max_query_length, training, v2]  # fmt: skip
    h.update(json.dumps(params).encode())
    return h.hexdigest()[:20]


def json_windows(
    path: str | Path,
    windows: WindowFlags,
    tokenizer: WordPieceTokenizer,
    training: bool,
    cache_dir: str | Path | None = None,
    env: dist.DistEnv | None = None,
    version_2_with_negative: bool = False,
) -> tuple[list[SquadExample], SquadFeatures, list[str]]:
    """(examples, their windows, notes on skipped training questions) of a SQuAD json, cut into `windows`.

    With `cache_dir`, the windows are kept in `squad-windows-<hash of file, vocabulary and flags>.npz` there: rank 0
    builds and writes it, every rank reads it.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples, _ = read_squad_examples(path, training, version_2_with_negative)
    notes = [str(w.message) for w in caught]

    def build() -> SquadFeatures:
        return convert_examples_to_features(
            examples,
            tokenizer,
            windows.max_seq_length,
            windows.doc_stride,
            windows.max_query_length,
            training,
        )

    if cache_dir is None:
        return examples, build(), notes
    env = env or dist.DistEnv()
    cache = (
        Path(cache_dir) / f"squad-windows-{_cache_key(path, tokenizer, windows, training, version_2_with_negative)}.npz"
    )
    if env.is_main and not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        build().save(cache)
    dist.all_reduce_sum(torch.zeros(1, device=env.device), env)  # a barrier: the other ranks wait for the file
    return examples, SquadFeatures.load(cache), notes


def record_windows(path: str, part_num: int | None, seq_length: int, training: bool, progress: bool) -> dict:
    """The seed's OFRecord SQuAD windows (or Google's TFRecord ones) as arrays (N, length) per feature."""
    return read_dataset(path, squad_features(seq_length, training), data_part_num=part_num or 0, progress=progress)


@dataclass
class EvalSet:
    """Windows to answer, (N, T) arrays and their unique ids, and, when a json is given, what answering needs."""

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    unique_id: np.ndarray
    examples: list[SquadExample] | None = None
    features: SquadFeatures | None = None
    dataset: dict | None = None


def predict_windows(cfg: AnyConfig, tokenizer: WordPieceTokenizer) -> tuple[list[SquadExample], SquadFeatures, list]:
    """(examples, windows, notes) of --predict_file, as the model answers them."""
    v2 = cfg.answers.version_2_with_negative
    return json_windows(cfg.answers.predict_file, cfg.windows, tokenizer, False, version_2_with_negative=v2)


def eval_set(
    cfg: ModelConfigs, tokenizer: WordPieceTokenizer, data_dir: str | None, part_num: int | None,
    limit: int | None, say: Callable[[str], None], progress: bool,
) -> EvalSet:  # fmt: skip
    """Windows from record files (the first `limit`, each unique_id once) or built from --predict_file."""
    examples = features = dataset = None
    if cfg.answers.predict_file:
        examples, features, _ = predict_windows(cfg, tokenizer)
        dataset = load_squad(cfg.answers.predict_file)
    if not data_dir:
        return EvalSet(features.input_ids, features.input_mask, features.segment_ids, features.unique_id,
                       examples, features, dataset)  # fmt: skip
    a = record_windows(data_dir, part_num, cfg.data.seq_length, training=False, progress=progress)
    ids = a["unique_ids"].reshape(-1).astype(np.int64)
    if limit is not None and limit < len(ids):
        say(f"predicting the first {limit} of {len(ids)} windows (--iter_num x batch size)")
        ids = ids[:limit]
    keep = np.sort(np.unique(ids, return_index=True)[1])  # the seed's reader cycles: each window once
    if features is not None:
        common, mine, theirs = np.intersect1d(ids[keep], features.unique_id, return_indices=True)
        T = min(cfg.data.seq_length, cfg.windows.max_seq_length)
        differ = (a["input_ids"][keep][mine, :T] != features.input_ids[theirs, :T]).any(1).sum()
        if differ:
            say(f"warning: {differ} of {len(common)} windows in {data_dir} differ from those built from "
                f"{cfg.answers.predict_file}: were they made with other flags or another vocabulary?")  # fmt: skip
    return EvalSet(a["input_ids"][keep], a["input_mask"][keep], a["segment_ids"][keep], ids[keep],
                   examples, features, dataset)  # fmt: skip


def score(dataset: dict, preds: SquadPredictions) -> dict | None:
    """The official metrics when the dataset holds answers (v2.0 with null_odds.json as no-answer probabilities,
    as Google's README runs evaluate-v2.0.py); None for a test file without them."""
    questions = [qa for article in dataset["data"] for p in article["paragraphs"] for qa in p["qas"]]
    if not any(qa["answers"] for qa in questions):
        return None
    if preds.null_odds is not None or is_squad_v2(dataset):
        return evaluate_v2(dataset, preds.predictions, preds.null_odds)
    return evaluate_v1(dataset, preds.predictions)


def answer(
    model: nn.Module, es: EvalSet, cfg: ModelConfigs, tokenizer: WordPieceTokenizer, env: dist.DistEnv,
    batch_size: int, write: bool, say: Callable[[str], None],
) -> dict | None:  # fmt: skip
    """Run the model on the windows; on rank 0 write all_results.npy and (with a json) the prediction files, and
    return the metrics when the json holds answers."""
    start, end = predict_logits(model, es.input_ids, es.input_mask, es.segment_ids, batch_size, env, cfg.training.precision,
                                progress=env.is_main and write)  # fmt: skip
    if not env.is_main:
        return None
    results = RawResults(es.unique_id, start, end)
    out = Path(cfg.answers.output_dir)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        results.save(out / "all_results.npy")
        say(f"{len(es.unique_id)} results saved to {out / 'all_results.npy'}")
    if es.examples is None:
        return None
    preds = predict_answers(es.examples, es.features, results, tokenizer, cfg.answers.n_best_size, cfg.answers.max_answer_length,
                            cfg.answers.version_2_with_negative, cfg.answers.null_score_diff_threshold, cfg.answers.verbose_logging)  # fmt: skip
    if write:
        say(f"wrote {', '.join(str(p) for p in preds.write(out))}")
    metrics = score(es.dataset, preds)
    if metrics is not None and write:
        say(json.dumps(metrics))
    return metrics


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, to replace a user's files unless asked to (the one overwrite rule)."""
    refuse_existing(paths, "--overwrite_output_dir", overwrite=overwrite)


def prediction_outputs(cfg: AnyConfig, with_json: bool, with_npy: bool = True) -> list[Path]:
    names = ["all_results.npy"] if with_npy else []
    if with_json:
        names += list(PREDICTION_FILES[: 3 if cfg.answers.version_2_with_negative else 2])
    return [Path(cfg.answers.output_dir) / name for name in names]


def _printer(env: dist.DistEnv) -> Callable[[str], None]:
    return print if env.is_main else (lambda *a, **k: None)


# --- the commands ---------------------------------------------------------------------------------------------


def run_npy2json(cfg: Npy2JsonConfig) -> SquadPredictions:
    """all_results.npy + the SQuAD json it was predicted on -> predictions.json, nbest_predictions.json (+ v2.0
    null_odds.json) in --output_dir; prints exact match and F1 when the json holds answers."""
    check_outputs(prediction_outputs(cfg, with_json=True, with_npy=False), cfg.answers.overwrite_output_dir)
    tokenizer, _ = make_tokenizer(cfg)
    results = RawResults.load(cfg.task.all_results_file)
    examples, features, _ = predict_windows(cfg, tokenizer)
    preds = predict_answers(examples, features, results, tokenizer, cfg.answers.n_best_size, cfg.answers.max_answer_length,
                            cfg.answers.version_2_with_negative, cfg.answers.null_score_diff_threshold, cfg.answers.verbose_logging)  # fmt: skip
    print(f"wrote {', '.join(str(p) for p in preds.write(cfg.answers.output_dir))}")
    metrics = score(load_squad(cfg.answers.predict_file), preds)
    if metrics is not None:
        print(json.dumps(metrics))
    return preds


def check_predict(cfg: SquadPredictConfig) -> SquadPredictConfig:
    """Every user error before any worker starts: inputs there, outputs not about to be replaced."""
    check_inputs(cfg)
    check_tokenizer(cfg)
    check_outputs(prediction_outputs(cfg, with_json=bool(cfg.answers.predict_file)), cfg.answers.overwrite_output_dir)
    return cfg


def run_predict(cfg: SquadPredictConfig) -> dict | None:
    return runner.run(cfg, _run_predict, check_predict)


def _run_predict(cfg: SquadPredictConfig, env: dist.DistEnv) -> dict | None:
    say = _printer(env)
    say(runner.banner(cfg))
    model, bert_cfg, _ = build_model(cfg, BertForQuestionAnswering, env, say)
    model = quantize(model, cfg.task.quantize)
    if note := fine_tuned_differently(cfg, ("max_seq_length", "doc_stride", "max_query_length")):
        say(note)
    tokenizer, _ = make_tokenizer(cfg, checkpoint_path(cfg), bert_cfg.vocab_size, say, record_data(cfg))
    limit = cfg.training.iter_num * cfg.training.batch_size_per_device * env.world_size
    es = eval_set(cfg, tokenizer, cfg.data.data_dir, cfg.data.data_part_num, limit, say, env.is_main)
    return answer(model, es, cfg, tokenizer, env, cfg.training.batch_size_per_device, write=True, say=say)


def check_inputs(cfg: ModelConfigs) -> None:
    """The files the flags name exist (json, records, checkpoint, config), before any worker starts."""
    flags = cfg.flat()
    for flag in ("train_file", "predict_file", "model_load_dir", "bert_config_file", "vocab_file", "resume"):
        value = flags.get(flag)
        if value and value != "latest" and not Path(value).exists():
            name = cfg.model.checkpoint_flag if flag == "model_load_dir" else f"--{flag}"
            raise ValueError(f"{name} {value}: no such file or directory")
    typed = "--data_dir" if cfg.data.data_dir else None  # the tutorial's name, set alongside the longer ones
    for flag in ("train_data_dir", "eval_data_dir"):
        if flags.get(flag):
            name = typed if flags[flag] == cfg.data.data_dir else f"--{flag}"
            resolve_inputs(flags[flag], data_part_num=0, flag=name)


def check_tokenizer(cfg: ModelConfigs) -> None:
    """The vocabulary and casing against the model's and the data's, before any work (data/vocab.py); after
    `--resume latest` is resolved."""
    model_cfg = model_config(cfg)
    check_lengths(cfg, model_cfg)
    cfg.tokenizer.choose(checkpoint_path(cfg), model_cfg.vocab_size, record_data(cfg))


def check(cfg: SquadConfig) -> SquadConfig:
    """Every user error before any worker starts; nothing of the user's is replaced unless asked. Returns the config
    the workers get (its snapshots moved beside another task's, --resume latest resolved)."""
    check_inputs(cfg)
    outputs = prediction_outputs(cfg, with_json=bool(cfg.answers.predict_file)) if cfg.task.do_predict else []
    if cfg.task.do_train and not cfg.run.resume and not cfg.answers.overwrite_output_dir:
        # the tutorial's run into its pretraining folder keeps what is there
        cfg = runner.beside_other_tasks(cfg, "squad")
    save_dir = Path(cfg.run.model_save_dir)
    if cfg.task.do_train and not cfg.run.resume:
        outputs += existing_snapshots(save_dir)
    check_outputs(outputs, cfg.answers.overwrite_output_dir)
    if cfg.task.do_train:
        check_writable(cfg.run.model_save_dir)
        cfg = runner.check_resume(cfg)
    check_tokenizer(cfg)
    return cfg


def run(cfg: SquadConfig) -> dict | None:
    return runner.run(cfg, _run, check)


def _run(cfg: SquadConfig, env: dist.DistEnv) -> dict:
    say = _printer(env)
    say(runner.banner(cfg))
    model, bert_cfg, resume_state = build_model(cfg, BertForQuestionAnswering, env, say)
    tokenizer, choice = make_tokenizer(cfg, checkpoint_path(cfg), bert_cfg.vocab_size, say, record_data(cfg))
    notes, summary, metrics = [], None, None
    es = None
    if cfg.task.do_predict:  # built first, so that a bad eval file fails before training, not after
        es = eval_set(cfg, tokenizer, cfg.data.eval_data_dir, cfg.data.eval_data_part_num, None, say, env.is_main)
        if cfg.data.eval_example_num is not None and cfg.data.eval_example_num != len(es.unique_id):
            say(f"note: --eval_example_num is {cfg.data.eval_example_num}; the data holds {len(es.unique_id)} windows")
    if cfg.task.do_train:
        if cfg.data.train_file:
            # in a folder this run writes anyway: no squad_output/ left behind by a run that predicts nothing
            cache = (
                cfg.data.features_cache_dir
                or Path(cfg.answers.output_dir if cfg.task.do_predict else cfg.run.log_dir) / "cache"
            )
            examples, feats, notes = json_windows(
                cfg.data.train_file, cfg.windows, tokenizer, True, cache, env, cfg.answers.version_2_with_negative
            )
            arrays = {"input_ids": feats.input_ids, "input_mask": feats.input_mask, "segment_ids": feats.segment_ids,
                      "start_positions": feats.start_position, "end_positions": feats.end_position}  # fmt: skip
            say(f"{len(feats)} training windows from {len(examples)} questions of {cfg.data.train_file}")
            questions = len(examples)
            del examples, feats
        else:
            arrays = record_windows(
                cfg.data.train_data_dir, cfg.data.train_data_part_num, cfg.data.seq_length, True, env.is_main
            )
            questions = None
        n = len(arrays["input_ids"])
        if cfg.data.train_example_num is not None and cfg.data.train_example_num != n:
            say(f"note: --train_example_num is {cfg.data.train_example_num}; the data holds {n} windows, all used")
        global_batch = cfg.training.batch_size_per_device * env.world_size * cfg.training.num_accumulation_steps
        rule, steps = "--iter_num", cfg.training.iter_num
        if steps is None:
            steps, rule = train_steps(cfg, n, questions, global_batch)
        cfg = with_schedule(cfg, steps, cfg.task.warmup_proportion)
        say(f"training: {n} windows, global batch {global_batch}, iter_num {cfg.training.iter_num} ({rule}), "
            f"warmup_batches {cfg.optimizer.warmup_batches}")  # fmt: skip
        loader = SquadLoader(arrays, cfg.training.batch_size_per_device, rank=env.rank, world_size=env.world_size,
                             seed=cfg.training.seed, limits=id_limits(bert_cfg.vocab_size, bert_cfg.type_vocab_size))  # fmt: skip

        def eval_fn(m: nn.Module) -> dict[str, float]:  # inside training: a signal waits for its next stop check,
            quiet = replace(env, stop=None)  # which writes the snapshot (prediction alone stops at once)
            return answer(m, es, cfg, tokenizer, quiet, cfg.task.eval_batch_size_per_device, write=False, say=say) or {}

        extras = {"vocab_file": choice.path, "do_lower_case": choice.do_lower_case,
                  "run_config": cfg.flat()}  # fmt: skip
        task = Task(squad_loss, loader, evaluate=eval_fn if es else None, snapshot_extras=extras)
        summary = fit(model, bert_cfg, task, cfg, env, resume_state, say)
        if not cfg.run.save_last_snapshot and summary["step"] % cfg.run.model_save_every_n_iter:
            say("note: the fine-tuned model is not kept (--save_last_snapshot False)")
    if es is not None:
        metrics = answer(model, es, cfg, tokenizer, env, cfg.task.eval_batch_size_per_device, write=True, say=say)
        if metrics is not None and summary is not None:  # trained in this run: its log ends with this evaluation
            log_final_eval(cfg.run.log_dir, summary["step"], metrics)
    for note in notes:  # training questions Google's reader skips: their answer is not at answer_start
        say(f"note: {note}")
    return {"train": summary, "eval": metrics}
