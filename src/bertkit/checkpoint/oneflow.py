"""OneFlow-Benchmark snapshots: one folder per variable holding `out` (raw little-endian values) and, from
OneFlow's own saver, `meta` (shape and dtype); read and written.

Reference: OneFlow's snapshot layout (oneflow/core/job/snapshot) and its VariableMetaInfo text proto; the
variable names are `convert.OF_TABLE`'s. Without `meta`, shapes come from the config, as in the snapshots
OneFlow-Benchmark's convert_tf_ckpt_to_of.py writes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.checkpoint import convert
from bertkit.checkpoint.files import copy_vocab, state_of, write_labels
from bertkit.model.config import BertConfig
from bertkit.runtime.atomic import atomic_output

OF_DATA, OF_META, OF_DONE, CONFIG = "out", "meta", "snapshot_done", "bert_config.json"
# OneFlow's DataType enum names (oneflow/core/common/data_type.proto), as its `meta` text files spell them.
OF_DTYPES = {
    torch.float32: "kFloat",
    torch.float64: "kDouble",
    torch.int32: "kInt32",
    torch.int64: "kInt64",
    torch.float16: "kFloat16",
    torch.bfloat16: "kBFloat16",
}


def is_oneflow_dir(path: Path) -> bool:
    return path.is_dir() and any((d / OF_DATA).is_file() for d in path.iterdir())


class OneFlowSnapshot(Mapping[str, Tensor]):
    """A OneFlow snapshot: `<dir>/<variable>/out` holds raw little-endian values.

    Shape and dtype come from the variable's `meta` file when present, else from `shapes` (float32; the step
    counter int64), else the values come back flat.
    """

    def __init__(self, path: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]]):
        self.path = Path(path)
        self._vars = sorted(d.name for d in self.path.iterdir() if (d / OF_DATA).is_file())
        self.shapes, self.dtypes = {}, {}
        for name in self._vars:
            meta = self.path / name / OF_META
            if meta.is_file():
                self.shapes[name], self.dtypes[name] = _parse_of_meta(meta)
            elif name.startswith(convert.OF_STEP_PREFIX):
                self.shapes[name], self.dtypes[name] = (1,), torch.int64
            else:
                self.shapes[name], self.dtypes[name] = shapes.get(name), torch.float32
            self._check_size(name)

    def _check_size(self, name: str) -> None:
        shape, dtype = self.shapes[name], self.dtypes[name]
        have = (self.path / name / OF_DATA).stat().st_size
        if shape is None:
            if have % dtype.itemsize:
                raise ValueError(f"OneFlow variable {name}: {have} bytes is not a whole number of {dtype} values")
            return
        want = int(np.prod(shape)) * dtype.itemsize
        if have != want:
            raise ValueError(
                f"OneFlow variable {name}: expected shape {list(shape)} ({dtype}, {want} bytes), found a file of "
                f"{have} bytes ({have // dtype.itemsize} values): the snapshot does not match the config"
            )

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.shapes:
            raise KeyError(name)
        values = torch.from_numpy(np.fromfile(self.path / name / OF_DATA, dtype=np.uint8))
        values = values.view(self.dtypes[name])  # uint8 first: numpy has no bfloat16
        return values if self.shapes[name] is None else values.reshape(self.shapes[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._vars)

    def __len__(self) -> int:
        return len(self._vars)


def _parse_of_meta(path: Path) -> tuple[tuple[int, ...], torch.dtype]:
    """A VariableMetaInfo text proto: `shape { dim: 2 dim: 128 } data_type: kFloat`."""
    text = path.read_text()
    dtype_name = re.search(r"data_type:\s*(\w+)", text)
    by_name = {v: k for k, v in OF_DTYPES.items()}
    if not dtype_name or dtype_name.group(1) not in by_name:
        raise ValueError(f"{path}: unreadable data_type (expected one of {', '.join(by_name)})")
    return tuple(int(d) for d in re.findall(r"dim:\s*(-?\d+)", text)), by_name[dtype_name.group(1)]


def save_oneflow(
    model_or_state: nn.Module | Mapping[str, Tensor],
    cfg: BertConfig,
    out_dir: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    *,
    labels: list[str] | tuple[str, ...] | None = None,
    do_lower_case: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a OneFlow-Benchmark snapshot: `<variable>/out` and `<variable>/meta` each, plus bert_config.json.

    OneFlow's loader reads only folders holding `out`, so the config, vocabulary and labels beside them are
    harmless and let the snapshot be read back without flags. The casing (`do_lower_case`) is not kept.
    """
    state = state_of(model_or_state)
    with atomic_output(out_dir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        for name, t in convert.to_oneflow(state, cfg.num_hidden_layers).items():
            (tmp / name).mkdir()
            with open(tmp / name / OF_DATA, "wb") as fh:  # a kernel's transposed copy lives only this long
                fh.write(t.contiguous().reshape(-1).view(torch.uint8).numpy())
            dims = "".join(f"  dim: {d}\n" for d in t.shape)
            (tmp / name / OF_META).write_text(f"shape {{\n{dims}}}\ndata_type: {OF_DTYPES[t.dtype]}\n")
        (tmp / OF_DONE).touch()
        cfg.to_json_file(tmp / CONFIG)
        copy_vocab(vocab_file, tmp)
        write_labels(labels, tmp)
    return Path(out_dir)
