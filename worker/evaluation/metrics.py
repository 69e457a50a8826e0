"""Ranking metrics for one query, pure functions, tie-aware.

A ranking is the documents a search returned, best first, each with its score.
Documents with equal scores form a tie group whose order the database chose
arbitrarily (by id, by plan), so every metric here is its expected value over
all orders of each group (McSherry and Najork, "Computing information retrieval
performance measures efficiently in the presence of tied scores", ECIR 2008).
Without ties these are the textbook definitions.

`grades` maps each relevant document to its grade (1 = relevant, higher =
more relevant). Recall, hit rate and reciprocal rank treat every grade alike;
nDCG uses the gain 2**grade - 1 (Burges et al. 2005, as trec_eval's gdeval
does). With no relevant documents a metric is undefined: the functions return
None and `mean` leaves such queries out (trec_eval skips them the same way).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

Ranking = Sequence[tuple[str, float]]
Grades = Mapping[str, int]


def tie_groups(ranking: Ranking) -> list[list[str]]:
    """The ranking as consecutive groups of equal score (each group in returned order)."""
    groups: list[list[str]] = []
    last: float | None = None
    for key, score in ranking:
        if groups and score == last:
            groups[-1].append(key)
        else:
            groups.append([key])
        last = score
    return groups


def _spans(ranking: Ranking) -> Iterable[tuple[int, list[str]]]:
    """(0-based start position, group) for each tie group."""
    start = 0
    for group in tie_groups(ranking):
        yield start, group
        start += len(group)


def recall_at(ranking: Ranking, grades: Grades, k: int) -> float | None:
    """Expected share of the relevant documents found in the top k."""
    if not grades:
        return None
    found = 0.0
    for start, group in _spans(ranking):
        inside = min(max(k - start, 0), len(group))
        relevant = sum(1 for key in group if key in grades)
        found += relevant * inside / len(group)
    return found / len(grades)


def hit_at(ranking: Ranking, grades: Grades, k: int) -> float | None:
    """Probability that at least one relevant document is in the top k."""
    if not grades:
        return None
    for start, group in _spans(ranking):
        inside = min(max(k - start, 0), len(group))
        if inside == 0:
            break
        relevant = sum(1 for key in group if key in grades)
        if relevant:
            # none relevant among `inside` slots drawn from the group
            return 1.0 - math.comb(len(group) - relevant, inside) / math.comb(len(group), inside)
    return 0.0


def reciprocal_rank(ranking: Ranking, grades: Grades, k: int) -> float | None:
    """Expected 1/rank of the first relevant document, 0 when it is below k (MRR@k's term)."""
    if not grades:
        return None
    for start, group in _spans(ranking):
        if start >= k:
            break
        n, r = len(group), sum(1 for key in group if key in grades)
        if not r:
            continue
        total = math.comb(n, r)
        # P(first relevant at offset j) = C(n-1-j, r-1) / C(n, r)
        return sum(math.comb(n - 1 - j, r - 1) / total / (start + j + 1)
                   for j in range(n - r + 1) if start + j < k)
    return 0.0


def gain(grade: int) -> float:
    """The gain of a document of this grade in DCG: 2**grade - 1."""
    return float(2 ** grade - 1)


def _discount(position: int) -> float:
    return 1.0 / math.log2(position + 2)


def ndcg_at(ranking: Ranking, grades: Grades, k: int) -> float | None:
    """Expected DCG of the top k over the DCG of the ideal ranking of the relevant documents."""
    if not grades:
        return None
    dcg = 0.0
    for start, group in _spans(ranking):
        if start >= k:
            break
        # every order of the group is equally likely: each slot holds the mean gain
        mean_gain = sum(gain(grades.get(key, 0)) for key in group) / len(group)
        dcg += mean_gain * sum(_discount(p) for p in range(start, min(start + len(group), k)))
    ideal = sum(gain(g) * _discount(p)
                for p, g in enumerate(sorted(grades.values(), reverse=True)[:k]))
    return dcg / ideal


def documents_of(rows: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Chunk hits (document key, score), best first, as a ranking of distinct documents:
    each document at its best chunk's place and score."""
    seen: set[str] = set()
    ranking: list[tuple[str, float]] = []
    for key, score in rows:
        if key not in seen:
            seen.add(key)
            ranking.append((key, score))
    return ranking


def score_query(ranking: Ranking, grades: Grades, k: int) -> dict[str, float | None]:
    """Every metric a run reports for one query: recall@1/5/k, MRR@k, nDCG@k, hit@k."""
    scores: dict[str, float | None] = {}
    for cut in sorted({1, 5, k}):
        scores[f"recall@{cut}"] = recall_at(ranking, grades, cut)
    scores[f"mrr@{k}"] = reciprocal_rank(ranking, grades, k)
    scores[f"ndcg@{k}"] = ndcg_at(ranking, grades, k)
    scores[f"hit@{k}"] = hit_at(ranking, grades, k)
    return scores


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the defined values (None when there are none)."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def percentile(values: Sequence[float], share: float) -> float | None:
    """The share-th percentile (0..1) by linear interpolation, as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
