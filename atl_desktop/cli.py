"""The `atl` command: everything the window can do, without a display."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from atl_desktop import __version__
from atl_desktop.jobs import Cancelled
from atl_desktop.store import ProjectError
from atl_desktop.store.errors import storage_error

# Each module registers its own subcommands; a missing optional area is skipped
# only if the module itself is absent, never when it fails to import.
COMMAND_MODULES = (
    "atl_desktop.commands.project",
    "atl_desktop.commands.data",
    "atl_desktop.commands.train",
    "atl_desktop.commands.active",
    "atl_desktop.commands.encoder",
    "atl_desktop.commands.round",
    "atl_desktop.commands.simulate",
    "atl_desktop.commands.gan",
    "atl_desktop.commands.slides",
    "atl_desktop.commands.scale",
    "atl_desktop.commands.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atl",
        description="ATL Desktop on the command line: projects, import, labels, training, queries.",
    )
    parser.add_argument("--version", action="version", version=f"atl {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user asked for something impossible: one line, no traceback."""
    errors: list[type[BaseException]] = [ProjectError, FileNotFoundError, PermissionError]
    for module, name in (
        ("atl_desktop.data.decode", "ImageDecodeError"),
        ("atl_desktop.models.checkpoints", "CheckpointError"),
    ):
        # A module not imported raised nothing; importing it here would pull torch into a
        # command that needs no model.
        error = getattr(sys.modules.get(module), name, None)
        if error is not None:
            errors.append(error)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    code = run_command(argv)
    context = sys.modules.get("atl_desktop.dist")  # loaded only by distributed commands
    if context is not None and context.joined_a_group():
        context.leave_process(code)  # a rank of an outside torchrun/SLURM launch: see leave_process
    return code


def run_command(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("atl: cancelled; everything done so far is saved.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("atl: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`atl info P.atl | head`): what it wanted was printed. Point
        # stdout at nothing so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE
    except Exception as error:  # only user mistakes (and full or read-only disks) are caught
        if not isinstance(error, user_errors()):
            where = getattr(error, "filename", None) or getattr(args, "project", None) or "the project"
            error = storage_error(error, where)
            if error is None:
                raise
        print(f"atl: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
