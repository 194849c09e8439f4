"""The `graphprune` command: one subcommand per module, errors on one line.

Each module in COMMANDS has `register(subparsers)`, which adds its subparser and
sets `func` to a handler taking the parsed args and returning the exit code.
register() imports nothing heavy (torch, TVM, captum, onnxruntime, onnx): the
handlers import what they need, so `--help`, `--version` and every command that
does not use torch start in a fraction of a second.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from graphprune.errors import GraphpruneError

COMMANDS = [
    "graphprune.cli.prune_commands",   # analyze, prune
    "graphprune.cli.latency_commands",
    "graphprune.cli.optimize_commands",
    "graphprune.cli.importance_commands",
    "graphprune.cli.quantize_commands",
    "graphprune.cli.dynamic_commands",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"graphprune: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphprune", description="Hardware-aware filter pruning of ONNX CNNs.")
    from graphprune import __version__
    parser.add_argument("--version", action="version", version=f"graphprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GraphpruneError as exc:
        print(f"graphprune: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stderr.close()
        return 0
    except OSError as exc:  # the system refused a file (read-only, full disk, a file where a folder
        # should be) somewhere no command turned it into a GraphpruneError: still the user's to fix
        print(f"graphprune: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, with a way to get the traceback
        if os.environ.get("GRAPHPRUNE_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"graphprune: internal error: {type(exc).__name__}: {msg} "
              "(set GRAPHPRUNE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _os_error(exc: OSError) -> str:
    """'PATH: reason' from an OSError, the way the shell would say it."""
    text = str(exc).strip().splitlines()
    reason = exc.strerror or (text[0] if text else type(exc).__name__)
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(map(str, names))}: {reason}" if names else reason
