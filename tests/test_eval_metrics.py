"""Evaluation metrics against hand-computed cases, and tie-awareness against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.evaluation.metrics import (
    documents_of,
    hit_at,
    mean,
    ndcg_at,
    percentile,
    recall_at,
    reciprocal_rank,
    score_query,
    tie_groups,
)

L2 = math.log2


def test_without_ties_the_textbook_values():
    ranking = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]
    grades = {"b": 1, "d": 1, "z": 1}  # z was never returned
    assert recall_at(ranking, grades, 1) == 0
    assert recall_at(ranking, grades, 2) == pytest.approx(1 / 3)
    assert recall_at(ranking, grades, 10) == pytest.approx(2 / 3)
    assert reciprocal_rank(ranking, grades, 10) == pytest.approx(1 / 2)
    assert reciprocal_rank(ranking, grades, 1) == 0
    assert hit_at(ranking, grades, 1) == 0
    assert hit_at(ranking, grades, 2) == 1
    dcg = 1 / L2(3) + 1 / L2(5)
    idcg = 1 + 1 / L2(3) + 1 / L2(4)
    assert ndcg_at(ranking, grades, 10) == pytest.approx(dcg / idcg)


def test_ties_are_scored_as_the_mean_over_their_orders():
    # b and c tie at 0.5: c is second or third with equal chance
    ranking = [("a", 0.9), ("b", 0.5), ("c", 0.5)]
    grades = {"c": 1}
    assert tie_groups(ranking) == [["a"], ["b", "c"]]
    assert recall_at(ranking, grades, 2) == pytest.approx(0.5)
    assert hit_at(ranking, grades, 2) == pytest.approx(0.5)
    assert reciprocal_rank(ranking, grades, 10) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert ndcg_at(ranking, grades, 10) == pytest.approx((1 / L2(3) + 1 / L2(4)) / 2)
    # three tied, two relevant, one slot: hit 1 - C(1,1)/C(3,1); first relevant at 1 w.p. 2/3
    tied = [("x", 1.0), ("y", 1.0), ("z", 1.0)]
    assert hit_at(tied, {"x": 1, "z": 1}, 1) == pytest.approx(2 / 3)
    assert reciprocal_rank(tied, {"x": 1, "z": 1}, 10) == pytest.approx(2 / 3 + 1 / 3 / 2)


def test_graded_relevance_uses_exponential_gain():
    ranking = [("a", 0.9), ("b", 0.8)]
    grades = {"a": 1, "b": 3}
    dcg = 1 + 7 / L2(3)
    idcg = 7 + 1 / L2(3)
    assert ndcg_at(ranking, grades, 10) == pytest.approx(dcg / idcg)
    # grades do not change recall or reciprocal rank
    assert recall_at(ranking, grades, 1) == pytest.approx(1 / 2)
    assert reciprocal_rank(ranking, grades, 10) == 1


def test_no_relevant_documents_is_undefined_and_left_out_of_means():
    ranking = [("a", 0.9)]
    scores = score_query(ranking, {}, 10)
    assert set(scores) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "hit@10"}
    assert all(value is None for value in scores.values())
    assert mean([None, 0.5, 1.0]) == pytest.approx(0.75)
    assert mean([None]) is None


def test_empty_ranking_scores_zero():
    assert score_query([], {"a": 1}, 10) == {
        "recall@1": 0, "recall@5": 0, "recall@10": 0, "mrr@10": 0, "ndcg@10": 0, "hit@10": 0}


def test_chunks_become_distinct_documents_at_their_best_place():
    rows = [("d1", 0.9), ("d2", 0.8), ("d1", 0.7), ("d3", 0.6)]
    assert documents_of(rows) == [("d1", 0.9), ("d2", 0.8), ("d3", 0.6)]


def test_percentile_interpolates_like_numpy():
    assert percentile([10.0, 20.0, 30.0, 40.0], 0.5) == pytest.approx(25.0)
    assert percentile([10.0, 20.0, 30.0, 40.0], 0.95) == pytest.approx(38.5)
    assert percentile([], 0.5) is None


def _brute(ranking, grades, k, metric):
    """The metric averaged over every order of every tie group."""
    groups = tie_groups(ranking)
    values = []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        flat = [key for order in orders for key in order]
        distinct = [(key, -i) for i, key in enumerate(flat)]  # no ties left
        values.append(metric(distinct, grades, k))
    return sum(values) / len(values)


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=7),
    relevant=st.lists(st.integers(min_value=0, max_value=3), min_size=7, max_size=7),
    extra=st.integers(min_value=0, max_value=2),
    k=st.integers(min_value=1, max_value=8),
)
def test_tie_aware_metrics_equal_the_mean_over_all_orders(scores, relevant, extra, k):
    ranking = sorted(((f"d{i}", float(s)) for i, s in enumerate(scores)),
                     key=lambda item: -item[1])
    grades = {f"d{i}": g for i, g in enumerate(relevant[: len(scores)]) if g}
    grades.update({f"missing{i}": 1 for i in range(extra)})
    if not grades:
        grades = {"missing": 2}
    for metric in (recall_at, hit_at, reciprocal_rank, ndcg_at):
        assert metric(ranking, grades, k) == pytest.approx(_brute(ranking, grades, k, metric))
