"""Reading and writing ONNX files: clear errors for bad input, atomic writes.

Every command reads through `read_model` and writes through `write_model` (or,
for other files, `atomic_path`), so a missing or corrupt file always gives the
same one-line error, an interrupted write never leaves a half-written output
behind, and no spelling of the input's path (symlink, hard link, `..`,
relative or absolute) lets an output replace it.

onnx is imported inside the functions: the CLI checks output paths before it
loads anything, and `graphprune --help` should not pay for onnx's import.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from graphprune.errors import GraphpruneError

if TYPE_CHECKING:
    import onnx

# protobuf cannot serialise a message over 2 GiB; above this the weights go to a side file.
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# how a serialized TensorProto names its external file: StringStringEntryProto{key: "location"}
_LOCATION_KEY = b"\n\x08location"


# ---------------------------------------------------------------- reading

def read_model(path: str | os.PathLike) -> "onnx.ModelProto":
    """Load an ONNX file (external data included) or raise a GraphpruneError naming the problem."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    try:
        exists, is_file = p.exists(), p.is_file()
    except (OSError, ValueError) as exc:  # a name with NUL bytes, a path too long
        raise GraphpruneError(f"{p}: cannot read ({_reason(exc)})") from None
    if not exists:
        raise GraphpruneError(f"{p}: no such file")
    if not is_file:
        raise GraphpruneError(f"{p}: not a file")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise GraphpruneError(f"{p}: not a readable ONNX model ({_first_line(exc)})") from None
    except Exception as exc:  # protobuf raises assorted types for truncated input
        raise GraphpruneError(f"{p}: not a readable ONNX model ({type(exc).__name__})") from None
    return _with_nodes(model, str(p))


def parse_model(data: bytes | bytearray | memoryview, what: str = "model bytes") -> "onnx.ModelProto":
    """A serialized ModelProto (what `model.SerializeToString()` gives) parsed, or a GraphpruneError.
    External data cannot be resolved without a folder: such models must be loaded from their path."""
    import onnx

    m = onnx.ModelProto()
    try:
        m.ParseFromString(bytes(data))
    except Exception as exc:  # DecodeError, or assorted types for truncated input
        raise GraphpruneError(f"{what}: not a serialized ONNX model ({_first_line(exc)})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        raise GraphpruneError(f"{what}: the model keeps its weights in external files; load it from its path")
    return _with_nodes(m, what)


def _with_nodes(model, what: str):
    # protobuf parses almost any bytes (a text file, an empty file) as a message with no graph
    if not model.graph.node:
        raise GraphpruneError(f"{what}: not an ONNX model (the graph has no nodes)")
    return model


# ---------------------------------------------------------------- output paths

def check_output_path(output: str | os.PathLike) -> Path:
    """An output must name a file we can create: not a folder (`-o out/`, `-o existing_dir`) and
    not below a regular file (`-o model.onnx/x.onnx`). Checked before any work, so a long run does
    not end in an error about its output."""
    raw = os.fspath(output)
    if not raw:
        raise GraphpruneError("the output path is empty")
    if raw.endswith(os.sep) or (os.altsep and raw.endswith(os.altsep)):
        raise GraphpruneError(f"{raw}: output path ends in {raw[-1]!r}: give a file name, not a folder")
    out = Path(raw)
    try:
        if out.is_dir():
            raise GraphpruneError(f"{raw}: is a folder; give a file name for the output")
        for parent in out.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise GraphpruneError(f"{raw}: cannot create the output: {parent} is not a folder")
                break
    except (OSError, ValueError) as exc:
        raise GraphpruneError(f"{raw}: unusable output path ({_reason(exc)})") from None
    return out


def refuse_overwriting_input(output: str | os.PathLike, source: str | os.PathLike) -> None:
    """Inputs are never modified: refuse an output that is the input model or one of its
    external-data files, however spelled (symlink either way, hard link, `..`, relative or
    absolute); also refuse an output path that cannot name a file (see check_output_path).

    Works on paths that do not exist yet, so a command can call it first thing: `optimize`
    checks `refuse_overwriting_input(Path(outdir) / "best.onnx", model)` before its search."""
    out = check_output_path(output)
    src = Path(source)
    if _same_file(out, src):
        raise GraphpruneError(f"{output}: output path is the input model; choose another -o")
    if os.path.exists(os.path.realpath(out)) and any(_same_file(out, d) for d in external_data_files(src)):
        raise GraphpruneError(f"{output}: output path is the input model's external data file; choose another -o")


def _same_file(a: Path, b: Path) -> bool:
    """Same file by identity (hard links, symlinks) when both exist, else by resolved path
    (realpath folds `..` and symlinked folders, and resolves a not-yet-existing name lexically)."""
    try:
        ra, rb = os.path.realpath(a), os.path.realpath(b)
        if ra == rb:
            return True
        return os.path.exists(ra) and os.path.exists(rb) and os.path.samefile(ra, rb)
    except (OSError, ValueError):
        return os.path.abspath(a) == os.path.abspath(b)


def external_data_files(model_path: str | os.PathLike) -> list[Path]:
    """The side files an ONNX file's tensors point into (empty for a self-contained model).
    The file is first scanned for the serialized "location" key, so a 100 MB model without
    external data is not parsed just to find that out."""
    p = Path(model_path)
    try:
        st = p.stat()
        if not p.is_file() or st.st_size == 0:
            return []
        key = (os.path.realpath(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _DATA_FILES:
            _DATA_FILES.clear()  # one model per command: no need to remember more
            _DATA_FILES[key] = _scan_locations(p)
        return [p.parent / loc for loc in _DATA_FILES[key]]
    except Exception:  # unreadable or not ONNX: it references nothing we could protect
        return []


_DATA_FILES: dict[tuple, list[str]] = {}  # a command checks its input before and again at the write


def _scan_locations(p: Path) -> list[str]:
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm.find(_LOCATION_KEY) < 0:
            return []
    import onnx
    m = onnx.load(str(p), load_external_data=False)
    return sorted({e.value for t in _all_tensors(m) for e in t.external_data if e.key == "location"})


def _all_tensors(model):
    from onnx.external_data_helper import _get_all_tensors
    return _get_all_tensors(model)


# ---------------------------------------------------------------- writing

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path (ending in `suffix`) beside `path`; on success it replaces `path`
    in one rename.

    The result gets the permissions a plain open() would have given it, 0666 & ~umask (0777 &
    ~umask when the writer made it executable, as a linker does): mkstemp's 0600 would hide
    outputs from the group the user shares them with. OS failures (read-only folder, full disk,
    a parent that is a regular file) become a one-line GraphpruneError naming the path."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GraphpruneError(f"{out}: cannot create its folder ({_reason(exc)})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
        os.close(fd)
    except OSError as exc:
        raise GraphpruneError(f"{out}: cannot create a file in {out.parent} ({exc.strerror or exc})") from None
    try:
        yield tmp
        _apply_umask(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise GraphpruneError(f"{out}: cannot write the output ({_reason(exc, tmp, out)})") from None
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                os.unlink(tmp)


def write_model(model: "onnx.ModelProto", path: str | os.PathLike, *,
                source: str | os.PathLike | None = None) -> Path:
    """Write `model` to `path` atomically; refuse to overwrite `source` (or its data files).
    `model` is not modified."""
    import onnx

    out = check_output_path(path)
    if source is not None:
        refuse_overwriting_input(path, source)
    if _serialized_size(model) > _EXTERNAL_DATA_THRESHOLD:
        _write_pair(model, out, source)
    else:
        with atomic_path(out) as tmp:
            onnx.save_model(model, tmp)
    return out


def _serialized_size(model) -> int:
    """model.ByteSize() within a few bytes per tensor and node (far inside the 200 MB margin
    below protobuf's 2 GiB limit). upb's ByteSize on the whole model serialises it, which took
    as long as the write itself; the size of each part is cheap."""
    g = model.graph
    parts = (g.initializer, g.node, g.sparse_initializer, g.input, g.output, g.value_info,
             model.functions, model.metadata_props)
    return sum(x.ByteSize() for field in parts for x in field)


def _write_pair(model, out: Path, source) -> None:
    """A model too large for one protobuf: weights in `<out>.<token>.data`, a name no existing
    file has (so neither the input's data file nor the old output's can be overwritten), then the
    model naming it renamed over `out`. Until that rename the old pair is whole; after it the new
    one is; a crash in between leaves at most an orphan data file. Only then does the old pair's
    data file go, and only if graphprune wrote it for this output and the input does not use it."""
    import onnx

    old_data = [d for d in external_data_files(out) if _is_own_data_file(d, out)]
    data = _reserve_data_file(out)
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # save_model moves the weights out of the proto it is given
        with atomic_path(out) as tmp:
            onnx.save_model(copy, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name)
            _fsync(data)  # the model must never be renamed in front of weights still in flight
    except BaseException:
        with contextlib.suppress(OSError):
            data.unlink()
        raise
    keep = {data, *(external_data_files(source) if source is not None else [])}
    for old in old_data:
        if not any(_same_file(old, k) for k in keep):
            with contextlib.suppress(OSError):
                old.unlink()


def _reserve_data_file(out: Path) -> Path:
    for _ in range(100):
        data = out.parent / f"{out.name}.{secrets.token_hex(4)}.data"
        try:
            os.close(os.open(data, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode & ~umask
            return data
        except FileExistsError:
            continue
        except OSError as exc:
            raise GraphpruneError(f"{data}: cannot create the output's data file ({_reason(exc)})") from None
    raise GraphpruneError(f"{out}: no free name for the output's data file")


def _is_own_data_file(data: Path, out: Path) -> bool:
    return data.parent == out.parent and re.fullmatch(re.escape(out.name) + r"\.[0-9a-f]{8}\.data", data.name) is not None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _apply_umask(tmp: str) -> None:
    executable = os.stat(tmp).st_mode & 0o111
    os.chmod(tmp, (0o777 if executable else 0o666) & ~current_umask())


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only be read by
    setting it, which would race with threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- messages

def _reason(exc: BaseException, *unnamed) -> str:
    """The OS's words for an OSError ('Read-only file system'), plus the file it names unless
    that is one of `unnamed` (a temporary name the user never gave)."""
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename2 or exc.filename
        hidden = {os.fspath(u) for u in unnamed}
        return f"{exc.strerror}: {name}" if name and os.fspath(name) not in hidden else exc.strerror
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
