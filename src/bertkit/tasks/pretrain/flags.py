"""The flags of `bertkit create-pretraining-data` (Google's create_pretraining_data.py, its names and defaults), as
sections (runtime/config.py): the corpus and outputs, the tokenizer (data/vocab.py), and the instances' masking."""

from __future__ import annotations

from dataclasses import dataclass, field

from bertkit.data.vocab import TokenizerFlags, choose_tokenizer
from bertkit.runtime.config import Composed, Section

FORMATS = ("tfrecord", "ofrecord", "shards")


@dataclass(frozen=True)
class CorpusFlags(Section):
    """The text read, the records written, and how the work is cut (chunks, workers, machines)."""

    input_file: str = field(
        default="",
        metadata={"help": "text (Google's format; .gz/.bz2/.zst too), JSON lines (.jsonl) or Parquet (one document "
                          "a row); comma-separated paths or globs"},
    )  # fmt: skip
    output_file: str = field(
        default="",
        metadata={"help": "record files, comma-separated, filled round-robin (shards: one new directory); "
                          "or use --output_dir"},
    )  # fmt: skip
    output_dir: str = field(
        default="",
        metadata={"help": "directory receiving part-<i> per chunk (what pretrain --data_dir reads) and a manifest "
                          "of finished chunks: a rerun resumes; for many workers and machines"},
    )  # fmt: skip
    output_format: str = field(
        default="tfrecord",
        metadata={
            "help": "tfrecord (Google's), ofrecord (the seed's OneFlow format) or shards (bertkit's .npy dir: "
            "training starts without converting)",
            "choices": list(FORMATS),
        },
    )
    chunk_size_mb: float = field(
        default=8.0,
        metadata={"help": "MiB of text per chunk, each made as Google makes one input file (negatives from within "
                          "it); peak memory ~110 MB + 21 MB per MiB (seq 128, dupe 5), whatever the corpus size; "
                          "0: one chunk"},
    )  # fmt: skip
    num_workers: int = field(default=1, metadata={"help": "processes making chunks; the records do not change"})
    text_field: str = field(default="text", metadata={"help": "JSON lines and Parquet: the field holding the text"})
    shard_index: int = field(
        default=0, metadata={"help": "this process's index among --num_shards (default: RANK or SLURM_PROCID)"}
    )
    num_shards: int = field(
        default=0,
        metadata={"help": "processes sharing the chunks, each taking index mod n (0: WORLD_SIZE or SLURM_NTASKS "
                          "when set, else 1); needs --output_dir"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not self.input_file.strip(","):
            raise ValueError("--input_file is required")
        if bool(self.output_file.strip(",")) == bool(self.output_dir):
            raise ValueError("--output_file or --output_dir is required (one of them)")
        if self.num_workers < 1:
            raise ValueError(f"--num_workers must be at least 1, got {self.num_workers}")
        if self.output_format not in FORMATS:
            raise ValueError(f"--output_format must be one of {', '.join(FORMATS)}, got {self.output_format!r}")
        if self.chunk_size_mb < 0:
            raise ValueError(f"--chunk_size_mb must be >= 0 (0: one chunk), got {self.chunk_size_mb}")
        if self.num_shards < 0 or not 0 <= self.shard_index < max(self.num_shards, 1):
            raise ValueError(f"--shard_index must be in [0, --num_shards), got {self.shard_index}/{self.num_shards}")
        outputs = self.output_files()
        if self.output_format == "shards" and len(outputs) > 1:
            raise ValueError(f"--output_file: shards go to one directory, got {len(outputs)} paths")
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"--output_file names a file twice: {self.output_file}")

    def output_files(self) -> list[str]:
        return [s.strip() for s in self.output_file.split(",") if s.strip()]


@dataclass(frozen=True)
class MaskingFlags(Section):
    """Google's instances: their length, masking, next-sentence draws and passes (instances.py)."""

    do_whole_word_mask: bool = field(
        default=False, metadata={"help": "mask all WordPieces of a word together, never some of them"}
    )
    max_seq_length: int = field(default=128, metadata={"help": "tokens per instance, [CLS] and [SEP]s included"})
    max_predictions_per_seq: int = field(default=20, metadata={"help": "most masked positions per instance"})
    random_seed: int = field(default=12345, metadata={"help": "seed of chunk 0's random.Random (Google's seed)"})
    dupe_factor: int = field(default=10, metadata={"help": "passes over the text, each with different masks"})
    masked_lm_prob: float = field(default=0.15, metadata={"help": "fraction of the tokens to mask, in (0, 1]"})
    short_seq_prob: float = field(
        default=0.1, metadata={"help": "probability of a target length shorter than max_seq_length"}
    )

    def __post_init__(self) -> None:
        # [CLS] A [SEP] B [SEP] with A and B at least one token each; Google draws randint(2, max_seq_length - 3).
        if self.max_seq_length < 5:
            raise ValueError(f"--max_seq_length must be at least 5, got {self.max_seq_length}")
        for name in ("max_predictions_per_seq", "dupe_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.masked_lm_prob <= 1:
            raise ValueError(f"--masked_lm_prob must be in (0, 1], got {self.masked_lm_prob}")
        if not 0 <= self.short_seq_prob <= 1:
            raise ValueError(f"--short_seq_prob must be in [0, 1], got {self.short_seq_prob}")


@dataclass(frozen=True)
class CreatePretrainingDataConfig(Composed):
    """Create masked-LM / next-sentence pretraining records from raw text: Google's create_pretraining_data.py."""

    corpus: CorpusFlags
    tokenizer: TokenizerFlags
    masking: MaskingFlags

    HELP = {"vocab_file": "Google vocab.txt; None: the bert-base-uncased vocabulary bertkit ships"}

    @classmethod
    def resolve(cls, values: dict) -> dict:
        """The one vocabulary and casing policy (data/vocab.py), decided once here, so that every worker tokenizes
        alike: a casing the vocabulary contradicts is refused, none given is the vocabulary's."""
        lower = choose_tokenizer(values["vocab_file"], values["do_lower_case"], check=values["check_casing"])[1]
        return values | {"do_lower_case": lower}
