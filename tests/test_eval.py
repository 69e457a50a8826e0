"""`suparag eval`: runs as a user under RLS, stored history, tuning, the activation gate.

The corpus is small and fixed, embedded by the real packaged model. It is
planted so that one weighting is clearly better: each code query's answer is
a warehouse log that holds the query's words (full text finds it first) but
is about something else, while a dozen recipes are closer in meaning and lack
the code (semantic search puts them first). At k=3, hybrid_search takes 6
semantic candidates, none of them a log; with equal weights the log (first in
full text) ties with the best recipe (first in meaning), and only a
full-text-heavy setting puts it first.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from test_cli import DbCli

from worker.errors import ActivationRefused, ConfigError
from worker.evaluation import runner, tuning
from worker.evaluation.defaults import LANDED, get_defaults, reset_defaults, set_defaults
from worker.evaluation.gate import check_activation
from worker.evaluation.sets import parse_set
from worker.jobs.embedding import EmbeddingWorker
from worker.search import HybridWeights, retrieve
from worker.spaces import get_space
from worker.users import add_user, find_user

RECIPES = {
    f"recipes/{name}.md": text for name, text in {
        "sourdough": "A recipe for sourdough bread: feed the starter, knead, proof overnight.",
        "soup": "Recipe for tomato soup with basil, garlic and a splash of cream.",
        "pancakes": "Fluffy pancake recipe: flour, eggs, milk, and a pinch of salt.",
        "curry": "A simple chickpea curry recipe with coconut milk and spices.",
        "risotto": "Mushroom risotto recipe: stir the rice slowly and add stock ladle by ladle.",
        "cookies": "Chocolate chip cookie recipe, crisp at the edges and soft inside.",
        "salad": "Greek salad recipe with feta, olives, cucumber and tomatoes.",
        "lasagna": "Classic lasagna recipe layered with ragu, bechamel and pasta sheets.",
        "omelette": "How to cook a French omelette recipe in a hot buttered pan.",
        "granola": "Homemade granola recipe with oats, honey, nuts and dried fruit.",
        "chili": "Beef chili recipe simmered with beans, cumin and smoked paprika.",
        "muffins": "Blueberry muffin recipe for a quick breakfast bake.",
        "paella": "Seafood paella recipe with saffron rice, prawns and mussels.",
        "brownies": "Fudgy brownie recipe with dark chocolate and walnuts.",
        "stew": "Hearty beef stew recipe with carrots, potatoes and red wine.",
        "hummus": "Smooth hummus recipe: chickpeas, tahini, lemon juice and garlic.",
        "focaccia": "Focaccia recipe topped with rosemary, olive oil and sea salt.",
        "ramen": "Homemade ramen recipe with a rich pork broth and soft eggs.",
        "tacos": "Fish taco recipe with lime slaw and chipotle sauce.",
        "pie": "Apple pie recipe with a flaky butter crust and cinnamon.",
        "dumplings": "Pork and cabbage dumpling recipe, pleated and pan fried.",
        "smoothie": "Green smoothie recipe with spinach, banana and almond milk.",
    }.items()
}
LOGS = {
    f"log/{code}.md": ("Warehouse log for Tuesday: pallet 14 moved to dock 3 and the forklift "
                       f"serviced. Crate {code} restocked. Invoices reconciled, shipping "
                       "manifests audited, truck schedules updated, and the recipe binder "
                       "returned to the office shelf.")
    for code in ("zorblax", "quintex", "vexmoor")
}
SECRET = {"bob/secret.md": "Bob's private notes about the launch date of the blue rocket."}


@pytest.fixture
def corpus(conn, db_url, embedder):
    """alice and bob; the recipes and logs public (alice's), bob's secret private: source -> id."""
    alice = add_user(conn, "alice@example.com", team="a")
    bob = add_user(conn, "bob@example.com", team="b")
    ids = {}
    for owner, visibility, docs in ((alice, "public", RECIPES), (alice, "public", LOGS),
                                    (bob, "private", SECRET)):
        for source, text in docs.items():
            ids[source] = str(conn.execute(
                "insert into public.documents (owner_id, team, visibility, title, content, source)"
                " values (%s, %s, %s, %s, %s, %s) returning id",
                # the folder as the title: the chunker prefixes it, and a title with the
                # code in it would hand semantic search the answer
                (owner.id, owner.team, visibility, source.split("/")[0], text, source),
            ).fetchone()["id"])
    conn.commit()
    worker = EmbeddingWorker(db_url, embedder)
    try:
        assert worker.drain().embedded == len(ids)
    finally:
        worker.close()
    return ids


def jsonl(*items):
    return ("\n".join(json.dumps(i) for i in items) + "\n").encode()


MIXED = jsonl(
    {"query": "sourdough starter bread", "relevant": ["recipes/sourdough.md"], "kind": "plain"},
    {"query": "zorblax recipe", "relevant": ["log/zorblax.md"], "kind": "code"},
    {"query": "launch date of the rocket", "relevant": ["bob/secret.md"]},
    {"query": "anything", "relevant": ["nowhere.md"]},
    {"query": "launch date of the rocket", "relevant": ["bob/secret.md", "recipes/soup.md"],
     "as": "bob@example.com"},
)


def test_a_run_scores_as_the_user_reports_unreadable_and_is_stored(conn, corpus, embedder):
    evalset = parse_set(MIXED, name="mixed.jsonl")
    prepared = runner.prepare(conn, evalset, embedder, as_user="alice@example.com")
    result = runner.run(conn, prepared, runner.Setting(k=5))
    by_line = {o.line: o for o in result.outcomes}
    assert [by_line[n].status for n in range(1, 6)] == [
        "scored", "scored", "unreadable", "unknown", "scored"]
    # alice cannot read bob's secret: reported, not a miss; bob can, and finds it first
    assert by_line[3].unreadable == ("bob/secret.md",) and by_line[3].scores == {}
    assert by_line[4].unknown == ("nowhere.md",)
    assert by_line[5].ranking[0] == corpus["bob/secret.md"]
    assert corpus["bob/secret.md"] not in {d for n in (1, 2) for d in by_line[n].ranking}
    assert by_line[1].scores["recall@1"] == 1  # semantic finds the sourdough recipe
    assert by_line[2].scores["hit@5"] == 0  # and misses the code: recipes crowd the log out
    assert result.metrics["status"] == {"scored": 3, "unreadable": 1, "unknown": 1}
    assert result.metrics["recall@5"] == pytest.approx(
        (1 + 0 + by_line[5].scores["recall@5"]) / 3)
    assert set(result.metrics["by_kind"]) == {"code", "plain"}
    assert result.metrics["latency_p95_ms"] >= result.metrics["latency_p50_ms"] > 0

    run_id = runner.store(conn, result)
    [row] = runner.history(conn)
    assert row["id"] == run_id
    assert {key: row[key] for key in ("set_name", "set_digest", "space", "mode", "k",
                                      "as_user", "queries", "scored", "full_text_weight")} == {
        # Stored under the active space's name, which `spaces activate` compares.
        "set_name": "mixed.jsonl", "set_digest": evalset.digest, "space": get_space(conn).name,
        "mode": "semantic", "k": 5, "as_user": "alice@example.com", "queries": 5, "scored": 3,
        "full_text_weight": None}
    assert row["embedding_model"] == embedder.name
    assert row["metrics"] == json.loads(json.dumps(result.metrics))


def test_hybrid_runs_pass_their_weights_to_hybrid_search(conn, corpus, embedder):
    evalset = parse_set(jsonl({"query": "zorblax recipe", "relevant": ["log/zorblax.md"]}),
                        name="code.jsonl")
    prepared = runner.prepare(conn, evalset, embedder)
    heavy = runner.run(conn, prepared, runner.Setting(
        hybrid=True, k=3, weights=HybridWeights(full_text_weight=1, semantic_weight=0.25,
                                                rrf_k=30)))
    light = runner.run(conn, prepared, runner.Setting(
        hybrid=True, k=3, weights=HybridWeights(full_text_weight=0.25, semantic_weight=1,
                                                rrf_k=30)))
    default = runner.run(conn, prepared, runner.Setting(hybrid=True, k=3))
    assert heavy.outcomes[0].ranking[0] == corpus["log/zorblax.md"]
    assert heavy.metric("ndcg@3") == 1
    assert light.metric("ndcg@3") < default.metric("ndcg@3") < 1  # equal weights: a tie
    runner.store(conn, heavy)
    row = runner.history(conn)[0]
    assert (row["mode"], row["full_text_weight"], row["semantic_weight"], row["rrf_k"]) == (
        "hybrid", 1, 0.25, 30)
    with pytest.raises(ConfigError, match="add --hybrid"):
        runner.Setting(weights=HybridWeights(1, 1, 50))


def test_tune_finds_the_planted_full_text_heavy_setting(conn, corpus, embedder):
    evalset = parse_set(jsonl(*[{"query": f"{code} recipe", "relevant": [f"log/{code}.md"]}
                                for code in ("zorblax", "quintex", "vexmoor")]),
                        name="codes.jsonl")
    prepared = runner.prepare(conn, evalset, embedder)
    result = tuning.tune(conn, prepared, k=3)
    assert result.best.ratio > 1, "full text should weigh more than semantic here"
    assert result.best.result.metric("ndcg@3") == 1
    assert result.default.metric("ndcg@3") < 0.9
    assert result.margin > 0.1
    # every semantic-heavy grid point is worse than the recommendation
    assert all(p.result.metric("ndcg@3") < 1 for p in result.points if p.ratio < 1)
    # the nearest-to-default tie-break: the smallest winning ratio, refined down to 2**0.5
    assert result.best.ratio == pytest.approx(2 ** 0.5, rel=1e-4)
    assert len(tuning.RATIOS) * len(tuning.RRF_KS) < len(result.points) < tuning.runs_needed()


def test_applied_tuning_becomes_hybrid_searchs_default_under_rls(conn, corpus, embedder):
    """tune changes nothing; set_defaults (tune --apply) does, per space; a call without
    weights then ranks as the tuned one, callers that pass weights get those, RLS holds."""
    evalset = parse_set(jsonl(*[{"query": f"{code} recipe", "relevant": [f"log/{code}.md"]}
                                for code in ("zorblax", "quintex", "vexmoor")]),
                        name="codes.jsonl")
    prepared = runner.prepare(conn, evalset, embedder)
    result = tuning.tune(conn, prepared, k=3)
    conn.commit()
    assert not get_defaults(conn).stored  # tuning alone stored nothing
    conn.commit()
    plain = runner.run(conn, prepared, runner.Setting(hybrid=True, k=3))
    assert plain.metrics["ndcg@3"] == result.default.metrics["ndcg@3"] < 0.9

    old, new = set_defaults(conn, result.best.weights, source="test")
    assert (old.stored, old.weights) == (False, LANDED)
    assert (new.stored, new.weights, new.space) == (True, result.best.weights,
                                                     get_space(conn).name)
    conn.commit()
    tuned = runner.run(conn, prepared, runner.Setting(hybrid=True, k=3))
    assert tuned.metrics["ndcg@3"] == result.best.result.metrics["ndcg@3"] == 1
    assert [o.ranking for o in tuned.outcomes] == [o.ranking for o in result.best.result.outcomes]
    # a caller that passes weights gets exactly those, not the stored ones
    explicit = runner.run(conn, prepared, runner.Setting(hybrid=True, k=3, weights=LANDED))
    assert [o.ranking for o in explicit.outcomes] == [o.ranking for o in plain.outcomes]

    # RLS is unchanged: anon and alice never see bob's private notes, bob does
    vector = embedder.embed(["launch date of the rocket"])[0]
    bob, alice = (find_user(conn, e) for e in ("bob@example.com", "alice@example.com"))
    conn.commit()
    seen = {}
    for who, claims in (("anon", None), ("alice", alice.claims()), ("bob", bob.claims())):
        rows = retrieve(conn, vector, claims=claims, model=None, k=10,
                        hybrid_text="launch date of the rocket")
        seen[who] = {r["document_id"] for r in rows}
    secret = corpus["bob/secret.md"]
    assert secret in {str(d) for d in seen["bob"]}
    assert secret not in {str(d) for d in seen["anon"] | seen["alice"]}
    # the stored defaults are private: no API role reads the table
    for role in ("anon", "authenticated"):
        with conn.transaction(force_rollback=True):
            conn.execute("select set_config('role', %s, true)", (role,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select * from suparag_private.hybrid_defaults")
    old, new = reset_defaults(conn)
    assert old.stored and not new.stored and new.weights == LANDED


def _stored_run(conn, *, space, ndcg, digest="a" * 64, mode="semantic"):
    conn.execute(
        "insert into suparag_private.eval_runs (set_name, set_digest, space, embedding_model,"
        " mode, k, queries, scored, metrics) values ('s.jsonl', %s, %s, 'm', %s, 10, 1, 1,"
        " %s::jsonb)", (digest, space, mode, json.dumps({"ndcg@10": ndcg})))
    conn.commit()


def test_the_activation_gate_refuses_a_worse_space(conn):
    _stored_run(conn, space="old", ndcg=0.70)
    _stored_run(conn, space="new", ndcg=0.64)
    with pytest.raises(ActivationRefused, match=r"0\.0600 below space 'old''s 0\.7000"):
        check_activation(conn, candidate="new", active="old")
    forced = check_activation(conn, candidate="new", active="old", force=True)
    assert forced.allowed and "forced" in forced.message
    _stored_run(conn, space="better", ndcg=0.75)
    assert check_activation(conn, candidate="better", active="old").allowed
    # a run on another set, or none at all, compares nothing
    _stored_run(conn, space="other", ndcg=0.1, digest="b" * 64)
    assert "no semantic evaluation" in check_activation(
        conn, candidate="other", active="old").message
    assert "no evaluation" in check_activation(conn, candidate="never", active="old").message


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_the_runs_table_is_closed_to_api_roles(conn, role):
    with conn.transaction(force_rollback=True):
        conn.execute("select set_config('role', %s, true)", (role,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from suparag_private.eval_runs")


def test_cli_run_history_and_tune_with_plot(tmp_path, db_url, corpus):
    cli = DbCli(tmp_path, db_url)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(MIXED)
    ran = cli("eval", "run", str(path), "--as", "alice@example.com", "-k", "5", "--json")
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["mode"] == "semantic" and out["metrics"]["status"]["unreadable"] == 1
    table = cli("eval", "run", str(path), "--as", "alice@example.com", "--hybrid",
                "--full-text-weight", "2")
    assert table.returncode == 0, table.stderr
    assert "line 3 (not scored): cannot read bob/secret.md" in table.stdout
    history = json.loads(cli("eval", "history", "--json").stdout)
    assert [(h["mode"], h["full_text_weight"], h["semantic_weight"], h["rrf_k"])
            for h in history] == [("hybrid", 2.0, 1.0, 50), ("semantic", None, None, None)]
    assert history[1]["id"] == out["run_id"]
    refused = cli("eval", "run", str(path), "--rrf-k", "10", check=False)
    assert refused.returncode == 1 and "add --hybrid" in refused.stderr

    codes = tmp_path / "codes.jsonl"
    codes.write_bytes(jsonl({"query": "zorblax recipe", "relevant": ["log/zorblax.md"]}))
    plot = tmp_path / "tune.png"
    tuned = cli("eval", "tune", str(codes), "-k", "3", "--plot", str(plot))
    assert tuned.returncode == 0, tuned.stderr
    assert "Recommended: full_text_weight=1" in tuned.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads(cli("eval", "history", "--json").stdout)) == 2  # tune stores nothing
    assert json.loads(cli("eval", "defaults", "show", "--json").stdout)["stored"] is False
    applied = cli("eval", "tune", str(codes), "-k", "3", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert ("hybrid_search defaults in all-MiniLM-L6-v2: full_text_weight=1 semantic_weight=1"
            " rrf_k=50 (built in) -> full_text_weight=1 semantic_weight=0.") in applied.stdout
    shown = json.loads(cli("eval", "defaults", "show", "--json").stdout)
    assert shown["stored"] and shown["full_text_weight"] == 1 and "codes.jsonl" in shown["source"]
    changed = json.loads(cli("eval", "defaults", "set", "--full-text-weight", "1",
                             "--semantic-weight", "1", "--rrf-k", "60", "--json").stdout)
    assert changed["old"]["semantic_weight"] < 1 and changed["new"]["rrf_k"] == 60
