"""The embedding worker: claim jobs, chunk, embed, write back, or fail with backoff.

The queue (suparag_private.embedding_jobs) is the truth; wake-ups only make a
worker look sooner. A batch's documents are written back up to WRITE_GROUP to a
transaction that locks their rows, checks each still has the version that was
embedded, replaces their chunks and marks them ready. A newer version means
that document's result is dropped and the newer job, already queued, wins. If
the group's transaction fails, each of its documents is written alone, so one
document's failure never fails another.

A batch goes through three stages, `prepare` (claim, read, chunk), `embed`
(the model) and `finish` (write back); `drain` overlaps them
(worker/jobs/pipeline.py) and sizes batches and model calls by tokens
(worker/jobs/batching.py), so the model is never idle (issue 16).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pgvector import Vector

from worker.db import to_vector
from worker.errors import ConfigError, EmbeddingJobError, EmbeddingServiceUnavailable
from worker.jobs.batching import (
    DEFAULT_CLAIM_BUDGETS,
    DEFAULT_CLAIM_DOCUMENTS,
    DEFAULT_TOKEN_BUDGET,
    DocumentEstimate,
    model_calls,
)
from worker.jobs.chunking import Chunk, chunk_document
from worker.jobs.pipeline import Pipeline
from worker.jobs.queue import EMBEDDINGS, Counts, QueueWorker, WorkerConfig
from worker.jobs.spaces import Fill, SpaceFiller, SpaceVectors
from worker.models.base import OPENAI_PREFIX, Embedder
from worker.models.lanes import Lanes, split_across_cores
from worker.spaces import Space

log = logging.getLogger("suparag.embedding")

#: The width of document_chunks.embedding.
COLUMN_DIMENSIONS = 384

#: A document's chunk; executemany sends a document's rows in one pipeline. Not
#: COPY: PostgreSQL refuses COPY FROM under RLS, which applies to the
#: suparag_worker role (issue 17). Measured against COPY and one INSERT of
#: unnest()ed arrays, 10 chunks of 384 dimensions: 6.6 ms, 11.0 and 13.3 (medians).
_INSERT_CHUNK = (
    "insert into public.document_chunks (document_id, chunk_index, content, embedding,"
    " embedding_model, content_hash, page) values (%s, %s, %s, %s, %s, %s, %s)"
)


#: Token budgets of bulk documents a drain's first claim takes (Pipeline: the model
#: waits for it). Four model calls: enough to keep the model busy while the next, full
#: claim is read and chunked (measured on `bench worker`'s 300 documents: a claim of 32
#: budgets took 0.1-0.2 s on the database thread; four calls of 1,024 tokens in two
#: lanes take about 0.4 s).
OPENING_BUDGETS = 4


#: Documents written back in one transaction. One transaction per document cost about
#: eight statements and a commit each; a group shares them. Bounded, because the
#: group's documents stay locked (an edit of one waits) until its commit.
WRITE_GROUP = 32


@dataclass
class BatchResult(Counts):
    """What one batch did."""

    embedded: int = 0
    superseded: int = 0
    failed: int = 0
    retrying: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    backfilled: int = 0  # vectors written into a space being filled (issue 10)

    @property
    def claimed(self) -> int:
        # A backfill step counts as work, so the loop keeps going until it is done.
        return self.embedded + self.superseded + self.failed + self.retrying + self.backfilled


@dataclass
class _Plan:
    """One claimed document, chunked: which vectors it can keep and which it needs."""

    job: dict[str, Any]
    chunks: list[Chunk]
    hashes: list[str]
    reusable: dict[str, Vector]  # content_hash -> stored vector
    vectors: dict[str, list[float]] = field(default_factory=dict)  # embed_text -> new vector
    space_vectors: SpaceVectors = field(default_factory=dict)  # the table spaces' (issue 10)
    column: bool = True  # the column space is live (not dropped): it needs vectors

    def missing_texts(self) -> list[str]:
        """The texts the worker's own model embeds (for the column space)."""
        if not self.column:
            return []
        return [c.embed_text for c, h in zip(self.chunks, self.hashes, strict=True)
                if h not in self.reusable]

    def vector(self, chunk: Chunk, digest: str) -> Vector | None:
        if not self.column:
            return None
        if digest in self.reusable:
            return self.reusable[digest]
        return to_vector(self.vectors[chunk.embed_text])


@dataclass
class _Batch:
    """One claimed batch on its way through the stages."""

    jobs: list[dict[str, Any]]
    ready: list[_Plan]  # to embed
    early: BatchResult  # superseded or failed before the model saw them
    spaces: list[Space]  # the table spaces, read when the batch was claimed
    bulk: bool = False  # holds bulk jobs, so an interactive one may be waiting behind it
    fill: Fill | None = None  # a space's backfill instead of jobs (issue 10)
    column: bool = True  # the column space is live; once dropped, table spaces only


Outcomes = list[tuple[_Plan, Exception | None]]


class EmbeddingWorker(QueueWorker[BatchResult]):
    """Drains the embedding queue of one database.

    config.batch_size caps the documents one claim takes; how many it takes
    is chosen so that a batch holds about claim_budgets x token_budget tokens
    of new chunks, and each model call holds at most token_budget padded
    tokens. Interactive jobs that fall due meanwhile are claimed about one
    budget at a time between the batch's model calls (worker/jobs/pipeline.py).
    """

    queue = EMBEDDINGS

    def __init__(self, db_url: str, embedder: Embedder, *,
                 config: WorkerConfig | None = None,
                 token_budget: int = DEFAULT_TOKEN_BUDGET,
                 claim_budgets: int = DEFAULT_CLAIM_BUDGETS,
                 lanes: int | None = None, pin_lanes: bool = True) -> None:
        super().__init__(db_url, BatchResult,
                         config=config or WorkerConfig(batch_size=DEFAULT_CLAIM_DOCUMENTS))
        if token_budget < 1:
            raise ConfigError(f"token budget {token_budget}: give at least 1 token per call")
        if claim_budgets < 1:
            raise ConfigError(f"claim budgets {claim_budgets}: a claim takes at least 1 budget")
        if lanes is not None and lanes < 1:
            raise ConfigError(f"model lanes {lanes}: give at least 1 (calls at once)")
        self.embedder = embedder
        # Model calls at once (worker/models/lanes.py); None: one per core for a local model
        # on the CPU, decided (and torch switched to a thread per call) at the first call.
        self._lanes_wanted = lanes
        self._pin_lanes = pin_lanes
        self._lanes: Lanes | None = None
        self.spaces = SpaceFiller()
        self.token_budget = token_budget
        self.claim_budgets = claim_budgets
        self.estimate = DocumentEstimate(budget=token_budget * claim_budgets,
                                         cap=self.config.batch_size)
        # job id -> job, of the batches in flight (both database threads: under the lock)
        self._in_flight: dict[int, dict[str, Any]] = {}
        self._in_flight_lock = threading.Lock()
        self._tokens = 0  # tokens given to the model since the embed stage began

    def load(self) -> None:
        """Load the model; a local one that makes vectors of another width than the column
        stops the worker here, before it claims a job (a server's width would cost a
        request to learn: the first batch checks it)."""
        self.embedder.load()
        if not self.embedder.name.startswith(OPENAI_PREFIX):
            width = self.embedder.dimensions
            if width != COLUMN_DIMENSIONS:
                raise ConfigError(self._width_error(width))

    def _width_error(self, width: int) -> str:
        return (f"model {self.embedder.name} makes {width}-dimensional vectors; "
                f"document_chunks.embedding holds {COLUMN_DIMENSIONS}. Configure a model that "
                f"makes {COLUMN_DIMENSIONS} (all-MiniLM-L6-v2, gte-small, or text-embedding-3-* "
                f"asked for {COLUMN_DIMENSIONS}), or add this one as a space of its own "
                "(`suparag spaces add MODEL`, docs/spaces.md)")

    @property
    def lanes(self) -> Lanes:
        """The model's lanes: how its calls run side by side (worker/models/lanes.py)."""
        if self._lanes is None:
            wanted = self._lanes_wanted
            self._lanes = Lanes(self.embedder, wanted if wanted is not None
                                else split_across_cores(self.embedder), pin=self._pin_lanes)
        return self._lanes

    def close(self) -> None:
        if self._lanes is not None:
            self._lanes.close()
            self._lanes = None
        super().close()

    @property
    def model(self) -> str:
        return self.embedder.name

    def describe(self, batch: BatchResult) -> str:
        return (f"batch: {batch.embedded} embedded, {batch.superseded} superseded, "
                f"{batch.retrying} retrying, {batch.failed} failed "
                f"({batch.chunks_embedded} chunks embedded, {batch.chunks_reused} reused)")

    # -- one batch ------------------------------------------------------------------------

    def run_batch(self) -> BatchResult:
        """One batch through every stage, in turn; zero claimed means idle.

        The chunks of every claimed document go to the model together (in
        calls of token_budget), so a batch of small documents costs one model
        call, not one per document. Each document's write-back succeeds or fails on its
        own (finish).
        """
        self.spaces.rest()
        batch = self.prepare()
        if batch is None:
            return BatchResult()
        return self.finish(batch, self.embed(batch))

    def drain(self, *, on_batch: Callable[[BatchResult], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> BatchResult:
        """Batches until nothing is due, the database side overlapping the model.

        The pipeline claims batch N+1 before batch N is written back, so a job that
        batch N scheduled for a retry (due at once with no backoff) can be missed by
        that claim: the pipeline runs again until a pass claims nothing."""
        pipeline = Pipeline(self, tally=BatchResult, lease_seconds=self.config.lease_seconds,
                            hints=self.hints)
        self.spaces.rest()
        total = BatchResult()
        while True:
            result = pipeline.drain(on_batch=on_batch, should_stop=should_stop)
            total.add(result)
            if result.claimed == 0 or (should_stop is not None and should_stop()):
                return total

    # -- the stages (worker/jobs/pipeline.py says which thread runs which) ------------------

    def prepare(self, opening: bool = False) -> _Batch | None:
        """Claim the next batch, read and chunk its documents; None when nothing is due.

        When interactive jobs are due the batch is those alone (about one budget): filled
        up with bulk jobs, an edit would wait for a whole claim of bulk calls. When no job
        is due, a fill of a space that lacks vectors (issue 10), which the stages treat as
        a bulk batch. opening (a drain's first batch, which the model waits for): bulk
        jobs are claimed OPENING_BUDGETS budgets' worth, not claim_budgets."""
        budgets = min(OPENING_BUDGETS, self.claim_budgets) if opening else self.claim_budgets
        return (self.prepare_urgent()
                or self._prepare(self.estimate.documents(budgets * self.token_budget))
                or self._prepare_fill())

    def _prepare_fill(self) -> _Batch | None:
        fill = self.spaces.claim(self.conn, self._chunk)
        if fill is None:
            return None
        return _Batch(jobs=[], ready=[], early=BatchResult(), spaces=[], bulk=True, fill=fill)

    def urgent(self, batch: _Batch) -> bool:
        """Whether batch holds interactive jobs only (see Pipeline: it may go first)."""
        return not batch.bulk

    def prepare_urgent(self) -> _Batch | None:
        """Claim the interactive jobs due, if any; else None.

        A few (about one budget of them) are claimed alone, so they are embedded at once.
        More than that is a backlog of them, claimed as bulk work is, several budgets sorted
        together: a script that inserts documents one statement at a time makes every one
        an interactive job, and claims of one budget pad each model call more (each call's
        texts are sorted among fewer) for no edit's benefit, the backlog being first in
        line anyway."""
        one = self.estimate.documents(self.token_budget)
        with self.conn.transaction():
            row = self.conn.execute(
                "select count(*) as n from (select 1 from suparag_private.embedding_jobs"
                " where priority = 0 and status = 'queued' and run_after <= now()"
                " and (leased_until is null or leased_until < now()) limit %s) due",
                (one + 1,)).fetchone()
        due = int(row["n"]) if row else 0
        if not due:
            return None
        # The claim takes interactive jobs first, so it takes these (or ones as urgent).
        return self._prepare(due if due <= one else max(one, self.estimate.documents()))

    def _prepare(self, documents: int) -> _Batch | None:
        conn = self.conn
        started = time.perf_counter()
        with conn.transaction():
            jobs = conn.execute(
                "select * from suparag_private.claim_embedding_jobs(%s, %s, %s)",
                (self.config.worker_id, documents, self.config.lease_seconds),
            ).fetchall()
        self.last_claim_seconds = time.perf_counter() - started
        if not jobs:
            return None
        with self._in_flight_lock:
            self._in_flight.update((job["job_id"], job) for job in jobs)
        with conn.transaction():
            row = conn.execute(
                "select exists (select 1 from suparag_private.embedding_jobs"
                " where id = any(%s) and priority > 0) as bulk",
                ([job["job_id"] for job in jobs],)).fetchone()
            column = self.spaces.column_live(conn)
            spaces = self.spaces.table_spaces(conn)
        batch = _Batch(jobs=jobs, ready=[], early=BatchResult(), spaces=spaces,
                       bulk=bool(row and row["bulk"]), column=column)
        try:
            plans = self._plan(jobs, column=column)
        except Exception as exc:
            for job in jobs:
                batch.early.add(self._settle(job, self._fail(job, exc)))
            return batch
        for job in jobs:
            plan = plans.get(job["job_id"])
            if plan is None:
                batch.early.add(self._settle(job, self._superseded(job)))
            elif isinstance(plan, Exception):
                batch.early.add(self._settle(job, self._fail(job, plan)))
            else:
                batch.ready.append(plan)
        return batch

    def embed(self, batch: _Batch, between: Callable[[], None] | None = None) -> Outcomes:
        """The model's part: every plan's missing chunks, in every space (no database).

        between runs before each model call of the column space, if the
        batch holds bulk jobs (the pipeline takes interactive work there; behind a batch
        of interactive jobs, a newer one waits its turn)."""
        between = between if batch.bulk else None
        if batch.fill is not None:
            self.spaces.embed_fill(batch.fill, between=between, budget=self.token_budget)
            return []
        outer, self._tokens = self._tokens, 0  # between may embed another batch inside
        try:
            outcomes = self._embed_spaces(self._embed_plans(batch.ready, between), between,
                                          batch.spaces)
            if not batch.column:  # the worker's model embedded nothing: count the chunks
                self._tokens = sum(self.embedder.count_tokens(c.embed_text)
                                   for plan in batch.ready for c in plan.chunks)
            self.estimate.observe(len(batch.ready), self._tokens)
        finally:
            self._tokens = outer
        return outcomes

    def finish(self, batch: _Batch, outcomes: Outcomes) -> BatchResult:
        """Write the embedded documents back, WRITE_GROUP to a transaction, or record each
        failure."""
        self.spaces.record_failures(self.conn)
        if batch.fill is not None:
            return BatchResult(backfilled=self.spaces.write_fill(self.conn, batch.fill))
        result = batch.early
        embedded = []
        for plan, error in outcomes:
            if error is None:
                embedded.append(plan)
            else:
                result.add(self._settle(plan.job, self._fail(plan.job, error)))
        for start in range(0, len(embedded), WRITE_GROUP):
            result.add(self._write_group(embedded[start:start + WRITE_GROUP]))
        return result

    def release(self, batch: _Batch) -> BatchResult | None:
        """Give back a claimed batch the model has not started (the worker is stopping):
        its jobs lose our lease and the attempt the claim counted, so any worker takes them
        at once. What its claim already settled (superseded, failed) is its tally. A
        space's fill holds no lease: None, and it is embedded."""
        if batch.fill is not None:
            return None
        ids = [plan.job["job_id"] for plan in batch.ready]
        if ids:
            with self.conn.transaction():
                self.conn.execute(
                    "update suparag_private.embedding_jobs set leased_by = null,"
                    " leased_until = null, attempts = greatest(attempts - 1, 0),"
                    " updated_at = now() where id = any(%s) and leased_by = %s",
                    (ids, self.config.worker_id))
        for plan in batch.ready:
            self._settle(plan.job, BatchResult())
        return batch.early

    def _write_group(self, plans: list[_Plan]) -> BatchResult:
        """plans written back in one transaction; if it fails, each in its own, so one
        document's failure (a constraint, a trigger of the project's) stops no other."""
        try:
            done = self._write(plans)
        except Exception as exc:
            if len(plans) > 1:
                if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self.conn.rollback()
                result = BatchResult()
                for plan in plans:
                    result.add(self._write_group([plan]))
                return result
            done = self._fail(plans[0].job, exc)
        for plan in plans:
            self._settle(plan.job, BatchResult())
        return done

    def renew(self) -> None:
        """Extend the leases of the jobs in flight, so none expires while it waits."""
        with self._in_flight_lock:
            leased = list(self._in_flight)
        if not leased:
            return
        try:
            with self.conn.transaction():
                self.conn.execute(
                    "update suparag_private.embedding_jobs"
                    " set leased_until = now() + make_interval(secs => %s)"
                    " where id = any(%s) and leased_by = %s",
                    (self.config.lease_seconds, leased, self.config.worker_id))
        except Exception as exc:  # the next heartbeat tries again; the lease has margin
            log.warning("could not renew %d leases: %s", len(leased), exc)

    def _settle(self, job: dict[str, Any], result: BatchResult) -> BatchResult:
        with self._in_flight_lock:
            self._in_flight.pop(job["job_id"], None)
        return result

    def _plan(self, jobs: list[dict[str, Any]], *, column: bool = True
              ) -> dict[int, _Plan | Exception | None]:
        """Read the claimed documents and chunk them; None marks a superseded job.

        column: whether the column space is live (its unchanged vectors are reused)."""
        conn = self.conn
        model = self.embedder.name
        ids = [job["document_id"] for job in jobs]
        with conn.transaction():
            docs = {
                row["id"]: row for row in conn.execute(
                    "select id, title, content, content_version from public.documents"
                    " where id = any(%s)", (ids,))
            }
            reusable: dict[Any, dict[str, Vector]] = {}
            for row in conn.execute(
                "select document_id, content_hash, embedding"
                " from public.document_chunks"
                " where %s and document_id = any(%s) and embedding_model = %s"
                " and embedding is not null",
                (column, ids, model),
            ):
                reusable.setdefault(row["document_id"], {})[row["content_hash"]] = \
                    row["embedding"]
        plans: dict[int, _Plan | Exception | None] = {}
        for job in jobs:
            doc = docs.get(job["document_id"])
            if doc is None or doc["content_version"] != job["content_version"]:
                plans[job["job_id"]] = None
                continue
            try:
                chunks = self._chunk(doc["title"], doc["content"])
            except Exception as exc:
                plans[job["job_id"]] = exc
                continue
            plans[job["job_id"]] = _Plan(
                job=job, chunks=chunks, hashes=[c.content_hash(model) for c in chunks],
                reusable=reusable.get(job["document_id"], {}), column=column,
            )
        return plans

    def _embed_plans(self, plans: list[_Plan],
                     between: Callable[[], None] | None = None) -> Outcomes:
        """Embed every chunk the plans need in one model call (texts deduplicated).

        If that call fails, each document is embedded alone, so a poison
        document fails by itself and the others go through.
        """
        texts = list(dict.fromkeys(t for p in plans for t in p.missing_texts()))
        try:
            vectors = dict(zip(texts, self._embed(texts, between), strict=True))
        except Exception as exc:
            if len(plans) == 1 or isinstance(exc, ConfigError | EmbeddingServiceUnavailable):
                # Nothing document-specific to isolate: every document shares the failure.
                return [(plan, exc) for plan in plans]
            outcomes: Outcomes = []
            for plan in plans:
                outcomes.extend(self._embed_plans([plan], between))
            return outcomes
        for plan in plans:
            plan.vectors = {t: vectors[t] for t in plan.missing_texts()}
        return [(plan, None) for plan in plans]

    def _embed_spaces(self, outcomes: Outcomes, between: Callable[[], None] | None,
                      spaces: list[Space]) -> Outcomes:
        """The embedded plans' chunks in every table space too (worker/jobs/spaces.py);
        between before each model call, as in the column space."""
        embedded = [plan for plan, error in outcomes if error is None]
        if not embedded or not spaces:
            return outcomes
        vectors, failure = self.spaces.embed_in(
            spaces, [c.embed_text for plan in embedded for c in plan.chunks],
            between=between, budget=self.token_budget)
        if failure is not None and len(embedded) > 1 and not isinstance(
                failure, ConfigError | EmbeddingServiceUnavailable):
            # The active space's model failed on one of the documents, perhaps: each
            # alone, so a poison document fails by itself (as in the column space).
            failed = {id(plan): error for plan, error in outcomes if error is not None}
            alone: dict[int, Exception | None] = {}
            for plan in embedded:
                ((_, alone[id(plan)]),) = self._embed_spaces([(plan, None)], between, spaces)
            return [(plan, failed.get(id(plan)) or alone.get(id(plan)))
                    for plan, _ in outcomes]
        for plan in embedded:
            plan.space_vectors = vectors
        return [(plan, error or failure) for plan, error in outcomes]

    def _fail(self, job: dict[str, Any], exc: BaseException) -> BatchResult:
        """Record the failure: back off and retry, or `failed` at the cap."""
        message = str(exc) if isinstance(exc, EmbeddingJobError) else \
            f"{type(exc).__name__}: {exc}"
        status = self.record_failure(
            job, f"document {job['document_id']}", message,
            "select suparag_private.fail_embedding_job(%s, %s, %s, %s, %s) as outcome",
            (job["job_id"], job["content_version"], message, self.config.max_attempts,
             self.config.backoff(job["attempts"])),
        )
        return BatchResult(failed=int(status == "failed"),
                           retrying=int(status == "queued"),
                           superseded=int(status is None))

    def _write(self, plans: list[_Plan]) -> BatchResult:
        """Replace the documents' chunks and mark them ready, those still at the version
        embedded; one transaction. The others are dropped (superseded)."""
        conn, model = self.conn, self.embedder.name
        result = BatchResult()
        with conn.transaction():
            # In id order, so two write-backs never wait on each other's locks in a cycle.
            current = {row["id"]: row["content_version"] for row in conn.execute(
                "select id, content_version from public.documents where id = any(%s)"
                " order by id for update", ([plan.job["document_id"] for plan in plans],))}
            fresh = []
            for plan in plans:
                if current.get(plan.job["document_id"]) == plan.job["content_version"]:
                    fresh.append(plan)
                else:  # changed while we embedded: drop the result; the newer job stands
                    result.add(self._superseded(plan.job, in_transaction=True))
            if not fresh:
                return result
            # Held until commit: dropping the column space waits for this write-back,
            # and every write-back after the drop reads 'dropped' (migration 20261203000000).
            column = conn.execute(
                "select s.state <> 'dropped' as live, (select a.model"
                "  from suparag_private.embedding_spaces a where a.state = 'active') as active"
                " from suparag_private.embedding_spaces s where s.storage = 'column'"
                " for key share of s").fetchone()
            # The plans of one batch share their column state (read when it was claimed).
            live = fresh[0].column and bool(column and column["live"])
            if not live:  # the documents name the model of the space they are searched in
                model = column["active"] if column and column["active"] else model
            ids = [plan.job["document_id"] for plan in fresh]
            conn.execute("delete from public.document_chunks where document_id = any(%s)",
                         (ids,))
            with conn.cursor() as cur:
                cur.executemany(_INSERT_CHUNK, [
                    (plan.job["document_id"], chunk.index, chunk.content,
                     plan.vector(chunk, digest) if live else None,
                     model if live else None, digest, chunk.page)
                    for plan in fresh
                    for chunk, digest in zip(plan.chunks, plan.hashes, strict=True)])
            self.spaces.write(conn, [(plan.job["document_id"], plan.chunks, plan.space_vectors)
                                     for plan in fresh])
            conn.execute(
                "update public.documents set embedding_status = 'ready', embedding_model = %s,"
                " embedded_at = now(), embedding_error = null where id = any(%s)",
                (model, ids))
            conn.execute(
                "delete from suparag_private.embedding_jobs j"
                " using unnest(%s::bigint[], %s::bigint[]) as w(id, content_version)"
                " where j.id = w.id and j.content_version = w.content_version",
                ([plan.job["job_id"] for plan in fresh],
                 [plan.job["content_version"] for plan in fresh]))
        for plan in fresh:
            embedded = len(plan.missing_texts()) if plan.column else len(plan.chunks)
            result.add(BatchResult(embedded=1, chunks_embedded=embedded,
                                   chunks_reused=len(plan.chunks) - embedded))
        return result

    def _superseded(self, job: dict[str, Any], *, in_transaction: bool = False) -> BatchResult:
        """Release the lease so the job's newer version is picked up at once."""
        sql = ("update suparag_private.embedding_jobs set leased_by = null, leased_until = null"
               " where id = %s and leased_by = %s")
        if in_transaction:
            self.conn.execute(sql, (job["job_id"], self.config.worker_id))
        else:
            with self.conn.transaction():
                self.conn.execute(sql, (job["job_id"], self.config.worker_id))
        return BatchResult(superseded=1)

    def _count(self, text: str) -> int:
        tokens = self.embedder.count_tokens(text)
        self._tokens += tokens
        return tokens

    def _chunk(self, title: str, content: str) -> list[Chunk]:
        # (PostgreSQL text cannot hold NUL bytes, so none reach this point.)
        return chunk_document(
            title, content,
            max_tokens=self.embedder.max_tokens,
            count_tokens=self.embedder.count_tokens,
            split_tokens=self.embedder.split_tokens,
        )

    def _embed(self, texts: list[str],
               between: Callable[[], None] | None = None) -> list[list[float]]:
        """texts' vectors, in model calls of at most token_budget padded tokens, as many
        at once as the model has lanes; between runs before each call starts."""
        if not texts:
            return []
        vectors: list[list[float]] = [[] for _ in texts]
        calls = model_calls(texts, self._count, budget=self.token_budget)
        results = self.lanes.embed_calls(([texts[i] for i in call] for call in calls), between)
        for call, called in zip(calls, results, strict=True):
            for i, vector in zip(call, called, strict=True):
                vectors[i] = vector
        if vectors and len(vectors[0]) != COLUMN_DIMENSIONS:
            raise EmbeddingJobError(self._width_error(len(vectors[0])))
        return vectors
