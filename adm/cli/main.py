"""The `adm` command: one sub-command per module, each a thin wrapper over the library."""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import sys
import warnings

from adm.errors import AdmError

# Each module defines `register(subparsers)`, which adds its parser(s) and sets `func(args) -> int`.
COMMAND_MODULES = [
    "adm.cli.train",
    "adm.cli.evaluate",
    "adm.cli.convert",
    "adm.cli.info",
    "adm.cli.sample",
    "adm.cli.upsample",
    "adm.cli.demo",
    "adm.cli.reproduce",
]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that names the closest option for an unknown one (`did you mean --sampler?`)."""

    def unrecognized(self, extras: list[str]) -> None:
        """Exit (status 2) with this parser's usage, the unknown arguments and the nearest option."""
        options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        hints = []
        for arg in extras:
            if arg.startswith("-"):
                close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1, cutoff=0.6)
                if close and close[0] not in hints:
                    hints.append(close[0])
        hint = f" (did you mean {' or '.join(hints)}?)" if hints else ""
        self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="adm",
        description="Diffusion Models Beat GANs on Image Synthesis: sample, train, upsample and evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """parse_args, except that unknown arguments are reported by the sub-command's own parser (its
    usage, not the top-level one) with the closest option it has."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        owner = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and getattr(args, "command", None) in action.choices:
                owner = action.choices[args.command]
        if isinstance(owner, Parser):
            owner.unrecognized(extras)
        owner.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


# -- warnings: one plain line on stderr for adm's own, while a command runs ------------------------
_ADM_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the adm package


def _is_adm_warning(category: type, filename: str) -> bool:
    """A warning adm itself gives: one of its warning classes, or issued from (or for) adm's own code."""
    from adm.data.folder import CorruptImageWarning

    if issubclass(category, CorruptImageWarning):
        return True
    try:
        return os.path.commonpath([_ADM_DIR, os.path.abspath(filename)]) == _ADM_DIR
    except ValueError:  # another drive, an empty name
        return False


@contextlib.contextmanager
def plain_warnings(command: str):
    """While a command runs, show adm's warnings as `adm COMMAND: warning: MESSAGE` (one line, no source
    line); other warnings, and library users' warnings outside the CLI, are shown as Python shows them."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not _is_adm_warning(category, filename):
            return previous(message, category, filename, lineno, file, line)
        text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
        stream = file if file is not None else sys.stderr
        try:
            print(f"adm {command}: warning: {text}", file=stream)
        except (OSError, ValueError):  # stderr closed or gone: a warning must never end the command
            pass

    warnings.showwarning = show
    try:
        yield
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = previous


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from adm.runtime import keep_cpu_memory

    keep_cpu_memory()  # CPU steps reuse their activations' memory (see adm.runtime)
    try:
        with plain_warnings(args.command):
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
