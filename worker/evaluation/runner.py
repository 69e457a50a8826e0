"""Run an evaluation set as a user, through the same search a client calls, and keep the run.

`prepare` reads everything a run needs once: the users, the documents each
line names (by source or id), which of them each evaluating user may read
(under RLS, as that user), and the query vectors. `run` then calls
`worker.search.retrieve` per query, which is `match_documents` /
`hybrid_search` inside `as_request`, exactly as PostgREST would run them for
that user's JWT, and scores the distinct documents of the top-k chunks.

A query is scored only against relevant documents its user can read: those
the user cannot read are listed, and a query left with none is reported as
`unreadable`, not counted as a miss (a miss would blame retrieval for a
sharing rule). Names that match no document at all are listed as `unknown`
(usually a set built for another corpus, or a corpus not yet ingested).

Latency is the retrieve call per query (the database's work as a client sees
it), not the query's embedding, which is done for the whole set at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from worker import search
from worker.db import as_request
from worker.errors import ConfigError
from worker.evaluation import metrics
from worker.evaluation.sets import EvalSet
from worker.models.base import Embedder
from worker.search import HybridWeights
from worker.spaces import get_space
from worker.users import find_user

Claims = Mapping[str, Any] | None


@dataclass(frozen=True)
class Setting:
    """How to search: semantic or hybrid (with hybrid_search's weights, None = its defaults)."""

    hybrid: bool = False
    weights: HybridWeights | None = None
    k: int = 10

    def __post_init__(self) -> None:
        if self.weights is not None and not self.hybrid:
            raise ConfigError("fusion weights apply to hybrid search only: add --hybrid")
        if self.k < 1:
            raise ConfigError("k must be at least 1")

    @property
    def mode(self) -> str:
        return "hybrid" if self.hybrid else "semantic"


@dataclass(frozen=True)
class PreparedQuery:
    line: int
    query: str
    kind: str | None
    as_user: str | None
    claims: Claims
    vector: Sequence[float]
    grades: dict[str, int]  # readable relevant document id -> grade
    unreadable: tuple[str, ...]  # refs of relevant documents the user cannot read
    unknown: tuple[str, ...]  # refs that name no document

    @property
    def status(self) -> str:
        if self.grades:
            return "scored"
        return "unreadable" if self.unreadable else "unknown"


@dataclass(frozen=True)
class Prepared:
    evalset: EvalSet
    model: str
    space: str | None
    as_user: str | None
    queries: tuple[PreparedQuery, ...]


@dataclass(frozen=True)
class QueryOutcome:
    line: int
    query: str
    kind: str | None
    status: str
    scores: dict[str, float | None]
    latency_ms: float | None
    unreadable: tuple[str, ...]
    unknown: tuple[str, ...]
    ranking: tuple[str, ...]  # document ids, best first


@dataclass
class RunResult:
    evalset: EvalSet
    model: str
    space: str | None
    as_user: str | None
    setting: Setting
    outcomes: list[QueryOutcome]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def scored(self) -> int:
        return sum(1 for o in self.outcomes if o.status == "scored")

    def metric(self, name: str) -> float:
        value = self.metrics.get(name)
        return float(value) if isinstance(value, int | float) else 0.0


def prepare(conn: psycopg.Connection[Any], evalset: EvalSet, embedder: Embedder, *,
            as_user: str | None = None, space: str | None = None) -> Prepared:
    """Resolve users and relevant documents, check what each user may read, embed the queries.

    The space is resolved to its name (None: the active space's), so a stored run says
    which space it measured and `suparag spaces activate` can compare spaces."""
    users: dict[str | None, Claims] = {None: None}
    with conn.transaction():
        space = get_space(conn, space).name
        for who in {as_user, *(q.as_user for q in evalset.queries)} - {None}:
            assert who is not None
            users[who] = find_user(conn, who).claims()
        refs = sorted({r.ref for q in evalset.queries for r in q.relevant})
        # Names are resolved as the operator: whether a document exists is not the
        # question; whether the evaluating user may read it is asked below, as them.
        named: dict[str, set[str]] = {}
        for row in conn.execute(
            "select id::text as id, source from public.documents"
            " where source = any(%(refs)s) or id::text = any(%(refs)s)", {"refs": refs},
        ):
            for ref in (row["id"], row["source"]):
                if ref in refs:
                    named.setdefault(ref, set()).add(row["id"])
    readable: dict[str | None, set[str]] = {}
    for who in {q.as_user or as_user for q in evalset.queries}:
        ids = sorted({i for q in evalset.queries if (q.as_user or as_user) == who
                      for r in q.relevant for i in named.get(r.ref, ())})
        with as_request(conn, users[who]):
            readable[who] = {row["id"] for row in conn.execute(
                "select id::text as id from public.documents where id = any(%s::uuid[])",
                (ids,))}
    vectors = embedder.embed([q.query for q in evalset.queries])
    prepared = []
    for q, vector in zip(evalset.queries, vectors, strict=True):
        who = q.as_user or as_user
        grades: dict[str, int] = {}
        unreadable, unknown = [], []
        for r in q.relevant:
            matches = named.get(r.ref)
            if not matches:
                unknown.append(r.ref)
                continue
            visible = matches & readable[who]
            if not visible:
                unreadable.append(r.ref)
            for doc in visible:
                grades[doc] = max(grades.get(doc, 0), r.grade)
        prepared.append(PreparedQuery(
            line=q.line, query=q.query, kind=q.kind, as_user=who, claims=users[who],
            vector=vector, grades=grades, unreadable=tuple(unreadable), unknown=tuple(unknown)))
    return Prepared(evalset=evalset, model=embedder.name, space=space, as_user=as_user,
                    queries=tuple(prepared))


def run(conn: psycopg.Connection[Any], prepared: Prepared, setting: Setting, *,
        progress: Callable[[], None] | None = None) -> RunResult:
    """Search every scorable query as its user and score the documents returned."""
    outcomes: list[QueryOutcome] = []
    for q in prepared.queries:
        if q.status != "scored":
            outcomes.append(QueryOutcome(
                line=q.line, query=q.query, kind=q.kind, status=q.status, scores={},
                latency_ms=None, unreadable=q.unreadable, unknown=q.unknown, ranking=()))
        else:
            started = time.perf_counter()
            rows = search.retrieve(
                conn, q.vector, claims=q.claims, model=prepared.model, k=setting.k,
                hybrid_text=q.query if setting.hybrid else None, weights=setting.weights,
                space=prepared.space)
            latency = (time.perf_counter() - started) * 1000
            ranking = metrics.documents_of((str(r["document_id"]), float(r["score"]))
                                           for r in rows)
            outcomes.append(QueryOutcome(
                line=q.line, query=q.query, kind=q.kind, status="scored",
                scores=metrics.score_query(ranking, q.grades, setting.k), latency_ms=latency,
                unreadable=q.unreadable, unknown=q.unknown,
                ranking=tuple(key for key, _ in ranking)))
        if progress is not None:
            progress()
    result = RunResult(evalset=prepared.evalset, model=prepared.model, space=prepared.space,
                       as_user=prepared.as_user, setting=setting, outcomes=outcomes)
    result.metrics = summarize(outcomes)
    return result


def summarize(outcomes: Sequence[QueryOutcome]) -> dict[str, Any]:
    """Mean of each metric over the scored queries, latency percentiles, counts by status,
    and the same means per kind (`by_kind`) when the set labels its queries."""
    summary = _means(outcomes)
    summary["status"] = {s: sum(1 for o in outcomes if o.status == s)
                         for s in ("scored", "unreadable", "unknown")}
    kinds = sorted({o.kind for o in outcomes if o.kind is not None})
    if kinds:
        summary["by_kind"] = {kind: _means([o for o in outcomes if o.kind == kind])
                              for kind in kinds}
    return summary


def _means(outcomes: Sequence[QueryOutcome]) -> dict[str, Any]:
    scored = [o for o in outcomes if o.status == "scored"]
    names = list(dict.fromkeys(name for o in scored for name in o.scores))
    summary: dict[str, Any] = {name: metrics.mean(o.scores.get(name) for o in scored)
                               for name in names}
    latencies = [o.latency_ms for o in scored if o.latency_ms is not None]
    summary["latency_p50_ms"] = metrics.percentile(latencies, 0.50)
    summary["latency_p95_ms"] = metrics.percentile(latencies, 0.95)
    summary["scored"] = len(scored)
    return summary


def store(conn: psycopg.Connection[Any], result: RunResult) -> int:
    """Keep the run in suparag_private.eval_runs (on the operator's connection); its id."""
    weights = result.setting.weights
    with conn.transaction():
        row = conn.execute(
            "insert into suparag_private.eval_runs (set_name, set_digest, space,"
            " embedding_model, mode, full_text_weight, semantic_weight, rrf_k, k, as_user,"
            " queries, scored, metrics) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s) returning id",
            (result.evalset.name, result.evalset.digest, result.space, result.model,
             result.setting.mode, weights.full_text_weight if weights else None,
             weights.semantic_weight if weights else None, weights.rrf_k if weights else None,
             result.setting.k, result.as_user, len(result.outcomes), result.scored,
             Jsonb(result.metrics)),
        ).fetchone()
    assert row is not None
    return int(row["id"])


def history(conn: psycopg.Connection[Any], *, limit: int = 50) -> list[dict[str, Any]]:
    """The latest stored runs, newest first."""
    with conn.transaction():
        return conn.execute(
            "select id, created_at, set_name, set_digest, space, embedding_model, mode,"
            " full_text_weight, semantic_weight, rrf_k, k, as_user, queries, scored, metrics"
            " from suparag_private.eval_runs order by created_at desc, id desc limit %s",
            (limit,),
        ).fetchall()
