"""The click command tree.

`pivotbuild [OPTIONS] [TARGET | NAME=VALUE]...` builds; if the first word is
a subcommand's name it is that subcommand.  `pivotbuild repro NAME` builds a
stage whose name is also a subcommand's.
"""

from __future__ import annotations

import importlib

import click

from pivotbuild import __version__
from pivotbuild.cli.buildargs import DIRECTORY, FILE
from pivotbuild.cli.common import project_options
from pivotbuild.cli.completion import COMMAND_SLOT
from pivotbuild.cli.names import COMMANDS  # each command's module is imported only when it runs

_GLOBAL_WITH_VALUE = (*DIRECTORY.flags, *FILE.flags)

EXAMPLES = """\
Examples:
  pivotbuild                      build the default targets (or every stage)
  pivotbuild -j4 train            build train (all its matrix variants) and what it needs
  pivotbuild 'train@small-*'      build the variants matching a pattern
  pivotbuild models/small.pkl     build the stage that writes a file
  pivotbuild -n --explain         show what would run, and why
  pivotbuild -q || echo stale     exit 1 if anything is out of date
  pivotbuild EPOCHS=5 train       override a Pivotfile variable
  pivotbuild -C sub check         validate the Pivotfile in sub/
  pivotbuild graph --format dot | dot -Tsvg > graph.svg
"""


class PivotGroup(click.Group):
    """A group whose bare words are build targets unless they name a subcommand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            module, attr = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"pivotbuild.cli.{module}"), attr)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return self.commands[cmd_name]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # The dict `-f` is kept in, made here so that during shell completion
        # (which parses without invoking `cli`) a subcommand's `-f` lands there too.
        ctx.ensure_object(dict)
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in _GLOBAL_WITH_VALUE:
                if i + 1 >= len(args):  # no value: let click say so
                    return super().parse_args(ctx, args)
                i += 2
            elif arg.startswith(("--directory=", "--file=")) or (arg[:2] in ("-C", "-f") and len(arg) > 2):
                i += 1
            else:
                break
        rest = args[i:]
        if ctx.resilient_parsing:  # completing: is the word being completed where a subcommand goes?
            ctx.meta[COMMAND_SLOT] = not rest
        if not rest or (rest[0] not in COMMANDS and rest[0] not in ("--help", "-h", "--version")):
            args = [*args[:i], "repro", *rest]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("pivotbuild", "[OPTIONS] [TARGET | NAME=VALUE]...")
        formatter.write_usage("pivotbuild", "[-C DIR] [-f FILE] COMMAND [ARGS]...")
        formatter.write_paragraph()
        formatter.write_text(
            "Build the targets and everything they depend on, running only the stages "
            "whose inputs, command or params changed since the last build."
        )
        repro = self.get_command(ctx, "repro")
        assert repro is not None
        sub_ctx = click.Context(repro, info_name="pivotbuild", parent=ctx)
        rows: dict[str, tuple[str, str]] = {}
        for c, params in ((sub_ctx, repro.get_params(sub_ctx)), (ctx, self.get_params(ctx))):
            for p in params:
                record = p.get_help_record(c) if isinstance(p, click.Option) else None
                if record is not None:
                    rows.setdefault(record[0], record)
        with formatter.section("Options"):
            formatter.write_dl(list(rows.values()))
        self.format_commands(ctx, formatter)
        formatter.write_paragraph()
        formatter.write(EXAMPLES)
        formatter.write_paragraph()
        formatter.write_text(
            "Exit status: 0 success; 1 a stage failed (-q: something is out of date); "
            "2 bad usage or a bad Pivotfile; 3 an internal error; 130 interrupted."
        )


@click.group(cls=PivotGroup, context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@project_options
@click.version_option(__version__, "--version", prog_name="pivotbuild", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    ctx.ensure_object(dict)
