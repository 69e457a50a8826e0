"""`suparag eval`: measure retrieval against an evaluation set, tune hybrid weights, history."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli._common import DbUrlOption, JsonOption, console, err_console, print_json, resolve_db_url
from worker import search as search_mod
from worker.db import connect
from worker.errors import ConfigError
from worker.evaluation import defaults as defaults_mod
from worker.evaluation import runner, tuning
from worker.evaluation.sets import load_set
from worker.search import HybridWeights

app = typer.Typer(help="Measure retrieval quality against an evaluation set (JSON Lines), "
                  "tune hybrid search's fusion weights, and list past runs.")

SetArgument = Annotated[Path, typer.Argument(
    help='JSON Lines: {"query": "...", "relevant": ["<document source or id>", ...]} per line.',
    show_default=False)]
SpaceOption = Annotated[str | None, typer.Option(
    "--space", help="The embedding space to search (default: the active one); runs are "
    "stored under the space's name, which `suparag spaces activate` compares.",
    show_default=False)]
AsOption = Annotated[str | None, typer.Option(
    "--as", help="Evaluate as this user (email or id); a line's own \"as\" wins. "
    "Default: anonymous, which reads public documents only.", show_default=False)]
ModelOption = Annotated[str | None, typer.Option(
    help="Whose vectors to search when the corpus holds several models.", show_default=False)]
KOption = Annotated[int, typer.Option("-k", "--top-k", min=1, max=1000,
                                      help="How many chunks each search returns.")]


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[], None]]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task(what, total=total)
        yield lambda: progress.advance(task)


def _prepare(conn: psycopg.Connection[Any], set_path: Path, *, as_user: str | None,
             space: str | None, model: str | None) -> runner.Prepared:
    evalset = load_set(set_path)
    # The queries are embedded with the model of the space searched (issue 10).
    embedder = search_mod.choose_embedder(conn, space=space, requested=model,
                                          configured=search_mod.configured_model())
    with err_console.status(f"Embedding {len(evalset.queries)} queries with "
                            f"{embedder.name}..."):
        return runner.prepare(conn, evalset, embedder, as_user=as_user, space=space)


@app.command("run")
def run_command(
    set_path: SetArgument,
    space: SpaceOption = None,
    hybrid: Annotated[bool, typer.Option("--hybrid", help="hybrid_search instead of "
                                         "match_documents.")] = False,
    full_text_weight: Annotated[float | None, typer.Option(
        min=0.0, help="hybrid_search's full_text_weight (default: the function's).",
        show_default=False)] = None,
    semantic_weight: Annotated[float | None, typer.Option(
        min=0.0, help="hybrid_search's semantic_weight (default: the function's).",
        show_default=False)] = None,
    rrf_k: Annotated[int | None, typer.Option(
        min=1, help="hybrid_search's rrf_k (default: the function's).",
        show_default=False)] = None,
    k: KOption = 10,
    as_user: AsOption = None,
    model: ModelOption = None,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Search every query of the set as the user, score what comes back, store the run.

    Prints recall@1/5/k, MRR@k, nDCG@k, hit rate and p50/p95 latency; queries
    whose relevant documents the user cannot read are listed, not scored.
    """
    given = [full_text_weight, semantic_weight, rrf_k]
    if any(v is not None for v in given) and not hybrid:
        raise ConfigError("--full-text-weight, --semantic-weight and --rrf-k apply to "
                          "hybrid search: add --hybrid")
    with connect(resolve_db_url(db_url)) as conn:
        weights = None
        if any(v is not None for v in given):
            # unnamed parts are the space's defaults (stored, else 1, 1, 50), as
            # hybrid_search fills them; the run records all three
            base = defaults_mod.get_defaults(conn, space).weights
            conn.commit()
            weights = HybridWeights(
                full_text_weight=base.full_text_weight if full_text_weight is None
                else full_text_weight,
                semantic_weight=base.semantic_weight if semantic_weight is None
                else semantic_weight,
                rrf_k=base.rrf_k if rrf_k is None else rrf_k)
        setting = runner.Setting(hybrid=hybrid, weights=weights, k=k)
        prepared = _prepare(conn, set_path, as_user=as_user, space=space, model=model)
        with _progress(len(prepared.queries), f"{setting.mode} search") as advance:
            result = runner.run(conn, prepared, setting, progress=advance)
        run_id = runner.store(conn, result)
    if json_out:
        print_json(_result_json(result, run_id))
        return
    _print_result(result, run_id)


@app.command("tune")
def tune_command(
    set_path: SetArgument,
    space: SpaceOption = None,
    k: KOption = 10,
    as_user: AsOption = None,
    model: ModelOption = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Draw nDCG@k against the weight ratio per rrf_k to this PNG "
        "(needs matplotlib: the `eval` extra).", show_default=False)] = None,
    apply: Annotated[bool, typer.Option(
        "--apply", help="Store the recommendation as the space's hybrid_search default "
        "(prints old -> new; without it, tuning changes nothing).")] = False,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Search hybrid_search's full_text_weight x semantic_weight x rrf_k (a grid, then
    around its best) and recommend the best by nDCG@k, with its margin over the defaults."""
    applied = None
    with connect(resolve_db_url(db_url)) as conn:
        prepared = _prepare(conn, set_path, as_user=as_user, space=space, model=model)
        total = tuning.runs_needed() * len(prepared.queries)
        with _progress(total, "tuning hybrid weights") as advance:
            result = tuning.tune(conn, prepared, k=k, progress=advance)
        conn.commit()
        if apply:
            digest = prepared.evalset.digest[:8]
            applied = defaults_mod.set_defaults(
                conn, result.best.weights, space=prepared.space,
                source=f"suparag eval tune {prepared.evalset.name} (sha256 {digest}, "
                       f"{result.metric} {result.best.result.metric(result.metric):.4f})")
    if plot is not None:
        tuning.plot(result, str(plot))
    if json_out:
        print_json({**_tuning_json(result, plot),
                    "applied": None if applied is None else _change_json(*applied)})
        return
    _print_tuning(result, plot)
    if applied is not None:
        _print_change(*applied)


defaults_app = typer.Typer(help="hybrid_search's stored default weights, per embedding space "
                           "(used when a caller passes none).")
app.add_typer(defaults_app, name="defaults")


@defaults_app.command("show")
def defaults_show(space: SpaceOption = None, db_url: DbUrlOption = None,
                  json_out: JsonOption = False) -> None:
    """The weights hybrid_search uses in the space when a caller passes none."""
    with connect(resolve_db_url(db_url)) as conn:
        found = defaults_mod.get_defaults(conn, space)
    if json_out:
        print_json(found.as_json())
        return
    by = f", set by {escape(found.source or '-')} at {found.updated_at:%Y-%m-%d %H:%M}" \
        if found.stored and found.updated_at else ""
    console.print(f"{escape(found.space)}: {found.text()}{by}", highlight=False)


@defaults_app.command("set")
def defaults_set(
    full_text_weight: Annotated[float, typer.Option(min=0.0, help="full_text_weight.",
                                                    show_default=False)],
    semantic_weight: Annotated[float, typer.Option(min=0.0, help="semantic_weight.",
                                                   show_default=False)],
    rrf_k: Annotated[int, typer.Option(min=1, help="rrf_k.", show_default=False)],
    space: SpaceOption = None,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Store hybrid_search's default weights for the space (prints old -> new)."""
    weights = HybridWeights(full_text_weight=full_text_weight,
                            semantic_weight=semantic_weight, rrf_k=rrf_k)
    with connect(resolve_db_url(db_url)) as conn:
        change = defaults_mod.set_defaults(conn, weights, space=space)
    if json_out:
        print_json(_change_json(*change))
        return
    _print_change(*change)


@defaults_app.command("reset")
def defaults_reset(space: SpaceOption = None, db_url: DbUrlOption = None,
                   json_out: JsonOption = False) -> None:
    """Forget the space's stored weights: hybrid_search goes back to 1, 1, 50."""
    with connect(resolve_db_url(db_url)) as conn:
        change = defaults_mod.reset_defaults(conn, space)
    if json_out:
        print_json(_change_json(*change))
        return
    _print_change(*change)


def _change_json(old: defaults_mod.Defaults, new: defaults_mod.Defaults) -> dict[str, Any]:
    return {"space": new.space, "old": old.as_json(), "new": new.as_json()}


def _print_change(old: defaults_mod.Defaults, new: defaults_mod.Defaults) -> None:
    console.print(f"hybrid_search defaults in {escape(new.space)}: {old.text()} -> "
                  f"{new.text()}", highlight=False)


@app.command("history")
def history_command(
    limit: Annotated[int, typer.Option(min=1, help="How many runs, newest first.")] = 50,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """List stored evaluation runs: set, space, mode, weights, k, metrics, when."""
    with connect(resolve_db_url(db_url)) as conn:
        rows = runner.history(conn, limit=limit)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("No evaluation runs yet: `suparag eval run SET.jsonl`.")
        return
    table = Table(title="Evaluation runs")
    for column in ("id", "when", "set", "space", "model", "mode", "weights", "k", "scored",
                   "recall@k", "nDCG@k", "p95 ms"):
        table.add_column(column)
    for row in rows:
        m, k = row["metrics"], row["k"]
        table.add_row(
            str(row["id"]), f"{row['created_at']:%Y-%m-%d %H:%M}",
            f"{escape(row['set_name'])} {row['set_digest'][:8]}", escape(row["space"] or "-"),
            escape(row["embedding_model"]), row["mode"], _weights_text(row), str(k),
            f"{row['scored']}/{row['queries']}", _num(m.get(f"recall@{k}")),
            _num(m.get(f"ndcg@{k}")), _num(m.get("latency_p95_ms"), 1))
    console.print(table)


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _weights_text(row: dict[str, Any]) -> str:
    if row["mode"] != "hybrid":
        return "-"
    if row["full_text_weight"] is None:
        return "defaults"
    return f"ft={row['full_text_weight']:g} sem={row['semantic_weight']:g} k={row['rrf_k']}"


def _result_json(result: runner.RunResult, run_id: int) -> dict[str, Any]:
    w = result.setting.weights
    return {
        "run_id": run_id, "set": result.evalset.name, "set_digest": result.evalset.digest,
        "space": result.space, "model": result.model, "mode": result.setting.mode,
        "weights": None if w is None else {"full_text_weight": w.full_text_weight,
                                           "semantic_weight": w.semantic_weight,
                                           "rrf_k": w.rrf_k},
        "k": result.setting.k, "as": result.as_user, "metrics": result.metrics,
        "queries": [{"line": o.line, "query": o.query, "kind": o.kind, "status": o.status,
                     "scores": o.scores, "latency_ms": o.latency_ms,
                     "unreadable": list(o.unreadable), "unknown": list(o.unknown)}
                    for o in result.outcomes],
    }


def _print_result(result: runner.RunResult, run_id: int) -> None:
    m, k = result.metrics, result.setting.k
    names = [n for n in m if "@" in n]
    title = (f"{result.setting.mode} search, {escape(result.evalset.name)}, "
             f"{escape(result.model)}, as {escape(result.as_user or 'anonymous')}")
    table = Table(title=title)
    table.add_column("queries")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")

    def add(label: str, row: dict[str, Any]) -> None:
        table.add_row(label, *(_num(row.get(n)) for n in names),
                      _num(row.get("latency_p50_ms"), 1), _num(row.get("latency_p95_ms"), 1))

    add(f"all ({m['scored']})", m)
    for kind, row in m.get("by_kind", {}).items():
        add(f"{escape(kind)} ({row['scored']})", row)
    console.print(table)
    skipped = [o for o in result.outcomes if o.status != "scored" or o.unreadable or o.unknown]
    for o in skipped:
        parts = []
        if o.unreadable:
            parts.append(f"cannot read {', '.join(o.unreadable)}")
        if o.unknown:
            parts.append(f"no document named {', '.join(o.unknown)}")
        verdict = "not scored" if o.status != "scored" else "scored on the rest"
        console.print(f"line {o.line} ({verdict}): {escape('; '.join(parts))}",
                      highlight=False)
    console.print(f"Stored as run {run_id} (`suparag eval history`). k={k}.", highlight=False)


def _tuning_json(result: tuning.Tuning, plot: Path | None) -> dict[str, Any]:
    def point(p: tuning.Point) -> dict[str, Any]:
        return {"ratio": p.ratio, "full_text_weight": p.weights.full_text_weight,
                "semantic_weight": p.weights.semantic_weight, "rrf_k": p.rrf_k,
                "metrics": {n: v for n, v in p.result.metrics.items() if n != "by_kind"}}

    return {"metric": result.metric, "default": result.default.metrics,
            "best": point(result.best), "margin": result.margin,
            "points": [point(p) for p in result.points],
            "plot": None if plot is None else str(plot)}


def _print_tuning(result: tuning.Tuning, plot: Path | None) -> None:
    k = result.k
    table = Table(title=f"hybrid_search weights on {escape(result.default.evalset.name)}")
    for column in ("ft/sem", "full_text", "semantic", "rrf_k", f"recall@{k}", result.metric):
        table.add_column(column, justify="right")
    for p in sorted(result.points, key=lambda p: (p.rrf_k, p.ratio)):
        mark = " *" if p is result.best else ""
        table.add_row(f"{p.ratio:g}", f"{p.weights.full_text_weight:g}",
                      f"{p.weights.semantic_weight:g}", str(p.rrf_k),
                      _num(p.result.metrics.get(f"recall@{k}")),
                      _num(p.result.metrics.get(result.metric)) + mark)
    console.print(table)
    w = result.best.weights
    console.print(
        f"Recommended: full_text_weight={w.full_text_weight:g} semantic_weight="
        f"{w.semantic_weight:g} rrf_k={w.rrf_k}: {result.metric} "
        f"{result.best.result.metric(result.metric):.4f}, {result.margin:+.4f} over "
        f"hybrid_search's defaults ({result.default.metric(result.metric):.4f}).",
        highlight=False)
    if plot is not None:
        console.print(f"Plot: {plot}", highlight=False)
