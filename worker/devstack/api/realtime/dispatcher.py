"""The Realtime dispatcher: a thread that reads captured changes and delivers each to
the channels whose bindings match, checking RLS as each subscriber.

Changes come from the capture trigger of sql/supabase_standin.sql (there is no
WAL decoder here): the thread LISTENs on `suparag_realtime`, reads the rows of
transactions committed since its last snapshot, and delivers them as Supabase's
`realtime.apply_rls` does (see the package docstring for the rules). Messages
inserted into `realtime.messages` (`realtime.send`) come the same way, in commit
order, and go to the hub's broadcast without any per-subscriber query.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any, Protocol

import psycopg
from psycopg import sql

from worker.backoff import backoff_seconds
from worker.db import as_request, connect
from worker.devstack.api.realtime import broadcast
from worker.devstack.api.realtime.bindings import OPERATORS, Binding, Filter
from worker.devstack.api.realtime.channels import Channel, Stats

log = logging.getLogger("suparag.realtime")

CHANNEL = "suparag_realtime"
#: Captured inserts into this table are broadcasts, not row changes.
MESSAGES = ("realtime", "messages")
#: How long a change stays after every reader's snapshot has passed it.
RETENTION_SECONDS = 60.0
#: A running server renews its consumer row this often (it is valid for 3x as long).
ALIVE_SECONDS = 20.0


class Subscribers(Protocol):
    """What the dispatcher needs of the hub: the joined channels, and a way to end one."""

    def channels(self) -> Sequence[Channel]: ...

    def shut_down(self, channel: Channel, message: str) -> None: ...

    def broadcast(self, topic: str, private: bool, payload: Mapping[str, Any]) -> int: ...


class Dispatcher(threading.Thread):
    """LISTENs for captured changes and delivers them to matching channels."""

    def __init__(self, db_url: str, subscribers: Subscribers, stats: Stats | None = None
                 ) -> None:
        super().__init__(name="suparag-realtime-dispatch", daemon=True)
        self.db_url, self.subscribers = db_url, subscribers
        self.stats = stats or Stats()
        self.consumer = f"realtime-{uuid.uuid4()}"
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._snapshot: str | None = None

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                with connect(self.db_url, autocommit=True) as listen, \
                        connect(self.db_url, autocommit=True) as work:
                    listen.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
                    self._renew(work)
                    if self._snapshot is None:
                        self._snapshot = self._current_snapshot(work)
                    self.ready.set()
                    failures = 0
                    renewed = time.monotonic()
                    self._deliver_new(work)  # anything committed while reconnecting
                    while not self.stopping.is_set():
                        woken = any(True for _ in listen.notifies(timeout=0.5, stop_after=1))
                        if time.monotonic() - renewed > ALIVE_SECONDS:
                            self._renew(work)
                            renewed = time.monotonic()
                        if woken:
                            self._deliver_new(work)
                    self._retire(work)
            except Exception as exc:  # keep serving: a restart of the database is not fatal
                if not self.ready.is_set():
                    self.error = exc
                    self.ready.set()
                    return
                failures += 1
                delay = backoff_seconds(failures, base=0.5, cap=10.0)
                log.warning("realtime: database connection lost (%s); retrying in %.1f s",
                            exc, delay)
                self.stopping.wait(delay)

    def stop(self) -> None:
        self.stopping.set()

    # -- bookkeeping ------------------------------------------------------------------

    def _renew(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        with conn.transaction():
            conn.execute(
                "insert into suparag_realtime.consumers (id, alive_until)"
                " values (%s, now() + make_interval(secs => %s))"
                " on conflict (id) do update set alive_until = excluded.alive_until",
                (self.consumer, ALIVE_SECONDS * 3))
            if self._snapshot is not None:
                conn.execute(
                    "delete from suparag_realtime.changes"
                    " where xid < pg_snapshot_xmin(%s::pg_snapshot)"
                    " and captured_at < now() - make_interval(secs => %s)",
                    (self._snapshot, RETENTION_SECONDS))
                # Supabase keeps broadcast messages three days (daily partitions).
                conn.execute("delete from realtime.messages"
                             " where inserted_at < now() - interval '3 days'")

    def _retire(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        with conn.transaction():
            conn.execute("delete from suparag_realtime.consumers where id = %s",
                         (self.consumer,))

    @staticmethod
    def _current_snapshot(conn: psycopg.Connection[dict[str, Any]]) -> str:
        with conn.transaction():
            row = conn.execute("select pg_current_snapshot()::text as snap").fetchone()
        assert row is not None
        return str(row["snap"])

    # -- delivery ---------------------------------------------------------------------

    def _deliver_new(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        """Deliver the changes of transactions committed since the last snapshot."""
        with conn.transaction():
            # One snapshot for both reads: what it shows now is what the next read skips.
            conn.execute("set transaction isolation level repeatable read")
            row = conn.execute("select pg_current_snapshot()::text as snap").fetchone()
            assert row is not None
            changes = conn.execute(
                "select id, schema_name, table_name, op, record, old_record, captured_at"
                " from suparag_realtime.changes"
                " where xid >= pg_snapshot_xmin(%(prev)s::pg_snapshot)"
                " and not pg_visible_in_snapshot(xid, %(prev)s::pg_snapshot)"
                " order by id", {"prev": self._snapshot}).fetchall()
        self._snapshot = str(row["snap"])
        for change in changes:
            if (change["schema_name"], change["table_name"]) == MESSAGES:
                # A broadcast: authorized at join, so delivering it costs no query.
                sent = broadcast.from_row(change["record"] or {})
                if sent is not None:
                    self.subscribers.broadcast(*sent)
                continue
            for channel in self.subscribers.channels():
                try:
                    self._deliver(conn, change, channel)
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    log.warning("realtime: change %s not delivered to %s: %s", change["id"],
                                channel.topic, exc)

    def _deliver(self, conn: psycopg.Connection[dict[str, Any]], change: Mapping[str, Any],
                 channel: Channel) -> None:
        schema, table, op = change["schema_name"], change["table_name"], change["op"]
        bindings = [b for b in channel.bindings if b.wants(schema, table, op)]
        if not bindings:
            return
        exp = channel.claims.get("exp")
        if isinstance(exp, (int, float)) and exp < time.time():
            self.subscribers.shut_down(channel, "Token has expired")
            return
        data = self._visible(conn, change, channel.claims, bindings)
        if data is not None:
            payload, ids = data
            channel.socket.send(channel.topic, "postgres_changes", {"ids": ids, "data": payload})
            self.stats.sent("postgres_changes")

    def _visible(self, conn: psycopg.Connection[dict[str, Any]], change: Mapping[str, Any],
                 claims: Mapping[str, Any], bindings: list[Binding]
                 ) -> tuple[dict[str, Any], list[int]] | None:
        """The payload and matching binding ids for this subscriber, or None."""
        schema, table, op = change["schema_name"], change["table_name"], change["op"]
        target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row_of = sql.SQL("(jsonb_populate_record(null::{}, %(rec)s::jsonb))").format(target)
        record = change["record"] if op != "DELETE" else None
        old = change["old_record"] or {}
        compared = record if record is not None else old
        self.stats.queried("postgres_changes", 2)  # the request context, the columns
        with as_request(conn, claims) as tx:
            columns = tx.execute(
                "select a.attname as name, t.typname as type,"
                " has_column_privilege(a.attrelid, a.attnum, 'SELECT') as selectable,"
                " coalesce(a.attnum = any (i.indkey), false) as pkey, c.relrowsecurity as rls"
                " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " join pg_attribute a on a.attrelid = c.oid"
                " join pg_type t on t.oid = a.atttypid"
                " left join pg_index i on i.indrelid = c.oid and i.indisprimary"
                " where n.nspname = %s and c.relname = %s and a.attnum > 0"
                " and not a.attisdropped order by a.attnum", (schema, table)).fetchall()
            if not columns:
                return None
            rls = bool(columns[0]["rls"])
            readable = [c for c in columns if c["selectable"]]
            keys = [c["name"] for c in columns if c["pkey"]]
            if op != "DELETE":
                # Upstream: no primary key, or a key the role may not select: not sent.
                if not keys or not all(c["selectable"] for c in columns if c["pkey"]):
                    return None
                if rls:
                    match = sql.SQL(" and ").join(
                        sql.SQL("t.{col} = {row}.{col}").format(col=sql.Identifier(k), row=row_of)
                        for k in keys)
                    self.stats.queried("postgres_changes")
                    with tx.transaction():  # a savepoint: a refusal must not end the request
                        try:
                            found = tx.execute(
                                sql.SQL("select exists (select 1 from {} t where {}) as ok")
                                .format(target, match), {"rec": json.dumps(record)}).fetchone()
                        except psycopg.errors.InsufficientPrivilege:
                            return None
                    if not (found and found["ok"]):
                        return None
            filtered = [b for b in bindings if b.filter is not None]
            self.stats.queried("postgres_changes", len(filtered))
            ids = [b.id for b in bindings
                   if b.filter is None or self._passes(tx, target, b.filter, compared)]
        if not ids:
            return None
        names = {c["name"] for c in readable}
        if op == "DELETE" and rls:
            names &= set(keys)  # upstream: with RLS, deletes cannot be secured beyond the key
        committed = change["captured_at"].astimezone(UTC)
        payload: dict[str, Any] = {
            "schema": schema, "table": table, "type": op,
            "commit_timestamp": committed.strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{committed.microsecond // 1000:03d}Z",
            "columns": [{"name": c["name"], "type": c["type"]} for c in readable],
            "errors": None,
        }
        if record is not None:
            payload["record"] = {k: v for k, v in record.items() if k in names}
        if op != "INSERT":
            payload["old_record"] = {k: v for k, v in old.items() if k in names}
        return payload, sorted(set(ids))

    @staticmethod
    def _passes(tx: psycopg.Connection[Any], target: sql.Composable, flt: Filter,
                record: Mapping[str, Any]) -> bool:
        """Does the record pass the filter, compared in the column's type?"""
        if flt.column not in record:
            return False
        column = sql.Identifier(flt.column)
        value_of = sql.SQL("(jsonb_populate_record(null::{}, jsonb_build_object({}, {}::text))).{}")
        values = [value_of.format(target, sql.Literal(flt.column), sql.Literal(v), column)
                  for v in flt.values]
        left = sql.SQL("(jsonb_populate_record(null::{}, %(rec)s::jsonb)).{}").format(
            target, column)
        if flt.op == "in":
            test = sql.SQL("{} = any (array[{}])").format(left, sql.SQL(", ").join(values))
        else:
            test = sql.SQL("{} {} {}").format(left, sql.SQL(OPERATORS[flt.op]), values[0])
        with tx.transaction():
            try:
                row = tx.execute(sql.SQL("select coalesce({}, false) as ok").format(test),
                                 {"rec": json.dumps(record)}).fetchone()
            except (psycopg.errors.DataException, psycopg.errors.UndefinedFunction,
                    psycopg.errors.InsufficientPrivilege):
                return False
        return bool(row and row["ok"])
