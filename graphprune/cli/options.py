"""Options several subcommands share, spelled and explained once."""
from __future__ import annotations

from graphprune.shape_defaults import DEFAULT_DYNAMIC_DIM


def add_input_shape(p, purpose: str, default: str | None = None) -> None:
    """--input-shape NAME=D,D,...: pins an input's dynamic dims (the one rule every command that
    runs a model uses otherwise: batch 1, every other dynamic dim DEFAULT_DYNAMIC_DIM; the
    analysis alone keeps them symbolic, which `default` says)."""
    default = default or f"batch 1, other dynamic dims {DEFAULT_DYNAMIC_DIM}"
    p.add_argument("--input-shape", action="append", metavar="NAME=D,D,...",
                   help=f"static shape of an input with dynamic dims, {purpose} (repeat per input; "
                        f"default: {default})")


def add_no_progress(p) -> None:
    """--no-progress, the one name for 'no progress output' (--quiet stays as an alias)."""
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="no progress output")
