"""Shell completion: `pivotbuild completion SHELL`, and answering the shell.

It is click's protocol.  The script `pivotbuild completion SHELL` prints
defines a shell function that, on Tab, runs `pivotbuild` again with
`_PIVOTBUILD_COMPLETE=SHELL_complete` and the words of the command line in
`COMP_WORDS` / `COMP_CWORD`; that run prints the candidates and nothing else.
`main` (cli/__init__.py) sends any invocation carrying the variable here,
before the fast path, so a completion request never builds.

Subcommand and option names come from click.  Target arguments complete the
names a command line can use (stages, matrix variants, matrix bases, `dir:name`
of included pipelines), read from the compiled plan when it is fresh, else by
compiling the Pivotfile, honouring the `-C`, `-f` and NAME=VALUE words already
on the line.  A completion request takes no lock and writes nothing (not even
the plan: it may be asked for in any directory, on every Tab, and must leave
no `.pivot/` behind), and an error of any kind completes nothing, silently:
whatever went to stderr would land in the middle of the user's command line.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import click
from click.shell_completion import CompletionItem, get_completion_class, shell_complete

COMPLETE_VAR = "_PIVOTBUILD_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
# ctx.meta key, set by PivotGroup.parse_args: the word being completed is where
# a subcommand name goes (before it, nothing but -C and -f).
COMMAND_SLOT = "pivotbuild.command_slot"


def answer(instruction: str) -> int:
    """Answer the shell's request (`SHELL_complete`, or `SHELL_source` for the
    script); the exit status.  Never raises, and on a completion request never
    writes to stderr."""
    from pivotbuild.cli.app import cli

    quiet = contextlib.redirect_stderr(io.StringIO()) if instruction.endswith("_complete") else contextlib.nullcontext()
    try:
        with quiet:
            return shell_complete(cli, {}, "pivotbuild", COMPLETE_VAR, instruction)
    except (Exception, KeyboardInterrupt):
        return 1


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("shell", type=click.Choice(SHELLS), metavar="SHELL")
def completion(shell: str) -> int:
    """Print the completion script for SHELL: bash, zsh or fish.

    Sourced, it makes the shell complete pivotbuild's subcommands, options
    and targets (stages, matrix variants, `dir:name`).  To have it in every
    new shell, add to

    \b
      ~/.bashrc:                   eval "$(pivotbuild completion bash)"
      ~/.zshrc (after compinit):   eval "$(pivotbuild completion zsh)"
      ~/.config/fish/config.fish:  pivotbuild completion fish | source
    """
    from pivotbuild.cli.app import cli

    shell_class = get_completion_class(shell)
    assert shell_class is not None  # click knows every shell in SHELLS
    click.echo(shell_class(cli, {}, "pivotbuild", COMPLETE_VAR).source(), nl=False)
    return 0


def complete_directory(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`-C DIR`: the shell's own directory completion."""
    return [CompletionItem(incomplete, type="dir")]


def complete_file(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`-f FILE`: the shell's own file completion."""
    return [CompletionItem(incomplete, type="file")]


def complete_targets(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The targets starting with `incomplete` (and, in a bare `pivotbuild`'s
    first word, the subcommands too).  If nothing matches, the shell's file
    completion: an output path is a target as well.  No targets at all if the
    project cannot be loaded."""
    words = tuple(ctx.params.get(param.name or "") or ())
    typed, keep = _bash_colon(words, incomplete)
    commands = _commands(typed) if ctx.meta.get(COMMAND_SLOT) else []
    try:
        names = _target_names(ctx, words)
    except Exception:  # a broken Pivotfile, an unreadable file, anything: no targets, and not a word
        return commands
    matching = [n[keep:] for n in names if n.startswith(typed)]
    if not matching and not commands:
        return [CompletionItem(incomplete, type="file")]
    return [*commands, *(CompletionItem(n) for n in matching)]


def _bash_colon(words: tuple[str, ...], incomplete: str) -> tuple[str, int]:
    """What the user typed of the target, and how much of it the shell keeps.

    Bash splits words at `:` (COMP_WORDBREAKS), so `sub:tr` reaches us as the
    words `sub`, `:` and `tr`, and its candidates must be the part after the
    colon; `sub:` arrives as `sub` and `:`, and `:` is then the word replaced."""
    if not os.environ.get(COMPLETE_VAR, "").startswith("bash"):
        return incomplete, 0
    if incomplete == ":" and words:
        return words[-1] + ":", len(words[-1])
    if len(words) >= 2 and words[-1] == ":":
        prefix = words[-2] + ":"
        return prefix + incomplete, len(prefix)
    return incomplete, 0


def _commands(incomplete: str) -> list[CompletionItem]:
    from pivotbuild.cli.names import COMMANDS

    return [CompletionItem(name) for name in COMMANDS if name.startswith(incomplete)]


def _target_names(ctx: click.Context, words: tuple[str, ...]) -> list[str]:
    """Every name a target can be, sorted: in the current pipeline bare, in
    the others `dir:name` (`.:name` for the root's), bases of matrices too."""
    from pivotbuild.build.load import stage_names
    from pivotbuild.cli.buildargs import split_args
    from pivotbuild.cli.common import pivotfile_arg
    from pivotbuild.project import LoadOptions

    _, overrides = split_args(words)
    options = LoadOptions(Path.cwd(), pivotfile_arg(ctx), overrides, bool(ctx.params.get("all_pipelines")))
    current, stages = stage_names(options)
    names: set[str] = set()
    for pipeline, name, base, has_matrix in stages:
        prefix = "" if pipeline == current else f"{pipeline or '.'}:"
        names.add(prefix + name)
        if has_matrix:
            names.add(prefix + base)
    return sorted(names)
