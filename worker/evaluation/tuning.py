"""`suparag eval tune`: search hybrid_search's fusion weights against an evaluation set.

Reciprocal rank fusion scores a chunk `full_text_weight / (rrf_k + full-text rank)
+ semantic_weight / (rrf_k + semantic rank)`. Multiplying both weights by the
same number changes no ranking, so the search is over the ratio
full_text_weight / semantic_weight (the larger weight held at 1) and rrf_k: a
grid (RATIOS x RRF_KS), then one refinement around the best point (half a
grid step each way in the ratio, midway to the neighbouring rrf_k values).

The best setting is the highest nDCG@k; ties go to higher recall@k, then to
the setting nearest hybrid_search's default (ratio 1, rrf_k 50), so a flat
landscape recommends no change. The margin is over a run with the function's
own defaults (no weights passed), whatever they are in the database.

Tuning changes nothing: the recommendation becomes hybrid_search's stored
default only through worker.evaluation.defaults.set_defaults (`suparag eval
tune --apply`, `suparag eval defaults set`), which prints old -> new.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from worker.errors import ConfigError
from worker.evaluation.runner import Prepared, RunResult, Setting, run
from worker.search import HybridWeights

RATIOS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
RRF_KS = (5, 20, 50, 100)
DEFAULT_RATIO, DEFAULT_RRF_K = 1.0, 50


def weights_for(ratio: float, rrf_k: int) -> HybridWeights:
    """The weights with full_text / semantic = ratio, the larger one 1."""
    if ratio >= 1:
        return HybridWeights(full_text_weight=1.0, semantic_weight=round(1 / ratio, 6),
                             rrf_k=rrf_k)
    return HybridWeights(full_text_weight=round(ratio, 6), semantic_weight=1.0, rrf_k=rrf_k)


@dataclass(frozen=True)
class Point:
    ratio: float
    rrf_k: int
    result: RunResult

    @property
    def weights(self) -> HybridWeights:
        return weights_for(self.ratio, self.rrf_k)


@dataclass(frozen=True)
class Tuning:
    k: int
    default: RunResult  # hybrid_search with its own defaults
    points: tuple[Point, ...]  # grid then refinement, in the order run
    best: Point

    @property
    def metric(self) -> str:
        return f"ndcg@{self.k}"

    @property
    def margin(self) -> float:
        return self.best.result.metric(self.metric) - self.default.metric(self.metric)


def _key(point: Point, k: int) -> tuple[float, float, float, float]:
    return (round(point.result.metric(f"ndcg@{k}"), 9),
            round(point.result.metric(f"recall@{k}"), 9),
            -abs(math.log2(point.ratio / DEFAULT_RATIO)),
            -abs(math.log2(point.rrf_k / DEFAULT_RRF_K)))


def refinements(ratio: float, rrf_k: int, *, ks: Sequence[int] = RRF_KS) -> list[tuple[float, int]]:
    """The points around (ratio, rrf_k) the second pass tries."""
    ratios = [ratio * 2 ** -0.5, ratio, ratio * 2 ** 0.5]
    ordered = sorted(set(ks) | {rrf_k})
    at = ordered.index(rrf_k)
    neighbours = [rrf_k]
    if at > 0:
        neighbours.append(round((ordered[at - 1] + rrf_k) / 2))
    if at < len(ordered) - 1:
        neighbours.append(round((ordered[at + 1] + rrf_k) / 2))
    return [(round(r, 6), kk) for r in ratios for kk in sorted(set(neighbours))]


def tune(conn: psycopg.Connection[Any], prepared: Prepared, *, k: int = 10,
         ratios: Sequence[float] = RATIOS, rrf_ks: Sequence[int] = RRF_KS,
         refine: bool = True, progress: Callable[[], None] | None = None) -> Tuning:
    """Run the grid (then a refinement) and pick the best setting by nDCG@k."""
    default = run(conn, prepared, Setting(hybrid=True, k=k), progress=progress)
    done: dict[tuple[float, int], Point] = {}

    def measure(ratio: float, rrf_k: int) -> None:
        if (ratio, rrf_k) not in done:
            setting = Setting(hybrid=True, weights=weights_for(ratio, rrf_k), k=k)
            done[(ratio, rrf_k)] = Point(ratio, rrf_k,
                                         run(conn, prepared, setting, progress=progress))

    for rrf_k in rrf_ks:
        for ratio in ratios:
            measure(ratio, rrf_k)
    best = max(done.values(), key=lambda p: _key(p, k))
    if refine:
        for ratio, rrf_k in refinements(best.ratio, best.rrf_k, ks=rrf_ks):
            measure(ratio, rrf_k)
        best = max(done.values(), key=lambda p: _key(p, k))
    return Tuning(k=k, default=default, points=tuple(done.values()), best=best)


def runs_needed(*, ratios: Sequence[float] = RATIOS, rrf_ks: Sequence[int] = RRF_KS,
                refine: bool = True) -> int:
    """At most how many runs `tune` makes (for a progress bar): default + grid + 9."""
    return 1 + len(ratios) * len(rrf_ks) + (9 if refine else 0)


def plot(tuning: Tuning, path: str) -> None:
    """nDCG@k against the weight ratio, one line per rrf_k, the default marked (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: pip install 'suparag[eval]'") from exc
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for rrf_k in sorted({p.rrf_k for p in tuning.points}):
        line = sorted((p.ratio, p.result.metric(tuning.metric)) for p in tuning.points
                      if p.rrf_k == rrf_k)
        axes.plot([x for x, _ in line], [y for _, y in line], marker="o", label=f"rrf_k={rrf_k}")
    axes.axhline(tuning.default.metric(tuning.metric), color="grey", linestyle="--",
                 label="hybrid_search defaults")
    axes.scatter([tuning.best.ratio], [tuning.best.result.metric(tuning.metric)], s=160,
                 facecolors="none", edgecolors="black", label="recommended", zorder=3)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("full_text_weight / semantic_weight")
    axes.set_ylabel(tuning.metric)
    axes.set_title(f"{tuning.best.result.evalset.name}: {tuning.metric} by fusion weights")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
