"""Entry point: `suparag`, one sub-app per command group.

The command modules import the runtime (psycopg, the models, the local stack),
which costs most of a second. `suparag --help` needs none of it, so the root
group loads a command's module only when that command runs (or its own
`--help` is asked for): `_COMMANDS` names each command's module and the line
the root help shows for it. The root help is click's plain format (typer's rich
format alone costs a quarter of a second to import); each command's own help is
rich. `tests/test_cli_help.py` runs every command's `--help`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

#: name -> ("module:attribute", the line the root help shows). An attribute that
#: is a `typer.Typer` is a command group; otherwise it is one command. Each
#: command's own `--help` carries its full text.
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cli.demo:demo", "Local stack, sample corpus, search and ask as each user."),
    "worker": ("cli.workers:worker", "Embed documents and answer questions as they commit."),
    "ingest": ("cli.ingest:ingest", "Read files (text, HTML, PDF, Office, EPUB) as documents."),
    "search": ("cli.search:search", "Search the documents as a user, under their RLS."),
    "ask": ("cli.ask:ask", "Ask as a user; cites only documents they may read."),
    "usage": ("cli.usage:usage", "Model calls, tokens and latency per feature and model."),
    "status": ("cli.status:status", "How far embedding has got: documents, queue, failures."),
    "token": ("cli.token:token", "Print an access token for a local user."),
    "mcp": ("cli.mcp:mcp", "Serve search and ask to MCP clients, as a user under RLS."),
    "serve": ("cli.serve:serve", "Edge functions (embed, search) as the calling user."),
    "dev": ("cli.dev:app", "The local stack: PostgreSQL, the Supabase-style API, workers."),
    "db": ("cli.db:app", "Apply and inspect suparag's migrations."),
    "users": ("cli.users:app", "Manage local users (rows in auth.users)."),
    "jobs": ("cli.jobs:app", "Inspect and retry failed embedding jobs."),
    "bench": ("cli.bench:app", "Benchmarks: figures and ratios measured in one run."),
    "eval": ("cli.eval:app", "Measure retrieval quality; tune hybrid search's weights."),
    "export": ("cli.export:app", "Export data for other tools, such as fine-tuning sets."),
    "spaces": ("cli.spaces:app", "Embedding spaces: add a model, fill it, switch to it."),
    "models": ("cli.models:app", "Make a local model's int8 export (onnx-int8 backend)."),
}


def load_command(name: str) -> Any:
    """Import `name`'s module and build its click command (a group for a sub-app)."""
    target, _ = _COMMANDS[name]
    module_name, attribute = target.split(":")
    obj = getattr(importlib.import_module(module_name), attribute)
    command: Any
    if isinstance(obj, typer.Typer):
        command = typer.main.get_group(obj)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name=name)(obj)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """The root group: lists every command from `_COMMANDS` and imports one only to
    run it or show its own help (both go through `resolve_command`)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *_COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in _COMMANDS:
            return command
        # Only the root help and completion ask for a command by name here (running
        # one goes through resolve_command): they need its name and its line.
        return typer.core.TyperCommand(cmd_name, help=_COMMANDS[cmd_name][1])

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name = args[0] if args else None
        if name in _COMMANDS and super().get_command(ctx, name) is None:
            return name, load_command(name), args[1:]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="suparag",
    cls=LazyGroup,
    rich_markup_mode=None,
    help="A Supabase-native RAG backend: migrations, RLS-bounded search, and the workers "
    "that embed documents and answer questions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """A Supabase-native RAG backend: migrations, RLS-bounded search, and the workers
    that embed documents and answer questions."""


@app.command(short_help="Write suparag's migrations into a Supabase project.")
def init(
    directory: Annotated[
        Path, typer.Argument(help="Project folder; its supabase/ folder is created if missing.")
    ] = Path("."),
    edge_function: Annotated[
        bool, typer.Option(help="Also write supabase/functions/embed/index.ts: query "
                           "embeddings with Supabase's built-in gte-small, for a space whose "
                           "model is gte-small (docs/edge-functions.md).")
    ] = True,
) -> None:
    """Write suparag's migrations (and a config.toml if none) into a Supabase project,
    and the `embed` Edge Function (gte-small) unless --no-edge-function.

    Then `supabase db push --remote` (Supabase CLI 3; CLI 2: `supabase db push`) deploys
    the migrations to your linked project, and `supabase functions deploy embed` the
    function. Nothing already there is
    overwritten.
    """
    from cli._common import console
    from worker.project import init_project

    result = init_project(directory, edge_functions=edge_function)
    for path in result.written:
        console.print(f"wrote [green]{path}[/green]")
    for path in result.unchanged:
        console.print(f"kept  {path}")
    console.print("Next: `supabase link` to your project, then `supabase db push --remote`"
                  + (" (and `supabase functions deploy embed` for gte-small query "
                     "embeddings)." if edge_function else "."))


def main() -> None:
    """Run the CLI, turning suparag's own errors into a message and exit code 1."""
    try:
        app()
    except Exception as exc:
        # Imported here: worker.errors loads psycopg, which `--help` does not need.
        from worker.errors import SuparagError

        if not isinstance(exc, SuparagError):
            raise
        from cli._common import err_console

        err_console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from None
