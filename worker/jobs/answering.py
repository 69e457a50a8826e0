"""The answer worker: claim questions, retrieve as the asker, answer, cite.

Each question is answered with the asker's rights and nobody else's: the
worker builds the asker's JWT claims from auth.users (worker.users) and runs
retrieval (`public.match_documents`) and the conversation history read inside
`as_request`, as role `authenticated`, exactly as PostgREST would for that
user. So a passage reaches the answer, or the model's prompt, only if a plain
`select` by the asker would return it. The worker's own privileges are used
for the queue, for reading the question and for writing the answer.

Without a chat model the answer is extractive: the best passages, quoted and
cited. With one (worker.models.llm), the passages go into the prompt by number, with
the conversation's earlier turns, and the reply streams into the answer row,
a few updates a second, so Realtime subscribers watch it grow. Each answer also
goes out on its asker's private Broadcast topic `answers:<uid>` (migration
20261202040000): `delta` events as the text grows, then `done` or `failed` in the
transaction that writes the row, so a rollback sends nothing. A failure marks
the answer `failed` with the error and backs the job off; at the retry cap
the job is `failed` until `retry_answer_jobs` requeues it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from worker import usage
from worker.db import as_request
from worker.jobs.queue import ANSWERS, Counts, QueueWorker, WorkerConfig
from worker.models.base import LLM, Embedder, Message, Usage
from worker.models.cache import CachedEmbedder
from worker.search import retrieve
from worker.spaces import get_space, space_embedder
from worker.users import asker as find_asker

log = logging.getLogger("suparag.answering")

NOTHING_READABLE = ("Nothing you can read answers this question: no passage in the documents "
                    "you have access to is close enough to it.")
EXTRACTIVE_HEADER = ("Extractive answer (no language model configured): the passages you can "
                     "read that best match the question.")
SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages in the user's message, which are "
    "from documents the user may read. Cite the passages you use by number in square brackets, "
    "like [1]. If the passages do not contain the answer, say that you do not know."
)
QUOTE_CHARS = 700


@dataclass(frozen=True)
class AnswerConfig(WorkerConfig):
    """How an answer worker claims, retries, retrieves and streams."""

    batch_size: int = 4
    max_attempts: int = 3
    #: Passages less similar than this (cosine) are not evidence.
    min_similarity: float = 0.25
    #: How many passages an extractive answer quotes.
    extractive_passages: int = 3
    #: How many earlier question/answer pairs of the conversation reach the prompt.
    history_turns: int = 6
    #: At most one answer-row update per this many seconds while streaming.
    flush_seconds: float = 0.25
    #: Send each answer on its asker's private Realtime Broadcast topic too
    #: (`answers:<uid>`: `delta` events, then `done` or `failed`).
    broadcast: bool = True
    #: At most one `delta` broadcast per this many seconds while streaming.
    delta_seconds: float = 0.05


@dataclass
class AnswerResult(Counts):
    """What one batch did."""

    answered: int = 0
    failed: int = 0
    retrying: int = 0
    gone: int = 0  # the question was deleted meanwhile

    @property
    def claimed(self) -> int:
        return self.answered + self.failed + self.retrying + self.gone


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk, numbered as the answer cites it."""

    n: int
    document_id: uuid.UUID
    chunk_id: int
    chunk_index: int
    title: str
    content: str
    similarity: float
    #: The PDF page or slide the chunk came from (document_chunks.page); None if unpaged.
    page: int | None = None

    def citation(self) -> dict[str, Any]:
        return {"n": self.n, "document_id": str(self.document_id), "chunk_id": self.chunk_id,
                "chunk_index": self.chunk_index, "title": self.title,
                "similarity": round(self.similarity, 4), "page": self.page}


@dataclass
class _Draft:
    """An answer being written, and when it was last flushed to its row."""

    question: dict[str, Any]
    mode: str
    model: str | None
    citations: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    flushed_at: float = 0.0
    #: How much of `text` has gone out in `delta` broadcasts, and when the last went.
    sent: int = 0
    sent_at: float = 0.0


_HISTORY = """
    select q.question, a.content
    from public.questions q
    join public.answers a on a.question_id = q.id
    where q.conversation_id = %(conversation)s and q.id <> %(question)s
      and q.created_at <= %(before)s and a.status = 'done'
    order by q.created_at desc
    limit %(turns)s
"""


_FAILED_ANSWER = """
    insert into public.answers as a
      (question_id, asker_id, conversation_id, mode, model, status, error)
    select q.id, q.asker_id, q.conversation_id, %(mode)s, %(model)s, 'failed', %(error)s
    from public.questions q where q.id = %(question)s
    on conflict (question_id) do update
      set status = 'failed', error = excluded.error, updated_at = now()
    returning a.id, a.asker_id
"""


class AnswerWorker(QueueWorker[AnswerResult]):
    """Drains the answer queue of one database."""

    queue = ANSWERS
    config: AnswerConfig

    def __init__(self, db_url: str, embedder: Embedder, *, llm: LLM | None = None,
                 config: AnswerConfig | None = None) -> None:
        super().__init__(db_url, AnswerResult, config=config or AnswerConfig())
        self.embedder = embedder
        # Query vectors are cached per model (issue 18): a question asked again, or the
        # same words in another conversation, skips the model.
        self._query_cache = CachedEmbedder(embedder)
        self._space_embedders: dict[str, Embedder] = {}
        self.llm = llm

    def load(self) -> None:
        self.embedder.load()

    @property
    def model(self) -> str:
        return self.embedder.name

    def describe(self, batch: AnswerResult) -> str:
        return (f"answers: {batch.answered} answered, {batch.retrying} retrying, "
                f"{batch.failed} failed")

    # -- batches --------------------------------------------------------------------------

    def run_batch(self, *, question_ids: Sequence[uuid.UUID] | None = None,
                  on_text: Callable[[str], None] | None = None) -> AnswerResult:
        """Claim up to batch_size due questions (or only these) and answer each one.

        `on_text` receives the answer's text as it is written (deltas).
        """
        conn = self.conn
        with conn.transaction():
            jobs = conn.execute(
                "select * from suparag_private.claim_answer_jobs(%s, %s, %s, %s)",
                (self.config.worker_id, self.config.batch_size, self.config.lease_seconds,
                 list(question_ids) if question_ids is not None else None),
            ).fetchall()
        result = AnswerResult()
        for job in jobs:
            try:
                result.add(self._answer(job, on_text))
            except Exception as exc:  # one question's failure must not stop the others
                result.add(self._fail(job, exc))
        return result

    # -- one question ---------------------------------------------------------------------

    def _answer(self, job: dict[str, Any], on_text: Callable[[str], None] | None) -> AnswerResult:
        conn = self.conn
        with conn.transaction():
            question = conn.execute(
                "select id, asker_id, conversation_id, question, filter, match_count, created_at"
                " from public.questions where id = %s", (job["question_id"],)).fetchone()
            if question is None:
                return AnswerResult(gone=1)  # deleted with its job; nothing to release
            asker = find_asker(conn, question["asker_id"])
        claims = asker.claims()
        passages = self._retrieve(question, claims)
        history = self._history(question, claims) if self.llm is not None else []
        draft = _Draft(question=question,
                       mode="generative" if self.llm is not None else "extractive",
                       model=self.llm.name if self.llm is not None else None)
        if not passages and not history:
            draft.text = NOTHING_READABLE
        elif self.llm is None:
            quoted = passages[: self.config.extractive_passages]
            draft.citations = [p.citation() for p in quoted]
            draft.text = _extractive(quoted)
        else:
            draft.citations = [p.citation() for p in passages]
            self._flush(draft, status="streaming")
            self._generate(draft, _prompt(question["question"], passages, history), on_text)
            on_text = None  # already streamed
        if on_text is not None:
            on_text(draft.text)
        self._finish(draft, job)
        return AnswerResult(answered=1)

    def _retrieve(self, question: dict[str, Any], claims: dict[str, Any]) -> list[Passage]:
        """The best passages the asker may read, ranked: match_documents run as the asker."""
        started = time.monotonic()
        embedder = self._query_embedder()
        vector = embedder.embed([question["question"]])[0]
        self._meter("answer.query_embedding", embedder.name, started, question,
                    input_tokens=embedder.count_tokens(question["question"]))
        rows = retrieve(self.conn, vector, claims=claims, model=embedder.name,
                        k=question["match_count"], metadata_filter=question["filter"],
                        threshold=self.config.min_similarity)
        pages = self._pages([row["chunk_id"] for row in rows])
        return [Passage(n=n, document_id=row["document_id"], chunk_id=row["chunk_id"],
                        chunk_index=row["chunk_index"], title=row["title"],
                        content=row["content"], similarity=row["score"],
                        page=pages.get(row["chunk_id"]))
                for n, row in enumerate(rows, start=1)]

    def _pages(self, chunk_ids: list[int]) -> dict[int, int]:
        """The page of each paged chunk, by id (issue 15). Looked up by chunk id rather than
        returned by match_documents, whose signature stays as it is; the ids are the ones
        the asker's own retrieval returned, so this reads nothing the asker may not."""
        if not chunk_ids:
            return {}
        with self.conn.transaction():
            rows = self.conn.execute(
                "select id, page from public.document_chunks"
                " where id = any(%s) and page is not null", (chunk_ids,)).fetchall()
        return {row["id"]: row["page"] for row in rows}

    def _query_embedder(self) -> Embedder:
        """The active space's model when it is a space added later (issue 10), else ours."""
        with self.conn.transaction():
            space = get_space(self.conn)
        if space.storage == "column":
            return self._query_cache
        key = f"{space.id}:{space.model}:{space.dimensions}"
        if key not in self._space_embedders:
            self._space_embedders[key] = CachedEmbedder(space_embedder(space))
        return self._space_embedders[key]

    def _history(self, question: dict[str, Any], claims: dict[str, Any]) -> list[Message]:
        """Earlier finished turns of the conversation, read as the asker (so only theirs)."""
        with as_request(self.conn, claims):
            rows = self.conn.execute(_HISTORY, {
                "conversation": question["conversation_id"], "question": question["id"],
                "before": question["created_at"], "turns": self.config.history_turns,
            }).fetchall()
        messages: list[Message] = []
        for row in reversed(rows):
            messages += [Message("user", row["question"]), Message("assistant", row["content"])]
        return messages

    def _generate(self, draft: _Draft, messages: list[Message],
                  on_text: Callable[[str], None] | None) -> None:
        """Stream the model's reply into the draft, flushing it to the row now and then."""
        assert self.llm is not None
        started = time.monotonic()
        usage: Usage | None = None
        for piece in self.llm.stream(messages):
            if isinstance(piece, Usage):
                usage = piece
                continue
            draft.text += piece
            if on_text is not None:
                on_text(piece)
            now = time.monotonic()
            if now - draft.sent_at >= self.config.delta_seconds:
                self._send_delta(draft)
            if now - draft.flushed_at >= self.config.flush_seconds:
                self._flush(draft, status="streaming")
        self._send_delta(draft)
        if usage is None:  # the server did not count: estimate (about 4 characters a token)
            usage = Usage(sum(len(m.content) for m in messages) // 4, len(draft.text) // 4)
        self._meter("answer.generation", self.llm.name, started, draft.question,
                    input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)

    # -- writing ------------------------------------------------------------------------

    _UPSERT = """
        insert into public.answers as a
          (question_id, asker_id, conversation_id, content, mode, model, citations, status,
           error)
        values (%(question)s, %(asker)s, %(conversation)s, %(content)s, %(mode)s, %(model)s,
                %(citations)s, %(status)s, %(error)s)
        on conflict (question_id) do update
          set content = excluded.content, mode = excluded.mode, model = excluded.model,
              citations = excluded.citations, status = excluded.status, error = excluded.error,
              updated_at = now()
        returning a.id
    """

    def _upsert(self, draft: _Draft, *, status: str, error: str | None = None) -> uuid.UUID:
        q = draft.question
        row = self.conn.execute(self._UPSERT, {
            "question": q["id"], "asker": q["asker_id"], "conversation": q["conversation_id"],
            "content": draft.text, "mode": draft.mode, "model": draft.model,
            "citations": Jsonb(draft.citations), "status": status, "error": error,
        }).fetchone()
        assert row is not None
        return uuid.UUID(str(row["id"]))

    def _publish(self, asker: Any, event: str, payload: dict[str, Any]) -> None:
        """Send an answer event on the asker's private topic, in the open transaction."""
        if self.config.broadcast:
            self.conn.execute("select suparag_private.publish_answer(%s, %s, %s)",
                              (asker, event, Jsonb(payload)))

    def _send_delta(self, draft: _Draft) -> None:
        """Broadcast the text written since the last delta (`offset`: where it starts)."""
        if not self.config.broadcast or len(draft.text) == draft.sent:
            return
        q = draft.question
        with self.conn.transaction():
            self._publish(q["asker_id"], "delta", {
                "question_id": str(q["id"]), "offset": draft.sent,
                "text": draft.text[draft.sent:]})
        draft.sent, draft.sent_at = len(draft.text), time.monotonic()

    def _flush(self, draft: _Draft, *, status: str) -> None:
        with self.conn.transaction():
            self._upsert(draft, status=status)
        draft.flushed_at = time.monotonic()

    def _finish(self, draft: _Draft, job: dict[str, Any]) -> None:
        """Write the finished answer, send it, and drop the job, in one transaction."""
        q = draft.question
        with self.conn.transaction():
            answer_id = self._upsert(draft, status="done")
            self._publish(q["asker_id"], "done", {
                "question_id": str(q["id"]), "answer_id": str(answer_id), "status": "done",
                "content": draft.text, "citations": draft.citations, "mode": draft.mode,
                "model": draft.model})
            self.conn.execute("delete from suparag_private.answer_jobs where id = %s",
                              (job["job_id"],))

    def _fail(self, job: dict[str, Any], exc: BaseException) -> AnswerResult:
        """Mark the answer failed with the error, and back the job off (or fail it at the cap)."""
        message = str(exc) or type(exc).__name__

        def mark_answer_failed() -> None:
            row = self.conn.execute(_FAILED_ANSWER, {
                "question": job["question_id"], "error": message[:2000],
                "mode": "generative" if self.llm is not None else "extractive",
                "model": self.llm.name if self.llm is not None else None}).fetchone()
            if row is not None:
                self._publish(row["asker_id"], "failed", {
                    "question_id": str(job["question_id"]), "answer_id": str(row["id"]),
                    "status": "failed", "error": message[:2000]})

        status = self.record_failure(
            job, f"question {job['question_id']}", message,
            "select suparag_private.fail_answer_job(%s, %s, %s, %s) as outcome",
            (job["job_id"], message, self.config.max_attempts,
             self.config.backoff(job["attempts"])),
            before=mark_answer_failed,
        )
        return AnswerResult(failed=int(status == "failed"), retrying=int(status == "queued"),
                            gone=int(status is None))

    def _meter(self, feature: str, model: str, started: float, question: dict[str, Any], *,
               input_tokens: int = 0, output_tokens: int = 0) -> None:
        usage.record(self.conn, feature=feature, model=model, started=started,
                     input_tokens=input_tokens, output_tokens=output_tokens,
                     question_id=question["id"], user_id=question["asker_id"])


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) > QUOTE_CHARS:
        flat = flat[: QUOTE_CHARS - 1].rstrip() + "…"
    return flat


def _extractive(passages: Sequence[Passage]) -> str:
    """The passages, quoted and numbered, under a header that says what this is."""
    parts = [EXTRACTIVE_HEADER]
    for p in passages:
        parts.append(f"[{p.n}] {p.title} (similarity {p.similarity:.2f})\n> {_quote(p.content)}")
    return "\n\n".join(parts)


def _prompt(question: str, passages: Sequence[Passage], history: list[Message]) -> list[Message]:
    """System rules, the earlier turns, then the numbered passages and the question."""
    if passages:
        context = "\n\n".join(f"[{p.n}] {p.title}\n{p.content}" for p in passages)
    else:
        context = "(no passages: nothing the user can read matches this question)"
    return [Message("system", SYSTEM_PROMPT), *history,
            Message("user", f"Passages:\n\n{context}\n\nQuestion: {question}")]
