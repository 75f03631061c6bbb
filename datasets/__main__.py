"""`python -m datasets <command>`: command-line tools for TFRecord data sets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from datasets import inspect
from datasets.errors import UserError


class _Parser(argparse.ArgumentParser):
    """Bad flags get the same one-line `error: ...` and exit code 2 as bad data."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the chosen command, and return the exit code."""
    parser = _Parser(prog="python -m datasets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = commands.add_parser("inspect", help=inspect.HELP, description=inspect.__doc__)
    inspect.add_arguments(sub)
    sub.set_defaults(run=inspect.run)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; nothing more to say
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
