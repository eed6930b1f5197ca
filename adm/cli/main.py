"""The `adm` command: one sub-command per module, each a thin wrapper over the library."""
from __future__ import annotations

import argparse
import importlib
import sys

from adm.errors import AdmError

# Each module defines `register(subparsers)`, which adds its parser(s) and sets `func(args) -> int`.
COMMAND_MODULES = [
    "adm.cli.train",
    "adm.cli.evaluate",
    "adm.cli.convert",
    "adm.cli.sample",
    "adm.cli.upsample",
    "adm.cli.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adm",
        description="Diffusion Models Beat GANs on Image Synthesis: sample, train, upsample and evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AdmError as e:
        print(f"adm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed
        sys.stderr.close()
        return 1
    except KeyboardInterrupt:
        print(f"adm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
