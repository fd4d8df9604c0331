"""The ``mmgraph`` command line. Each sub-command lives in its own module of :mod:`mmgraph.cli` with a
``register(subparsers)``; the modules are discovered, so a new command is one new module."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from mmgraph.errors import MMGraphError

#: listed first, in this order, in ``mmgraph --help``; other command modules follow alphabetically
FIRST = ["data", "graph", "train", "evaluate"]


def command_modules() -> List[str]:
    import pkgutil

    import mmgraph.cli as cli
    names = [m.name for m in pkgutil.iter_modules(cli.__path__) if m.name not in ("main",)
             and not m.name.startswith("_")]
    return [f"mmgraph.cli.{n}" for n in sorted(names, key=lambda n: (FIRST.index(n) if n in FIRST else len(FIRST), n))]


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other ``mmgraph`` error."""

    def error(self, message: str):
        message = " ".join(message.split())
        if message.startswith("unrecognized arguments:") and "=" in message:
            # `--set a=1 --epochs 2 b=2`: KEY=VALUE after another option is not a setting any more
            message += "; settings (KEY=VALUE) go right after --set, or give --set again before them"
        self.exit(2, f"mmgraph: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(prog="mmgraph", description="Multimodal graph recommendation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in command_modules():
        module = importlib.import_module(name)
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (one line on stderr, see Parser.error) or --help
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)   # recorded by commands that log their command line
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.verbose:   # mmgraph.utils.faiss_utils quiets FAISS's loader; --verbose shows it again
        logging.getLogger("faiss.loader").setLevel(logging.DEBUG)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:   # `mmgraph evaluate RUN | head`: the reader stopped; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())     # so that the interpreter's final flush does not fail again
        return 0
    except MMGraphError as exc:
        print(f"mmgraph: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the user named cannot be read or written (permissions, disk full, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mmgraph: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmgraph: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
