"""`python -m datasets <command>`: command-line tools for TFRecord data sets."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from datasets.errors import UserError

# name -> module; a new command is one more line here plus a module with the same three names.
COMMANDS = {"inspect": "datasets.inspect"}


class _Parser(argparse.ArgumentParser):
    """Bad flags get the same one-line `error: ...` and exit code 2 as bad data."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the chosen command, and return the exit code."""
    parser = _Parser(prog="python -m datasets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
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
