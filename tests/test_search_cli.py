"""`suparag search`: the real model, the real search functions, RLS as each user."""

from __future__ import annotations

import pytest
from conftest import READABLE, claims_of, unit_vector
from psycopg.types.json import Jsonb
from test_cli import DbCli

from worker.db import as_request
from worker.errors import ConfigError, NotFound
from worker.jobs.embedding import EmbeddingWorker
from worker.models.base import DEFAULT_MODEL
from worker.search import choose_model, configured_model, parse_filter, search
from worker.settings import Settings


@pytest.fixture
def cli(tmp_path, db_url):
    return DbCli(tmp_path, db_url)


#: name -> (owner, team, visibility, content, metadata); contents on distinct topics.
CORPUS = {
    "octopus": ("alice", "a", "private",
                "The octopus has three hearts and blue blood.", {}),
    "chess": ("carol", "a", "team",
              "In chess the knight moves in an L shape across the board.", {}),
    "sourdough": ("bob", "b", "team",
                  "Sourdough bread rises with a wild yeast starter.", {}),
    "volcano": ("alice", None, "public",
                "Volcanoes erupt molten rock that cools into basalt.", {"topic": "geology"}),
    "glacier": ("bob", None, "public",
                "Glaciers carve deep valleys as they creep downhill.",
                {"topic": "geology", "year": 2024}),
}

#: who reads which CORPUS documents (on top of the world's, in conftest.READABLE).
CORPUS_READABLE = {
    "anon": {"volcano", "glacier"},
    "alice": {"octopus", "chess", "volcano", "glacier"},
    "carol": {"chess", "volcano", "glacier"},
    "bob": {"sourdough", "volcano", "glacier"},
    "mallory": {"volcano", "glacier"},
}


@pytest.fixture
def corpus(conn, world, db_url, embedder):
    """The world's documents and CORPUS, all embedded by the real model: name -> id."""
    ids = dict(world.docs)
    for name, (owner, team, visibility, content, metadata) in CORPUS.items():
        ids[name] = conn.execute(
            "insert into public.documents (owner_id, team, visibility, title, content, metadata)"
            " values (%s, %s, %s, %s, %s, %s) returning id",
            (world.users[owner].id, team, visibility, name, content, Jsonb(metadata)),
        ).fetchone()["id"]
    conn.commit()
    worker = EmbeddingWorker(db_url, embedder)
    try:
        assert worker.drain().embedded == len(ids)
    finally:
        worker.close()
    return ids


def names(corpus, hits):
    by_id = {v: k for k, v in corpus.items()}
    return [by_id[h.document_id] for h in hits]


@pytest.mark.parametrize("caller", sorted(CORPUS_READABLE))
def test_search_returns_exactly_what_rls_allows(conn, world, corpus, embedder, caller):
    hits = search(conn, embedder, "anything at all", claims=claims_of(world, caller), k=100)
    expected = READABLE[caller] | CORPUS_READABLE[caller]
    assert set(names(corpus, hits)) == expected
    with as_request(conn, claims_of(world, caller)):
        plain = {r["id"] for r in conn.execute("select id from public.documents")}
    assert {h.document_id for h in hits} == plain
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_the_best_match_is_the_one_on_topic_for_whoever_may_read_it(conn, world, corpus,
                                                                      embedder):
    query = "how many hearts does an octopus have"
    alice = search(conn, embedder, query, claims=world.users["alice"].claims(), k=3)
    assert names(corpus, alice)[0] == "octopus"
    assert alice[0].content == CORPUS["octopus"][3] and alice[0].title == "octopus"
    assert alice[0].score > 0.5 > alice[1].score
    for caller in ("carol", "bob", "anon"):
        hits = search(conn, embedder, query, claims=claims_of(world, caller), k=100)
        assert "octopus" not in names(corpus, hits)


def test_hybrid_search(conn, world, corpus, embedder):
    hits = search(conn, embedder, "sourdough starter", claims=world.users["bob"].claims(),
                  k=3, hybrid=True)
    assert names(corpus, hits)[0] == "sourdough"
    assert len(hits) == 3
    # Reciprocal rank fusion: the top chunk ranks first in both lists, 2 / (rrf_k + 1).
    assert hits[0].score == pytest.approx(2 / 51)
    anon = search(conn, embedder, "sourdough starter", claims=None, k=100, hybrid=True)
    assert "sourdough" not in names(corpus, anon)
    with pytest.raises(ConfigError, match="semantic search only"):
        search(conn, embedder, "x", claims=None, hybrid=True, threshold=0.5)


def test_threshold_and_metadata_filter(conn, world, corpus, embedder):
    alice = world.users["alice"].claims()
    close = search(conn, embedder, "octopus hearts", claims=alice, k=100, threshold=0.5)
    assert names(corpus, close) == ["octopus"]
    geology = search(conn, embedder, "rocks", claims=None, k=100,
                     metadata_filter=parse_filter(["topic=geology"]))
    assert set(names(corpus, geology)) == {"volcano", "glacier"}
    recent = search(conn, embedder, "rocks", claims=None, k=100,
                    metadata_filter=parse_filter(["year=2024", "topic=geology"]))
    assert names(corpus, recent) == ["glacier"]
    assert parse_filter(["year=2024", "lang=en", "draft=false"]) == \
        {"year": 2024, "lang": "en", "draft": False}
    with pytest.raises(ConfigError, match="key=value"):
        parse_filter(["oops"])


def test_model_choice(conn, world):
    # The world's chunks were written by hand under one model.
    assert choose_model(conn) == "test-model"
    assert choose_model(conn, configured=DEFAULT_MODEL) == "test-model"
    conn.execute(
        "insert into public.document_chunks"
        " (document_id, chunk_index, content, embedding, embedding_model, content_hash)"
        " values (%s, 1, 'other', %s, 'other-model', 'h2')",
        (world.docs["alice_public"], unit_vector(7)),
    )
    conn.commit()
    with pytest.raises(ConfigError, match=r"several models .*other-model.*--model"):
        choose_model(conn, configured=DEFAULT_MODEL)
    assert choose_model(conn, configured="other-model") == "other-model"
    assert choose_model(conn, requested="test-model", configured="other-model") == "test-model"
    with pytest.raises(NotFound, match="no vectors from model 'gone'"):
        choose_model(conn, requested="gone")


def test_nothing_embedded_yet(conn):
    with pytest.raises(NotFound, match="suparag worker --once"):
        choose_model(conn)


def test_vectors_of_another_model_are_never_compared(conn, world, corpus, embedder):
    # A chunk under another model whose vector is the query's own: similarity 1
    # if it were compared.
    query = "a chunk stored by some other model"
    vector = "[" + ",".join(repr(x) for x in embedder.embed([query])[0]) + "]"
    conn.execute(
        "insert into public.document_chunks"
        " (document_id, chunk_index, content, embedding, embedding_model, content_hash)"
        " values (%s, 1, 'FOREIGN', %s, 'other-model', 'h2')",
        (corpus["volcano"], vector),
    )
    conn.commit()
    for hybrid in (False, True):
        hits = search(conn, embedder, query, claims=None, k=100, hybrid=hybrid)
        assert hits and "FOREIGN" not in {h.content for h in hits}


# -- the real CLI ------------------------------------------------------------------------


def test_cli_search(cli, corpus, world):
    # Anonymous, JSON, narrowed by metadata: exactly the public geology documents.
    found = cli.json("search", "rocks and ice", "-k", "50", "--filter", "topic=geology")
    assert {h["document_id"] for h in found} == {str(corpus["volcano"]), str(corpus["glacier"])}
    assert set(found[0]) == {"rank", "similarity", "document_id", "chunk_index", "title",
                             "content", "metadata"}
    assert [h["rank"] for h in found] == [1, 2]
    assert found[0]["similarity"] >= found[1]["similarity"]
    assert found[0]["metadata"]["topic"] == "geology"

    # Hybrid, as bob given by id, as a table: his team's document first, none of alice's.
    result = cli("search", "sourdough starter", "--hybrid", "--as", str(world.users["bob"].id),
                 "-k", "3")
    out = result.stdout
    assert "Hybrid search as bob@example.com" in out and "score" in out
    assert out.index("sourdough") < out.index(str(corpus["sourdough"]))
    assert "Sourdough bread rises" in out
    assert "octopus" not in out and str(corpus["octopus"]) not in out


def test_cli_search_errors(cli, world, tmp_path, db_url):
    # Before anything is embedded: the world's hand-made chunks are removed.
    from worker.db import connect

    with connect(db_url) as conn:
        conn.execute("delete from public.document_chunks")
        conn.commit()
    result = cli("search", "anything", check=False)
    assert result.returncode == 1 and "suparag worker --once" in result.stderr
    assert result.stdout == ""

    result = cli("search", "anything", "--as", "nobody@example.com", check=False)
    assert result.returncode == 1 and "suparag users add nobody@example.com" in result.stderr

    with connect(db_url) as conn:
        for index, model in enumerate(("model-a", "model-b")):
            conn.execute(
                "insert into public.document_chunks (document_id, chunk_index, content,"
                " embedding, embedding_model, content_hash) values (%s, %s, 'x', %s, %s, 'h')",
                (world.docs["alice_public"], index, unit_vector(index), model),
            )
        conn.commit()
    result = cli("search", "anything", check=False)
    assert result.returncode == 1 and "--model" in result.stderr and "model-b" in result.stderr
    result = cli("search", "anything", "--model", "model-c", check=False)
    assert result.returncode == 1 and "no vectors from model 'model-c'" in result.stderr
    result = cli("search", "anything", "--hybrid", "--threshold", "0.3", check=False)
    assert result.returncode == 1 and "semantic search only" in result.stderr


BLANKS = ["", "  ", " \t\n "]


@pytest.mark.parametrize("blank", BLANKS)
def test_cli_search_refuses_an_empty_query(cli, corpus, blank):
    # Issue 14: `search ""` embedded the empty string and ranked chunks by it.
    result = cli("search", blank, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        'error: the query is empty: say what to look for, e.g. suparag search "refund policy"']


@pytest.mark.parametrize("blank", BLANKS)
def test_cli_ask_refuses_an_empty_question(cli, corpus, blank):
    # Issue 14: `ask ""` died in a CheckViolation traceback; a question of tabs and
    # newlines passed the table's check (btrim trims spaces only) and was "answered".
    result = cli("ask", blank, "--as", "alice@example.com", check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: the question is empty: say what to look for, e.g. "
        'suparag ask "How do refunds work?" --as EMAIL']


def test_search_refuses_an_empty_query(conn, corpus, embedder):
    with pytest.raises(ConfigError, match="the query is empty"):
        search(conn, embedder, " ", claims=None)


def test_help_explains_search(cli):
    out = cli("search", "--help").stdout
    for option in ("--as", "--hybrid", "-k", "--threshold", "--filter", "--model", "--json"):
        assert option in out


def test_configured_model_names_what_the_worker_would_store(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    local = Settings(_env_file=None, embedding_provider="sentence-transformers",
                     embedding_model=None)
    assert configured_model(local) == DEFAULT_MODEL
    keyed = Settings(_env_file=None, embedding_provider="openai", embedding_model=None,
                     openai_api_key="sk-test")
    assert configured_model(keyed) == "openai/text-embedding-3-small"
    # Without a key the openai model cannot embed a query: no tie-breaker, --model decides.
    keyless = Settings(_env_file=None, embedding_provider="openai", openai_api_key=None)
    assert configured_model(keyless) is None
