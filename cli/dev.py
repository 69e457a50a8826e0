"""`suparag dev`: the local database, the Supabase-compatible API and the workers."""

from __future__ import annotations

from typing import Annotated

import typer

from cli._common import JsonOption, cli_command, console, err_console, print_json
from worker import schema
from worker.db import connect
from worker.devstack import stack
from worker.settings import Settings, get_settings

app = typer.Typer(
    help="Run the local stack: an embedded PostgreSQL with pgvector that looks like a "
    "Supabase project, with suparag's migrations applied, and an API on one port that "
    "the official Supabase clients use (/rest/v1, /auth/v1, /realtime/v1, /functions/v1), "
    "and the workers that embed documents and answer questions.",
    no_args_is_help=False,
)

PortOption = Annotated[
    int | None,
    typer.Option(
        "--db-port",
        help="Port for the local PostgreSQL \\[default: SUPARAG_DB_PORT or 54322].",
    ),
]
ApiPortOption = Annotated[
    int | None,
    typer.Option(
        "--api-port",
        help="Port for the local API \\[default: SUPARAG_API_PORT, else one below the DB "
        "port: 54321].",
    ),
]
NoApiOption = Annotated[
    bool, typer.Option("--no-api", help="Do not start the HTTP API.")
]
NoWorkersOption = Annotated[
    bool, typer.Option("--no-workers", help="Do not start the workers (run `suparag worker` "
                       "yourself, e.g. to watch it or to use other options).")
]


def _keys_info(settings: Settings) -> dict[str, str]:
    keys = stack.project_keys(settings)
    return {"anon_key": keys.anon_key, "service_role_key": keys.service_role_key,
            "jwt_secret": keys.jwt_secret}


@app.callback(invoke_without_command=True)
def dev(ctx: typer.Context, db_port: PortOption = None, api_port: ApiPortOption = None,
        no_api: NoApiOption = False, no_workers: NoWorkersOption = False,
        json_out: JsonOption = False) -> None:
    """Start the local database, API and workers (or reuse them), apply pending migrations.

    Returns once they are up (the workers' model loaded) and prints the DB
    URL, the API URL and its keys. The workers (`suparag worker`: embeddings
    and answers) then drain both queues; their log is
    SUPARAG_HOME/logs/worker.log. Data,
    keys (keys.json) and logs live in SUPARAG_HOME (default ./.suparag);
    running it again reuses them. All keep running in the background until
    `suparag dev stop`.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = get_settings()
    with err_console.status("Starting the local database, API and workers…", spinner="dots"):
        started = stack.start(settings, port=db_port, api_port=api_port, api=not no_api,
                              worker_command=None if no_workers else cli_command("worker"))
    if json_out:
        info: dict[str, object] = {
            "db_url": started.server.url,
            "pid": started.server.pid,
            "reused": started.reused,
            "applied": [m.path.name for m in started.applied],
        }
        if started.api is not None:
            info.update(api_url=started.api.url, api_pid=started.api.pid,
                        api_reused=started.api_reused, **_keys_info(settings))
        if started.workers is not None:
            info.update(worker_pid=started.workers.pid, worker_reused=started.workers_reused,
                        worker_health_url=(f"http://127.0.0.1:{started.workers.http_port}/health"
                                           if started.workers.http_port else None),
                        worker_log=str(stack.local_workers(settings).log_path))
        print_json(info)
        return
    verb = "Reusing" if started.reused else "Started"
    if db_port is not None and db_port != started.server.port:
        console.print(
            f"[yellow]note:[/yellow] the server already runs on port {started.server.port}; "
            f"run `suparag dev stop` first to move it to {db_port}."
        )
    console.print(f"{verb} local PostgreSQL (pid {started.server.pid}, data in {settings.home}).")
    for migration in started.applied:
        console.print(f"  applied [green]{migration.path.name}[/green]")
    console.print(f"\nDB URL: [bold]{started.server.url}[/bold]")
    if started.api is not None and started.keys is not None:
        if api_port is not None and api_port != started.api.port:
            console.print(
                f"[yellow]note:[/yellow] the API already runs on port {started.api.port}; "
                f"run `suparag dev stop` first to move it to {api_port}."
            )
        console.print(f"API URL: [bold]{started.api.url}[/bold]")
        console.print(f"anon key: {started.keys.anon_key}", soft_wrap=True)
        console.print(f"service_role key: {started.keys.service_role_key}", soft_wrap=True)
    if started.workers is not None:
        verb = "Reusing" if started.workers_reused else "Started"
        console.print(f"{verb} the workers (pid {started.workers.pid}, log "
                      f"{stack.local_workers(settings).log_path}).")
    console.print("Stop it with `suparag dev stop`.")


@app.command()
def status(json_out: JsonOption = False) -> None:
    """Show whether the local database, API and workers run: URLs, keys, migrations, logs.

    Exits 1 when the database is not running.
    """
    settings = get_settings()
    server = stack.local_server(settings)
    running = server.status()
    api = stack.local_api(settings)
    api_running = api.status()
    workers = stack.local_workers(settings)
    workers_running = workers.status()
    info: dict[str, object] = {
        "running": running is not None,
        "home": str(server.home),
        "log": str(server.log_path),
        "api_running": api_running is not None,
        "api_log": str(api.log_path),
        "worker_running": workers_running is not None,
        "worker_log": str(workers.log_path),
    }
    health = workers_running.health() if workers_running is not None else None
    if workers_running is not None:
        info.update(worker_pid=workers_running.pid, worker_health=health)
    if api_running is not None:
        info.update(api_url=api_running.url, api_pid=api_running.pid, **_keys_info(settings))
    if running is not None:
        info.update(db_url=running.url, pid=running.pid)
        with connect(running.url) as conn:
            state = schema.state(conn)
        info.update(applied=len(state.applied), pending=len(state.pending))
    if json_out:
        print_json(info)
    elif running is None:
        console.print(f"Local database: [yellow]stopped[/yellow] (data in {server.home}).")
        console.print("Start it with `suparag dev`.")
    else:
        console.print(f"Local database: [green]running[/green] (pid {running.pid})")
        console.print(f"DB URL: [bold]{running.url}[/bold]")
        console.print(f"Migrations: {info['applied']} applied, {info['pending']} pending")
        console.print(f"Logs: {server.log_path}")
    if not json_out and api_running is None:
        console.print("API: [yellow]stopped[/yellow] (start it with `suparag dev`).")
    elif not json_out:
        console.print(f"API: [green]running[/green] (pid {info['api_pid']})")
        console.print(f"API URL: [bold]{info['api_url']}[/bold]")
        console.print(f"anon key: {info['anon_key']}", soft_wrap=True)
        console.print(f"service_role key: {info['service_role_key']}", soft_wrap=True)
        console.print(f"JWT secret: {info['jwt_secret']}", soft_wrap=True)
        console.print(f"API logs: {api.log_path}")
    if not json_out and workers_running is None:
        console.print("Workers: [yellow]stopped[/yellow] (start them with `suparag dev` or "
                      "`suparag worker`).")
    elif not json_out:
        console.print(f"Workers: [green]running[/green] (pid {info['worker_pid']})")
        if health is not None:
            totals, answers = health["totals"], health.get("answers") or {}
            console.print(
                f"  model {health['model']}, {'ready' if health['ready'] else 'starting'}; "
                f"since start: {totals['embedded']} documents embedded, "
                f"{answers.get('answered', 0)} questions answered, "
                f"{totals['failed'] + answers.get('failed', 0)} failed"
            )
        console.print(f"Worker logs: {workers.log_path}")
    if running is None:
        raise typer.Exit(code=1)


@app.command()
def stop() -> None:
    """Stop the workers, the local API and the database. Data and keys stay.

    The workers get SIGTERM and finish the batch in hand first.
    """
    settings = get_settings()
    with err_console.status("Stopping…", spinner="dots"):
        workers_ran, api_ran, db_ran = stack.stop(settings)
    if workers_ran:
        console.print("Stopped the workers.")
    if api_ran:
        console.print("Stopped the local API.")
    if db_ran:
        console.print("Stopped the local database.")
    else:
        console.print("The local database was not running.")
