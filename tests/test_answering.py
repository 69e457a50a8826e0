"""The answer worker and `suparag ask`: retrieval as the asker, extractive and LLM answers.

The corpus is built so that the best match for each question belongs to
someone the asker is not: an answer that quoted it, or a prompt that held it,
would be a leak. LLM mode runs against an HTTP-level double of
`POST /v1/chat/completions` (a real local server streaming server-sent
events like OpenAI) that records every prompt it receives.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from conftest import http_double, wait_for
from test_cli import DbCli

from worker.db import as_request, connect
from worker.jobs.answering import (
    EXTRACTIVE_HEADER,
    NOTHING_READABLE,
    AnswerConfig,
    AnswerWorker,
)
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.models.llm import OpenAIChat

#: name -> (owner, team, visibility, content)
CORPUS = {
    "octopus_secret": ("bob", "b", "private",
                       "The octopus has three hearts and blue blood. "
                       "Bob's secret codename for the octopus project is KRAKEN-7."),
    "octopus_public": ("alice", None, "public",
                       "Octopuses are clever sea animals; an octopus can open a jar."),
    "sourdough": ("bob", "b", "private",
                  "Sourdough bread rises because a wild yeast starter ferments the dough."),
    "chess": ("carol", "a", "team",
              "In chess the knight moves in an L shape across the board."),
}
SECRET = "KRAKEN-7"


@pytest.fixture
def corpus(conn, world, db_url, embedder) -> dict[str, Any]:
    """The world's documents and CORPUS, embedded by the real model: name -> id."""
    ids = dict(world.docs)
    for name, (owner, team, visibility, content) in CORPUS.items():
        ids[name] = conn.execute(
            "insert into public.documents (owner_id, team, visibility, title, content)"
            " values (%s, %s, %s, %s, %s) returning id",
            (world.users[owner].id, team, visibility, name, content),
        ).fetchone()["id"]
    conn.commit()
    worker = EmbeddingWorker(db_url, embedder)
    try:
        worker.drain()
    finally:
        worker.close()
    return ids


def ask(conn, user, question: str, *, conversation=None) -> dict[str, Any]:
    """Insert a question as user, as the API would; returns id and conversation_id."""
    with as_request(conn, user.claims()):
        return conn.execute(
            "insert into public.questions (question, conversation_id)"
            " values (%s, coalesce(%s, gen_random_uuid())) returning id, conversation_id",
            (question, conversation)).fetchone()


def answer_of(conn, question_id) -> dict[str, Any]:
    row = conn.execute("select * from public.answers where question_id = %s",
                       (question_id,)).fetchone()
    conn.commit()
    return row


def job_of(conn, question_id) -> dict[str, Any] | None:
    row = conn.execute("select status, attempts, last_error from suparag_private.answer_jobs"
                       " where question_id = %s", (question_id,)).fetchone()
    conn.commit()
    return row


def cited(corpus, answer) -> set[str]:
    by_id = {str(v): k for k, v in corpus.items()}
    return {by_id[c["document_id"]] for c in answer["citations"]}


@pytest.fixture
def worker_factory(db_url, embedder) -> Iterator[Any]:
    made: list[AnswerWorker] = []

    def make(llm=None, **config: Any) -> AnswerWorker:
        config.setdefault("backoff_base_seconds", 0.0)
        worker = AnswerWorker(db_url, embedder, llm=llm, config=AnswerConfig(**config))
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


def test_the_best_match_is_someone_elses(conn, world, corpus, embedder):
    """The premise of the leak tests: unrestricted, bob's secret ranks first."""
    from worker.search import search

    hits = search(conn, embedder, "How many hearts does an octopus have?",
                  claims={"role": "service_role"}, k=1)
    assert hits[0].document_id == corpus["octopus_secret"]


# -- extractive -------------------------------------------------------------------------


def test_extractive_answer_quotes_only_what_the_asker_reads(conn, world, corpus,
                                                            worker_factory):
    q = ask(conn, world.users["alice"], "How many hearts does an octopus have?")
    result = worker_factory().drain()
    assert result.answered == 1

    answer = answer_of(conn, q["id"])
    assert answer["status"] == "done" and answer["mode"] == "extractive"
    assert answer["model"] is None and answer["asker_id"] == world.users["alice"].id
    assert answer["content"].startswith(EXTRACTIVE_HEADER)
    assert SECRET not in answer["content"] and "three hearts" not in answer["content"]
    assert "octopus_secret" not in cited(corpus, answer)
    assert "octopus_public" in cited(corpus, answer)
    first = answer["citations"][0]
    assert first["n"] == 1 and first["title"] == "octopus_public"
    assert 0 < first["similarity"] <= 1
    chunk = conn.execute("select document_id from public.document_chunks where id = %s",
                         (first["chunk_id"],)).fetchone()
    assert str(chunk["document_id"]) == first["document_id"]
    assert job_of(conn, q["id"]) is None  # done: the job is gone
    usage = conn.execute("select feature, model, input_tokens, question_id, user_id"
                         " from suparag_private.usage").fetchall()
    assert [(u["feature"], u["question_id"], u["user_id"]) for u in usage] == [
        ("answer.query_embedding", q["id"], world.users["alice"].id)]
    assert usage[0]["input_tokens"] > 0


def test_nothing_readable_says_so(conn, world, corpus, worker_factory):
    mallory = ask(conn, world.users["mallory"], "How does sourdough bread rise?")
    bob = ask(conn, world.users["bob"], "How does sourdough bread rise?")
    assert worker_factory().drain().answered == 2

    answer = answer_of(conn, mallory["id"])
    assert answer["status"] == "done"
    assert answer["content"] == NOTHING_READABLE and answer["citations"] == []
    # The same question by the owner finds his document: it was RLS, not the search.
    assert cited(corpus, answer_of(conn, bob["id"])) == {"sourdough"}


def test_deleted_question_is_dropped(conn, world, corpus, worker_factory):
    q = ask(conn, world.users["alice"], "anything?")
    conn.execute("delete from public.questions where id = %s", (q["id"],))
    conn.commit()
    assert worker_factory().drain().claimed == 0


# -- the CLI ----------------------------------------------------------------------------




def test_ask_cli(tmp_path, conn, db_url, world, corpus):
    cli = DbCli(tmp_path, db_url)
    out = json.loads(cli("ask", "How many hearts does an octopus have?", "--as",
                         "alice@example.com", "--json").stdout)
    assert out["status"] == "done" and out["mode"] == "extractive"
    assert "octopus_public" in {c["title"] for c in out["citations"]}
    assert SECRET not in out["answer"]
    row = conn.execute("select asker_id, conversation_id from public.questions where id = %s",
                       (out["question_id"],)).fetchone()
    assert row["asker_id"] == world.users["alice"].id
    assert str(row["conversation_id"]) == out["conversation_id"]

    text = cli("ask", "How does sourdough bread rise?", "--as", "bob@example.com",
               "--conversation", out["conversation_id"]).stdout
    assert EXTRACTIVE_HEADER in text and "Citations" in text and "sourdough" in text
    assert "--conversation" in text


def test_ask_cli_errors(tmp_path, db_url, world, corpus):
    cli = DbCli(tmp_path, db_url)
    missing = cli("ask", "why?", "--as", "nobody@example.com", check=False)
    assert missing.returncode == 1
    assert "no user 'nobody@example.com'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad = cli("ask", "why?", "--as", "alice@example.com", "--conversation", "x", check=False)
    assert bad.returncode == 1 and "is not an id" in bad.stderr


# -- LLM mode against a chat-completions double ------------------------------------------------


@dataclass
class FakeChat:
    """The double's state: what it streams and every request it received."""

    url: str = ""
    reply: str = "Octopuses can open jars [1]."
    token_delay: float = 0.0
    stall: float = 0.0  # seconds to wait before answering at all
    statuses: list[int] = field(default_factory=list)  # served first, one per request
    requests: list[dict[str, Any]] = field(default_factory=list)

    def prompt_text(self, index: int = -1) -> str:
        return "\n".join(m["content"] for m in self.requests[index]["messages"])


def _chat_handler(fake: FakeChat) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append(body)
            if fake.stall:
                time.sleep(fake.stall)
            status = fake.statuses.pop(0) if fake.statuses else 200
            if self.path != "/v1/chat/completions" or status != 200:
                raw = json.dumps({"error": {"message": f"canned failure {status}",
                                            "type": "server_error"}}).encode()
                self.send_response(404 if status == 200 else status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            tokens = [t + " " for t in fake.reply.split(" ")]
            tokens[-1] = tokens[-1].rstrip()
            for token in tokens:
                self._event({"choices": [{"index": 0, "delta": {"content": token},
                                          "finish_reason": None}]}, body)
                if fake.token_delay:
                    time.sleep(fake.token_delay)
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, body)
            self._event({"choices": [], "usage": {"prompt_tokens": 111,
                                                  "completion_tokens": len(tokens),
                                                  "total_tokens": 111 + len(tokens)}}, body)
            self.wfile.write(b"data: [DONE]\n\n")

        def _event(self, payload: dict[str, Any], body: dict[str, Any]) -> None:
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                     "model": body["model"], **payload}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def chat() -> Iterator[FakeChat]:
    fake = FakeChat()
    with http_double(_chat_handler(fake)) as fake.url:
        yield fake


def llm_for(chat: FakeChat, **options: Any) -> OpenAIChat:
    return OpenAIChat("test-chat", api_key="sk-test", base_url=chat.url, **options)


def test_prompt_holds_only_passages_the_asker_reads(conn, world, corpus, chat,
                                                    worker_factory):
    q = ask(conn, world.users["alice"], "How many hearts does an octopus have?")
    assert worker_factory(llm_for(chat)).drain().answered == 1

    assert len(chat.requests) == 1
    request = chat.requests[0]
    assert request["model"] == "test-chat" and request["stream"] is True
    prompt = chat.prompt_text()
    assert CORPUS["octopus_public"][3] in prompt
    assert SECRET not in prompt and "three hearts" not in prompt
    assert "[1] octopus_public" in prompt
    assert "Question: How many hearts does an octopus have?" in prompt
    assert request["messages"][0]["role"] == "system"

    answer = answer_of(conn, q["id"])
    assert answer["status"] == "done" and answer["mode"] == "generative"
    assert answer["model"] == "test-chat"
    assert answer["content"] == chat.reply
    assert cited(corpus, answer) >= {"octopus_public"}
    assert "octopus_secret" not in cited(corpus, answer)
    generation = conn.execute("select model, input_tokens, output_tokens, latency_ms"
                              " from suparag_private.usage"
                              " where feature = 'answer.generation'").fetchone()
    assert generation["model"] == "test-chat" and generation["input_tokens"] == 111
    assert generation["output_tokens"] == len(chat.reply.split(" "))
    assert generation["latency_ms"] > 0


def test_conversation_history_reaches_the_prompt_and_only_the_askers(conn, world, corpus,
                                                                     chat, worker_factory):
    worker = worker_factory(llm_for(chat))
    first = ask(conn, world.users["alice"], "Can an octopus open a jar?")
    worker.drain()
    chat.reply = "Yes, with its arms [1]."
    # bob writes into alice's conversation id: his turn must not reach her prompt, nor hers his
    intruder = ask(conn, world.users["bob"], "What is the octopus codename?",
                   conversation=first["conversation_id"])
    worker.drain()
    second = ask(conn, world.users["alice"], "And how clever is it?",
                 conversation=first["conversation_id"])
    worker.drain()

    messages = chat.requests[-1]["messages"]
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "Can an octopus open a jar?"
    assert messages[2]["content"] == "Octopuses can open jars [1]."
    assert "codename" not in chat.prompt_text(-1)
    assert "Can an octopus open a jar?" not in chat.prompt_text(1)  # bob's request
    assert answer_of(conn, intruder["id"])["status"] == "done"
    assert answer_of(conn, second["id"])["content"] == "Yes, with its arms [1]."


def test_llm_failure_marks_the_answer_failed_and_the_question_is_retried(conn, world, corpus,
                                                                         chat, worker_factory):
    chat.statuses = [500, 500]
    worker = worker_factory(llm_for(chat), max_attempts=2)
    q = ask(conn, world.users["alice"], "Can an octopus open a jar?")

    first = worker.run_batch()
    assert (first.retrying, first.answered) == (1, 0)
    answer = answer_of(conn, q["id"])
    assert answer["status"] == "failed" and "HTTP 500" in answer["error"]
    assert job_of(conn, q["id"])["status"] == "queued"

    conn.execute("update suparag_private.answer_jobs set run_after = now()")
    conn.commit()
    second = worker.run_batch()
    assert second.failed == 1  # at the cap
    job = job_of(conn, q["id"])
    assert job["status"] == "failed" and job["attempts"] == 2 and "HTTP 500" in job["last_error"]
    assert worker.run_batch().claimed == 0

    assert conn.execute("select suparag_private.retry_answer_jobs(%s) as n",
                        ([q["id"]],)).fetchone()["n"] == 1
    conn.commit()
    assert worker.drain().answered == 1
    answer = answer_of(conn, q["id"])
    assert answer["status"] == "done" and answer["error"] is None
    assert answer["content"] == chat.reply
    assert job_of(conn, q["id"]) is None


def test_llm_timeout_fails_the_answer(conn, world, corpus, chat, worker_factory):
    chat.stall = 3.0
    worker = worker_factory(llm_for(chat, timeout_seconds=0.5))
    q = ask(conn, world.users["alice"], "Can an octopus open a jar?")
    assert worker.run_batch().retrying == 1
    answer = answer_of(conn, q["id"])
    assert answer["status"] == "failed" and "did not answer within" in answer["error"]


def test_answer_streams_into_its_row_a_few_times_a_second(conn, world, corpus, chat,
                                                          worker_factory):
    """Each write of the row is recorded by a trigger: the text grows, in few writes."""
    conn.execute("""
        create table public.answer_writes (status text, length integer);
        create function public.record_answer_write() returns trigger language plpgsql as $$
        begin
          insert into public.answer_writes values (new.status, length(new.content));
          return new;
        end $$;
        create trigger record after insert or update on public.answers
          for each row execute function public.record_answer_write();
    """)
    conn.commit()
    chat.reply = " ".join(f"word{i}" for i in range(40))
    chat.token_delay = 0.02
    q = ask(conn, world.users["alice"], "Can an octopus open a jar?")
    assert worker_factory(llm_for(chat), flush_seconds=0.25).drain().answered == 1

    writes = conn.execute("select status, length from public.answer_writes").fetchall()
    streaming = [w["length"] for w in writes if w["status"] == "streaming"]
    assert writes[-1] == {"status": "done", "length": len(chat.reply)}
    assert 2 <= len(streaming) < 20  # throttled: not one write per token
    assert streaming == sorted(streaming) and streaming[-1] <= len(chat.reply)
    assert answer_of(conn, q["id"])["content"] == chat.reply


def test_ask_cli_streams_an_llm_answer(tmp_path, db_url, world, corpus, chat):
    cli = DbCli(tmp_path, db_url)
    env = {"SUPARAG_LLM_MODEL": "test-chat", "SUPARAG_LLM_BASE_URL": chat.url,
           "SUPARAG_LLM_API_KEY": "sk-test"}
    out = cli("ask", "How many hearts does an octopus have?", "--as", "alice@example.com",
              env=env).stdout
    assert chat.reply in out and "Citations" in out
    assert SECRET not in chat.prompt_text()

    chat.statuses = [503]
    failed = cli("ask", "Can an octopus open a jar?", "--as", "alice@example.com", env=env,
                 check=False)
    assert failed.returncode == 1 and "HTTP 503" in failed.stderr
    assert "retried" in failed.stderr


# -- usage and training data ---------------------------------------------------------------


def test_usage_and_training_data_export(tmp_path, conn, db_url, world, corpus, chat,
                                        worker_factory):
    worker = worker_factory(llm_for(chat))
    liked = ask(conn, world.users["alice"], "Can an octopus open a jar?")
    disliked = ask(conn, world.users["bob"], "How does sourdough bread rise?")
    unrated = ask(conn, world.users["carol"], "How does the knight move in chess?")
    assert worker.drain().answered == 3
    for user, question, feedback in ((world.users["alice"], liked, 1),
                                     (world.users["bob"], disliked, -1)):
        with as_request(conn, user.claims()):  # the asker rates, through RLS
            assert conn.execute("update public.answers set feedback = %s"
                                " where question_id = %s",
                                (feedback, question["id"])).rowcount == 1

    cli = DbCli(tmp_path, db_url)
    lines = {(u["feature"], u["model"]): u for u in cli.json("usage")}
    generation = lines[("answer.generation", "test-chat")]
    assert generation["calls"] == 3 and generation["input_tokens"] == 3 * 111
    assert generation["output_tokens"] > 0 and generation["latency_ms_p95"] > 0
    embedding = next(u for (feature, _), u in lines.items()
                     if feature == "answer.query_embedding")
    assert embedding["calls"] == 3 and embedding["input_tokens"] > 0
    assert "answer.generation" in cli("usage").stdout

    exported = cli("export", "training-data").stdout.splitlines()
    examples = [json.loads(line) for line in exported]
    assert [e["question_id"] for e in examples] == [str(liked["id"])]
    assert examples[0]["messages"] == [
        {"role": "user", "content": "Can an octopus open a jar?"},
        {"role": "assistant", "content": chat.reply}]
    assert examples[0]["feedback"] == 1 and examples[0]["model"] == "test-chat"

    out = tmp_path / "all.jsonl"
    cli("export", "training-data", "--min-feedback", "-1", "--output", str(out))
    ids = {json.loads(line)["question_id"] for line in out.read_text().splitlines()}
    assert ids == {str(liked["id"]), str(disliked["id"])}
    assert str(unrated["id"]) not in ids  # unrated answers never export


# -- in `suparag worker` ----------------------------------------------------------------------


def test_service_answers_when_notified(conn, world, corpus, db_url, embedder):
    """A sweep far beyond the test: only the NOTIFY on suparag_answer_jobs explains the answer."""
    from worker.jobs.service import Service, ServiceConfig

    service = Service([AnswerWorker(db_url, embedder)],
                      service=ServiceConfig(sweep_seconds=3600))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: service._listener is not None
                        and service._listener.listening.is_set())
        q = ask(conn, world.users["alice"], "Can an octopus open a jar?")
        assert wait_for(lambda: (answer_of(conn, q["id"]) or {}).get("status") == "done")
        assert service.wakeups.counts["notify"] >= 1
        assert service.answer_totals is not None and service.answer_totals.answered == 1
        assert service.health()["answers"]["answered"] == 1
    finally:
        service.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_answers_do_not_wait_for_the_embedding_backlog(conn, world, corpus, db_url,
                                                      embedder):
    """The service's answer loop runs beside its embedding loop: the embedder here will
    not embed a single backlog document until the question has its answer, which a
    service running the two queues one after the other could never give."""
    from worker.jobs.service import Service

    for i in range(3):
        conn.execute("insert into public.documents (owner_id, title, content)"
                     " values (%s, %s, %s)",
                     (world.users["bob"].id, f"backlog {i}", f"a queued note number {i}"))
    conn.commit()
    q = ask(conn, world.users["alice"], "Can an octopus open a jar?")

    class WaitsForTheAnswer:
        """The real model, once the answer is done (or 30 s have passed)."""

        name, max_tokens = embedder.name, embedder.max_tokens
        count_tokens, split_tokens = embedder.count_tokens, embedder.split_tokens

        def __init__(self) -> None:
            self.answered_first: list[bool] = []

        def load(self) -> None:
            embedder.load()

        @property
        def dimensions(self) -> int:
            return embedder.dimensions

        def embed(self, texts):
            if not self.answered_first:
                deadline = time.monotonic() + 30
                with connect(db_url) as watcher:
                    while time.monotonic() < deadline:
                        row = watcher.execute("select status from public.answers"
                                              " where question_id = %s", (q["id"],)).fetchone()
                        watcher.commit()
                        if row is not None and row["status"] == "done":
                            break
                        time.sleep(0.05)
                    self.answered_first.append(time.monotonic() < deadline)
            return embedder.embed(texts)

    gate = WaitsForTheAnswer()
    service = Service([EmbeddingWorker(db_url, gate, config=WorkerConfig(batch_size=1)),
                       AnswerWorker(db_url, embedder)])
    service.run(once=True)
    assert gate.answered_first == [True]
    assert answer_of(conn, q["id"])["status"] == "done"
    assert service.totals.embedded == 3
    assert service.answer_totals is not None and service.answer_totals.answered == 1


def test_a_failing_answer_loop_stops_the_service_with_its_error(db_url, embedder):
    """A bug in one loop must not leave the worker half alive: run() stops and raises it."""
    from worker.jobs.service import Service, ServiceConfig

    class Broken(AnswerWorker):
        def drain(self, **kwargs):
            raise RuntimeError("answer loop bug")

    service = Service([EmbeddingWorker(db_url, embedder), Broken(db_url, embedder)],
                      service=ServiceConfig(sweep_seconds=3600))
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            service.run()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the embedding loop kept running"
    assert [str(e) for e in outcome] == ["answer loop bug"]


def test_worker_only_serves_the_queue_it_is_given(tmp_path, conn, db_url, world):
    cli = DbCli(tmp_path, db_url)
    # The world's documents are queued for embedding; a question is queued for answering.
    q = ask(conn, world.users["alice"], "What is in the handbook?")
    only_answers = json.loads(cli("worker", "--once", "--only", "answers", "--json").stdout)
    assert only_answers["embedded"] == 0 and only_answers["answers"]["answered"] == 1
    assert answer_of(conn, q["id"])["status"] == "done"
    queued = conn.execute("select count(*) as n from suparag_private.embedding_jobs").fetchone()
    conn.commit()
    assert queued["n"] == len(world.docs)

    q2 = ask(conn, world.users["bob"], "Anything else?")
    only_embeddings = json.loads(cli("worker", "--once", "--only", "embeddings",
                                     "--json").stdout)
    assert only_embeddings["embedded"] == len(world.docs)
    assert only_embeddings["answers"] is None
    assert job_of(conn, q2["id"])["status"] == "queued"
    metered = conn.execute("select sum(input_tokens) as tokens, count(*) as calls"
                           " from suparag_private.usage where feature = 'embedding.documents'"
                           ).fetchone()
    conn.commit()
    assert metered["calls"] >= 1 and metered["tokens"] > 0

