"""`bertkit create-squad-data`: a SQuAD json -> the seed's SQuAD OFRecord folder, as its tutorial's dataset ships it.

The layout is OneFlow-Benchmark's (`LanguageModeling/BERT/run_squad.py`, `SquadDecoder`): a folder of part files
`part-0 ... part-(N-1)` read with `--data_dir DIR --data_part_num N`, one OFRecord per window ("feature") with
int32 features
    input_ids, input_mask, segment_ids   (seq_length,)   [CLS] question [SEP] context [SEP], then padding
    start_positions, end_positions       (1,)            training windows (--is_training True): the answer's tokens
    unique_ids                           (1,)            prediction windows (--is_training False): 1000000000 + i,
                                                         the ids npy2json gives the same windows built from the json
The windows are Google's (`squad/data.convert_examples_to_features`, run_squad.py's), so records made here, the
windows `bertkit squad --train_file` builds and those `npy2json` rebuilds from the json are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertkit.data.records import serialize_rows, write_serialized
from bertkit.data.vocab import TokenizerFlags, record_data_vocab
from bertkit.runtime.config import Composed, Section, positive
from bertkit.tasks.squad.data import convert_examples_to_features, read_squad_examples, squad_tokenizer


@dataclass(frozen=True)
class WindowFlags(Section):
    """Google's windows over a paragraph: [CLS] question [SEP] context [SEP], strided (squad, squad-predict, npy2json
    and create-squad-data cut them alike)."""

    max_seq_length: int = field(
        default=384, metadata={"resume": "refused", "help": "tokens per window: [CLS] question [SEP] context [SEP]"}
    )
    doc_stride: int = field(
        default=128, metadata={"resume": "refused", "help": "tokens between the starts of a paragraph's windows"}
    )
    max_query_length: int = field(
        default=64, metadata={"resume": "refused", "help": "questions are cut to this many tokens"}
    )

    def __post_init__(self) -> None:
        positive(self, "max_seq_length", "doc_stride", "max_query_length")
        if self.max_seq_length <= self.max_query_length + 3:
            raise ValueError(
                f"--max_seq_length ({self.max_seq_length}) must exceed --max_query_length ({self.max_query_length}) + 3"
            )


@dataclass(frozen=True)
class SquadFileFlags(Section):
    """What create-squad-data reads and writes."""

    input_file: str = field(default="", metadata={"help": "SQuAD json (train-v1.1.json, dev-v1.1.json)"})
    output_dir: str = field(default="", metadata={"help": "folder to write part-0 ... part-(N-1) into"})
    is_training: bool = field(
        default=True,
        metadata={"help": "True: windows with answer positions (for squad --data_dir); False: with unique ids (for "
                          "squad-predict --data_dir)"},
    )  # fmt: skip
    data_part_num: int = field(default=1, metadata={"help": "part files to write (the seed's --data_part_num)"})
    version_2_with_negative: bool = field(default=False, metadata={"help": "SQuAD 2.0: a question may have no answer"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace part files that already exist"})

    def __post_init__(self) -> None:
        if not self.input_file or not self.output_dir:
            raise ValueError("--input_file (a SQuAD json) and --output_dir are required")
        positive(self, "data_part_num")


@dataclass(frozen=True)
class CreateSquadDataConfig(Composed):
    """Write the seed's SQuAD OFRecord windows (train-v1.1/, dev-v1.1/ of its tutorial's dataset) from a SQuAD json."""

    records: SquadFileFlags
    tokenizer: TokenizerFlags
    windows: WindowFlags

    HELP = {
        "max_seq_length": "tokens per window (the seed's --seq_length)",
        "vocab_file": "vocab.txt of the model to fine-tune (default: bert-base-uncased's)",
    }


def window_records(cfg: CreateSquadDataConfig) -> tuple[dict[str, np.ndarray], int]:
    """({feature: (N, length) int32}, questions) for the windows of cfg.records.input_file, in OneFlow's SQuAD layout."""
    choice = cfg.tokenizer.choose()  # data/vocab.py
    print(choice.line())
    if choice.note:
        print(choice.note)
    tokenizer = squad_tokenizer(choice.vocab_file, choice.do_lower_case)
    examples, _ = read_squad_examples(
        cfg.records.input_file, cfg.records.is_training, cfg.records.version_2_with_negative
    )
    f = convert_examples_to_features(
        examples,
        tokenizer,
        cfg.windows.max_seq_length,
        cfg.windows.doc_stride,
        cfg.windows.max_query_length,
        cfg.records.is_training,
    )
    rows = {"input_ids": f.input_ids, "input_mask": f.input_mask, "segment_ids": f.segment_ids}
    if cfg.records.is_training:
        rows |= {"start_positions": f.start_position, "end_positions": f.end_position}
    else:
        rows["unique_ids"] = f.unique_id
    # int32 everywhere, (N, 1) for the scalars: OneFlow decodes every blob as int32 of the declared shape
    return {k: np.asarray(v, dtype=np.int32).reshape(len(f), -1) for k, v in rows.items()}, len(examples)


def run(cfg: CreateSquadDataConfig) -> dict:
    if not Path(cfg.records.input_file).is_file():
        raise ValueError(f"--input_file {cfg.records.input_file}: no such file")
    out = Path(cfg.records.output_dir)
    parts = [out / f"part-{i}" for i in range(cfg.records.data_part_num)]
    existing = [str(p) for p in parts if p.exists()]
    if existing and not cfg.records.overwrite_output_dir:
        raise ValueError(f"--output_dir {out} already holds {', '.join(existing[:3])}; pass --overwrite_output_dir "
                         f"to replace")  # fmt: skip
    rows, questions = window_records(cfg)
    n = len(rows["input_ids"])
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, cfg.records.data_part_num + 1).round().astype(int)  # contiguous, as even as can be
    for path, a, b in zip(parts, bounds[:-1], bounds[1:], strict=True):
        write_serialized(path, serialize_rows({k: v[a:b] for k, v in rows.items()}, "ofrecord"), "ofrecord")
    kind = "training windows (answer positions)" if cfg.records.is_training else "prediction windows (unique ids)"
    print(f"wrote {n} {kind} of {questions} questions into {out}/part-0..{cfg.records.data_part_num - 1} "
          f"(seq_length {cfg.windows.max_seq_length}): bertkit squad{'' if cfg.records.is_training else '-predict'} --data_dir {out} "
          f"--data_part_num {cfg.records.data_part_num}")  # fmt: skip
    choice = cfg.tokenizer.choose()
    record_data_vocab(out, choice.path, choice.do_lower_case)  # what squad checks its model against
    return {"windows": n, "questions": questions, "parts": [str(p) for p in parts]}
