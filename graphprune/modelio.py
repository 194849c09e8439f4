"""Reading and writing ONNX files: clear errors for bad input, atomic writes.

Every command reads through `read_model` and writes through `write_model`, so a
missing or corrupt file always gives the same one-line error and an interrupted
write never leaves a half-written model behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from graphprune.errors import GraphpruneError

# protobuf cannot serialise a message over 2 GiB; above this the weights go to a side file.
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file (external data included) or raise a GraphpruneError naming the problem."""
    p = Path(path)
    if not p.exists():
        raise GraphpruneError(f"{p}: no such file")
    if not p.is_file():
        raise GraphpruneError(f"{p}: not a file")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise GraphpruneError(f"{p}: not a readable ONNX model ({_first_line(exc)})") from None
    except Exception as exc:  # protobuf raises assorted types for truncated input
        raise GraphpruneError(f"{p}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise GraphpruneError(f"{p}: not an ONNX model (the graph has no nodes)")
    return model


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_model(model: onnx.ModelProto, path: str | os.PathLike, *, source: str | os.PathLike | None = None) -> Path:
    """Write `model` to `path` atomically (temp file + rename); refuse to overwrite `source`."""
    out = Path(path)
    if source is not None:
        refuse_overwriting_input(out, source)
    if out.exists() and out.is_dir():
        raise GraphpruneError(f"{out}: is a directory")
    large = model.ByteSize() > _EXTERNAL_DATA_THRESHOLD
    with atomic_path(out) as tmp:
        if large:
            data_name = out.name + ".data"
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name + ".tmp")
            os.replace(out.parent / (data_name + ".tmp"), out.parent / data_name)
            # the model file still names the temporary data file: rewrite the location
            m = onnx.load(tmp, load_external_data=False)
            for t in m.graph.initializer:
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            onnx.save_model(m, tmp)
        else:
            onnx.save_model(model, tmp)
    return out


def refuse_overwriting_input(output: str | os.PathLike, source: str | os.PathLike) -> None:
    """Inputs are never modified: an output path naming the input is an error."""
    if _same_file(Path(output), Path(source)):
        raise GraphpruneError(f"{output}: output path is the input model; choose another -o")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
