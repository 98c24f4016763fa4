"""Command-line dispatch shared by ``python -m data_pipeline`` and ``python -m pretrain``.

A command is a module with ``add_arguments(parser)`` and ``main(args) -> int``; the table
maps its name to the module, which is imported only when that command runs (``importlib``:
``--help`` stays fast and one command's dependencies never slow another).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from data_pipeline.common.errors import CommandError


def dispatch(prog: str, description: str, commands: dict, argv: list[str] | None) -> int:
    """Parse ``argv`` against ``{name: (module, help)}`` and run the chosen command's
    ``main``; a ``CommandError`` is printed as ``error: ...`` and gives exit status 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:  # only import the module of the command being run
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    module = importlib.import_module(commands[args.command][0])
    try:
        return int(module.main(args) or 0)
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
