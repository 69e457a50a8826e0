"""The evaluation gate for `suparag spaces activate` (issue 11).

A space may not become the active one if its latest evaluation scores below
the active space's latest evaluation of the same set (same set digest, mode
and k), unless forced. Nothing to compare (either space never evaluated on
that set) lets the activation through and says so: the gate guards against a
measured regression, it does not demand a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from worker.errors import ActivationRefused


@dataclass(frozen=True)
class GateResult:
    allowed: bool
    message: str
    candidate_score: float | None = None
    active_score: float | None = None


def _label(space: str | None) -> str:
    return f"space {space!r}" if space is not None else "the default space"


def check_activation(conn: psycopg.Connection[Any], *, candidate: str | None,
                     active: str | None, force: bool = False) -> GateResult:
    """Compare the candidate's latest run with the active space's on the same set.

    Raises ActivationRefused when the candidate scores lower (nDCG@k) and not
    force; returns what was compared otherwise.
    """
    with conn.transaction():
        latest = conn.execute(
            "select set_name, set_digest, mode, k, metrics from suparag_private.eval_runs"
            " where space is not distinct from %s order by created_at desc, id desc limit 1",
            (candidate,)).fetchone()
        if latest is None:
            return GateResult(True, f"{_label(candidate)} has no evaluation: nothing to compare")
        rival = conn.execute(
            "select metrics from suparag_private.eval_runs where space is not distinct from %s"
            " and set_digest = %s and mode = %s and k = %s"
            " order by created_at desc, id desc limit 1",
            (active, latest["set_digest"], latest["mode"], latest["k"])).fetchone()
    metric = f"ndcg@{latest['k']}"
    mine = latest["metrics"].get(metric)
    if rival is None or mine is None or rival["metrics"].get(metric) is None:
        return GateResult(True, f"{_label(active)} has no {latest['mode']} evaluation on "
                          f"{latest['set_name']} to compare with")
    theirs = float(rival["metrics"][metric])
    mine = float(mine)
    where = f"{metric} on {latest['set_name']} ({latest['mode']})"
    if mine >= theirs:
        return GateResult(True, f"{_label(candidate)} scores {mine:.4f} {where}, "
                          f"active {theirs:.4f}", mine, theirs)
    message = (f"{_label(candidate)} scores {mine:.4f} {where}, {theirs - mine:.4f} below "
               f"{_label(active)}'s {theirs:.4f}")
    if not force:
        raise ActivationRefused(f"{message}: improve it and run `suparag eval run` again, "
                                "or pass --force")
    return GateResult(True, f"{message} (forced)", mine, theirs)
