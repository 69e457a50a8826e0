"""hybrid_search's stored default weights, per embedding space (issue 11).

`hybrid_search` called without full_text_weight, semantic_weight or rrf_k
reads them from `suparag_private.hybrid_defaults` for the space it searches
(migration 20261202090000), else 1, 1, 50. Callers that pass weights get
exactly those. The stored row is changed only here, by an explicit command
(`suparag eval defaults set`, `suparag eval tune --apply`) that reports old
and new, so a tuning change is a reviewable act, never a side effect of
`tune`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from worker.errors import ConfigError
from worker.search import HybridWeights
from worker.spaces import get_space

#: What hybrid_search uses for a space with nothing stored (its landed defaults).
LANDED = HybridWeights(full_text_weight=1.0, semantic_weight=1.0, rrf_k=50)


@dataclass(frozen=True)
class Defaults:
    """A space's hybrid_search defaults, and whether (and by what) they were stored."""

    space: str
    weights: HybridWeights
    stored: bool
    source: str | None = None
    updated_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        w = self.weights
        return {"space": self.space, "full_text_weight": w.full_text_weight,
                "semantic_weight": w.semantic_weight, "rrf_k": w.rrf_k, "stored": self.stored,
                "source": self.source,
                "updated_at": None if self.updated_at is None else self.updated_at.isoformat()}

    def text(self) -> str:
        w = self.weights
        return (f"full_text_weight={w.full_text_weight:g} semantic_weight="
                f"{w.semantic_weight:g} rrf_k={w.rrf_k}"
                + ("" if self.stored else " (built in)"))


def get_defaults(conn: psycopg.Connection[Any], space: str | None = None) -> Defaults:
    """The defaults hybrid_search uses in space (None: the active one)."""
    chosen = get_space(conn, space)
    row = conn.execute(
        "select full_text_weight, semantic_weight, rrf_k, source, updated_at"
        " from suparag_private.hybrid_defaults where space_id = %s", (chosen.id,)).fetchone()
    if row is None:
        return Defaults(space=chosen.name, weights=LANDED, stored=False)
    return Defaults(space=chosen.name,
                    weights=HybridWeights(full_text_weight=row["full_text_weight"],
                                          semantic_weight=row["semantic_weight"],
                                          rrf_k=row["rrf_k"]),
                    stored=True, source=row["source"], updated_at=row["updated_at"])


def set_defaults(conn: psycopg.Connection[Any], weights: HybridWeights, *,
                 space: str | None = None, source: str = "suparag eval defaults set"
                 ) -> tuple[Defaults, Defaults]:
    """Store weights as space's hybrid_search defaults, in one transaction: (old, new)."""
    if weights.full_text_weight < 0 or weights.semantic_weight < 0 or weights.rrf_k < 1:
        raise ConfigError("weights must be >= 0 and rrf_k >= 1")
    if weights.full_text_weight == 0 and weights.semantic_weight == 0:
        raise ConfigError("both weights 0 would score every chunk 0: give one a weight")
    with conn.transaction():
        old = get_defaults(conn, space)
        conn.execute(
            "insert into suparag_private.hybrid_defaults"
            " (space_id, full_text_weight, semantic_weight, rrf_k, source)"
            " select id, %s, %s, %s, %s from suparag_private.embedding_spaces where name = %s"
            " on conflict (space_id) do update set full_text_weight = excluded.full_text_weight,"
            " semantic_weight = excluded.semantic_weight, rrf_k = excluded.rrf_k,"
            " source = excluded.source, updated_at = now()",
            (weights.full_text_weight, weights.semantic_weight, weights.rrf_k, source,
             old.space))
        new = get_defaults(conn, old.space)
    return old, new


def reset_defaults(conn: psycopg.Connection[Any], space: str | None = None
                   ) -> tuple[Defaults, Defaults]:
    """Forget space's stored defaults (hybrid_search goes back to 1, 1, 50): (old, new)."""
    with conn.transaction():
        old = get_defaults(conn, space)
        conn.execute("delete from suparag_private.hybrid_defaults where space_id ="
                     " (select id from suparag_private.embedding_spaces where name = %s)",
                     (old.space,))
        new = get_defaults(conn, old.space)
    return old, new
