"""Resource embeds: the `relation(columns)` items of `select=` (PostgREST's term; no
vector embeddings here), each a correlated subquery run as the caller, so RLS bounds
the embedded rows as it bounds the parent's."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from worker.devstack.api.rest import catalog, grammar

#: The alias of the requested table in a read; embedded tables are OUTER_1, OUTER_2, ...
OUTER = "pgrst_t"
#: How deep resource embeds may nest (`a(b(c(...)))`).
MAX_EMBED_DEPTH = 8


class ResourceEmbeds:
    """Builds the resource embeds of one parent table (its `build` is a
    `grammar.ResourceEmbed`), following the foreign key between the two either way."""

    def __init__(self, conn: psycopg.Connection[Any], table: str, alias: str,
                 depth: int = 0) -> None:
        self.conn, self.table, self.alias, self.depth = conn, table, alias, depth

    def build(self, relation: str, inner: str) -> sql.Composable:
        """The SQL of `relation(inner)`: an object (to-one) or an array (to-many)."""
        if self.depth >= MAX_EMBED_DEPTH:
            raise grammar.parse_error("embedded resources nest too deeply",
                                      f"at most {MAX_EMBED_DEPTH} levels")
        link = catalog.relationship(self.conn, self.table, relation)
        alias = f"{OUTER}_{self.depth + 1}"
        child = ResourceEmbeds(self.conn, relation, alias, self.depth + 1)
        joined = sql.SQL(" and ").join(
            sql.SQL("{}.{} = {}.{}").format(sql.Identifier(alias), sql.Identifier(theirs),
                                            sql.Identifier(self.alias), sql.Identifier(mine))
            for mine, theirs in link.pairs)
        rows = sql.SQL("select {} from {} {} where {}").format(
            grammar.select_list(inner, child.build), sql.Identifier(catalog.SCHEMA, relation),
            sql.Identifier(alias), joined)
        if link.to_one:
            return sql.SQL("(select to_json(_e) from ({} limit 1) _e)").format(rows)
        return sql.SQL("(select coalesce(json_agg(_e), '[]') from ({}) _e)").format(rows)
