"""`/realtime/v1/websocket`: Supabase Realtime's `postgres_changes`, locally.

The Phoenix protocol that the Supabase clients speak (JSON serializer, vsn
1.0.0): `phoenix` heartbeats, `phx_join` with `config.postgres_changes`, the
reply with binding ids, a `system` "Subscribed to PostgreSQL" message,
`access_token` refreshes, `phx_leave`, and `postgres_changes` events in
Supabase's payload shape. Broadcast and presence are not served.

Changes come from the capture trigger of sql/supabase_standin.sql (there is no
WAL decoder here): a dispatcher thread LISTENs on `suparag_realtime`, reads the
rows of transactions committed since its last snapshot, and delivers each to the
channels whose bindings match, as Supabase's `realtime.apply_rls` does:

- INSERT/UPDATE reach a subscriber only if the row, selected by primary key as
  that subscriber (their role and JWT claims, `worker.db.as_request`), is
  visible: RLS decides. Records carry only the columns the role may select.
- DELETE cannot be checked (the row is gone), so, as upstream, it reaches every
  subscriber whose filter matches the old key, and on a table with RLS its
  `old_record` carries only the primary key.
- Filters `column=op.value` with `eq neq lt lte gt gte in`, compared in the
  column's own type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import jwt
import psycopg
from psycopg import sql
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from worker.api.keys import InvalidToken, ProjectKeys
from worker.db import as_request, connect

log = logging.getLogger("suparag.realtime")

PATH = "/realtime/v1/websocket"
CHANNEL = "suparag_realtime"
VSN = "1.0.0"
EVENTS = frozenset({"*", "INSERT", "UPDATE", "DELETE"})
OPERATORS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
MAX_IN_VALUES = 100
#: How long a change stays after every reader's snapshot has passed it.
RETENTION_SECONDS = 60.0
#: A running server renews its consumer row this often (it is valid for 3x as long).
ALIVE_SECONDS = 20.0


class SubscriptionError(ValueError):
    """A postgres_changes binding the server cannot serve (bad event or filter)."""


# -- bindings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """`column=op.value`; `in` takes `(a,b,c)`."""

    column: str
    op: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Filter:
        column, eq, rest = text.partition("=")
        op, dot, value = rest.partition(".")
        if not (eq and dot and column.strip()):
            raise SubscriptionError(f"invalid filter {text!r}: expected column=op.value")
        if op == "in":
            inner = value.strip()
            if not (inner.startswith("(") and inner.endswith(")")):
                raise SubscriptionError(f"invalid filter {text!r}: `in` takes (a,b,c)")
            values = tuple(v.strip().strip('"') for v in inner[1:-1].split(","))
            if len(values) > MAX_IN_VALUES:
                raise SubscriptionError(f"invalid filter {text!r}: `in` takes at most "
                                        f"{MAX_IN_VALUES} values")
            return cls(column.strip(), op, values)
        if op not in OPERATORS:
            raise SubscriptionError(f"invalid filter {text!r}: operator {op!r} is not one of "
                                    "eq, neq, lt, lte, gt, gte, in")
        return cls(column.strip(), op, (value,))


@dataclass(frozen=True)
class Binding:
    """One entry of `config.postgres_changes`, with the id the client matches on."""

    id: int
    event: str
    schema: str
    table: str | None
    filter: Filter | None
    params: Mapping[str, Any]

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> Binding:
        event = str(params.get("event", "*")).upper()
        if event not in EVENTS:
            raise SubscriptionError(f"invalid event {params.get('event')!r}: "
                                    "expected INSERT, UPDATE, DELETE or *")
        table = params.get("table")
        raw_filter = params.get("filter")
        return cls(id=binding_id(params), event=event, schema=str(params.get("schema") or "public"),
                   table=None if table in (None, "*") else str(table),
                   filter=Filter.parse(str(raw_filter)) if raw_filter else None,
                   params=dict(params))

    def wants(self, schema: str, table: str, op: str) -> bool:
        return (self.schema in ("*", schema) and self.table in (None, table)
                and self.event in ("*", op))


def binding_id(params: Mapping[str, Any]) -> int:
    """A stable id for a binding, like upstream's `:erlang.phash2(params)` (never 0:
    the Python client ignores events for a falsy id)."""
    digest = zlib.crc32(json.dumps(params, sort_keys=True, default=str).encode()) & 0x7FFFFFF
    return digest or 1


@dataclass
class Channel:
    """A joined `realtime:<name>` topic on one socket."""

    topic: str
    join_ref: str | None
    claims: dict[str, Any]
    bindings: list[Binding]
    socket: Socket


@dataclass(eq=False)
class Socket:
    """One websocket: its outgoing queue (fed from any thread) and its channels."""

    loop: asyncio.AbstractEventLoop
    outbox: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    channels: dict[str, Channel] = field(default_factory=dict)

    def send(self, topic: str, event: str, payload: Mapping[str, Any], *,
             ref: str | None = None, join_ref: str | None = None) -> None:
        """Queue a frame; safe from the dispatcher thread."""
        frame = json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref,
                            "join_ref": join_ref}, default=str)
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody to send to
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, frame)


# -- tokens -----------------------------------------------------------------------------


def verify(keys: ProjectKeys, token: str) -> dict[str, Any]:
    """The token's claims, or JoinRefused with the reason Supabase Realtime gives."""
    try:
        return keys.verify(token)
    except InvalidToken as exc:
        cause = exc.__cause__
        if exc.expired:
            try:
                exp = int(jwt.decode(token, options={"verify_signature": False})["exp"])
                ago = max(0, int(time.time()) - exp)
            except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
                ago = 0
            reason = f"InvalidJWTToken: Token has expired {ago} seconds ago"
        elif isinstance(cause, jwt.InvalidSignatureError):
            reason = "JwtSignatureError: Failed to validate JWT signature"
        elif isinstance(cause, jwt.MissingRequiredClaimError):
            reason = "InvalidJWTToken: Fields `role` and `exp` are required in JWT"
        elif isinstance(cause, jwt.DecodeError):
            reason = "MalformedJWT: The token provided is not a valid JWT"
        else:
            reason = f"Unauthorized: {exc}"
        raise JoinRefused(reason) from exc


class JoinRefused(Exception):
    """A join (or token refresh) refused; the message is the reply's `reason`."""


# -- the dispatcher ---------------------------------------------------------------------


class Dispatcher(threading.Thread):
    """LISTENs for captured changes and delivers them to matching channels."""

    def __init__(self, hub: RealtimeHub) -> None:
        super().__init__(name="suparag-realtime", daemon=True)
        self.hub = hub
        self.consumer = f"realtime-{uuid.uuid4()}"
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._snapshot: str | None = None

    def run(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                with connect(self.hub.db_url, autocommit=True) as listen, \
                        connect(self.hub.db_url, autocommit=True) as work:
                    listen.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
                    self._renew(work)
                    if self._snapshot is None:
                        self._snapshot = self._current_snapshot(work)
                    self.ready.set()
                    delay = 0.5
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
                log.warning("realtime: database connection lost (%s); retrying in %.1f s",
                            exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

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
            for channel in self.hub.channels():
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
            self.hub.shut_down(channel, "Token has expired")
            return
        data = self._visible(conn, change, channel.claims, bindings)
        if data is not None:
            payload, ids = data
            channel.socket.send(channel.topic, "postgres_changes", {"ids": ids, "data": payload})

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
                    with tx.transaction():  # a savepoint: a refusal must not end the request
                        try:
                            found = tx.execute(
                                sql.SQL("select exists (select 1 from {} t where {}) as ok")
                                .format(target, match), {"rec": json.dumps(record)}).fetchone()
                        except psycopg.errors.InsufficientPrivilege:
                            return None
                    if not (found and found["ok"]):
                        return None
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


# -- the hub: sockets, channels, the dispatcher's lifetime ------------------------------


class RealtimeHub:
    """Serves `/realtime/v1/websocket` for one database and one set of project keys.

    The dispatcher runs while at least one socket is connected, so a server
    with no subscribers captures nothing.
    """

    def __init__(self, db_url: str, keys: ProjectKeys) -> None:
        self.db_url, self.keys = db_url, keys
        self._lock = threading.Lock()
        self._sockets: set[Socket] = set()
        self._dispatcher: Dispatcher | None = None

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute(PATH, self.endpoint)]

    def channels(self) -> list[Channel]:
        with self._lock:
            return [ch for s in self._sockets for ch in list(s.channels.values())]

    # -- dispatcher lifetime ----------------------------------------------------------

    def _prepare(self) -> None:
        """Attach capture triggers and make sure the dispatcher runs (blocking)."""
        with connect(self.db_url, autocommit=True) as conn:
            conn.execute("select suparag_realtime.sync_triggers()")
        with self._lock:
            dispatcher = self._dispatcher
            if dispatcher is None or dispatcher.stopping.is_set() or not dispatcher.is_alive():
                dispatcher = self._dispatcher = Dispatcher(self)
                dispatcher.start()
        if not dispatcher.ready.wait(30) or dispatcher.error is not None:
            raise RuntimeError(f"realtime could not start: {dispatcher.error}")

    def _attach(self, socket: Socket) -> None:
        with self._lock:
            self._sockets.add(socket)

    def _detach(self, socket: Socket) -> None:
        with self._lock:
            self._sockets.discard(socket)
            if not self._sockets and self._dispatcher is not None:
                self._dispatcher.stop()
                self._dispatcher = None

    def shut_down(self, channel: Channel, message: str) -> None:
        """End a channel as upstream's shutdown_response does: a system error, then close."""
        with self._lock:
            channel.socket.channels.pop(channel.topic, None)
        name = channel.topic.removeprefix("realtime:")
        channel.socket.send(channel.topic, "system", {"extension": "system", "status": "error",
                                                      "message": message, "channel": name})
        channel.socket.send(channel.topic, "phx_close", {}, ref=channel.join_ref)

    # -- the websocket ----------------------------------------------------------------

    async def endpoint(self, ws: WebSocket) -> None:
        vsn = ws.query_params.get("vsn", VSN)
        apikey = ws.query_params.get("apikey") or ws.headers.get("apikey")
        # Upstream refuses the socket (HTTP 403) without a valid project key.
        if vsn != VSN or not apikey:
            await ws.close(code=1008)
            return
        try:
            verify(self.keys, apikey)
        except JoinRefused:
            await ws.close(code=1008)
            return
        await ws.accept()
        socket = Socket(loop=asyncio.get_running_loop())
        self._attach(socket)
        writer = asyncio.create_task(self._write(ws, socket))
        try:
            while True:
                received = await ws.receive()
                if received["type"] == "websocket.disconnect":
                    break
                text = received.get("text")
                if text is None:  # binary frames belong to the 2.0.0 serializer
                    continue
                try:
                    message = json.loads(text)
                    topic, event = str(message["topic"]), str(message["event"])
                    payload = message.get("payload") or {}
                except (ValueError, KeyError, TypeError):
                    log.info("realtime: ignoring a frame that is not a Phoenix message")
                    continue
                await self._handle(socket, apikey, topic, event, payload,
                                   message.get("ref"), message.get("join_ref"))
        except WebSocketDisconnect:
            pass
        finally:
            self._detach(socket)
            socket.outbox.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)

    @staticmethod
    async def _write(ws: WebSocket, socket: Socket) -> None:
        while (frame := await socket.outbox.get()) is not None:
            try:
                await ws.send_text(frame)
            except (WebSocketDisconnect, RuntimeError):
                return

    async def _handle(self, socket: Socket, apikey: str, topic: str, event: str,
                      payload: Mapping[str, Any], ref: str | None, join_ref: str | None) -> None:
        def reply(status: str, response: Mapping[str, Any]) -> None:
            socket.send(topic, "phx_reply", {"status": status, "response": response},
                        ref=ref, join_ref=join_ref)

        if topic == "phoenix":
            if event == "heartbeat":
                reply("ok", {})
            return
        if event == "phx_join":
            await self._join(socket, apikey, topic, payload, join_ref or ref, reply)
        elif event == "phx_leave":
            with self._lock:
                channel = socket.channels.pop(topic, None)
            reply("ok", {})
            socket.send(topic, "phx_close", {}, ref=channel.join_ref if channel else join_ref)
        elif event == "access_token":
            self._refresh(socket, topic, payload)
        else:
            log.info("realtime: %s on %s is not served (postgres_changes only)", event, topic)

    async def _join(self, socket: Socket, apikey: str, topic: str, payload: Mapping[str, Any],
                    join_ref: str | None, reply: Callable[[str, Mapping[str, Any]], None]
                    ) -> None:
        if not topic.startswith("realtime:") or topic == "realtime:":
            reply("error", {"reason": "TopicNameRequired: You must provide a topic name"})
            return
        token = payload.get("access_token") or apikey
        if not isinstance(token, str) or token.startswith("sb_"):
            token = apikey
        try:
            claims = verify(self.keys, token)
        except JoinRefused as exc:
            reply("error", {"reason": str(exc)})
            return
        config = payload.get("config") or {}
        raw = [p for p in (config.get("postgres_changes") or []) if isinstance(p, Mapping)]
        name = topic.removeprefix("realtime:")
        try:
            bindings = [Binding.parse(p) for p in raw]
        except SubscriptionError as exc:
            # Upstream accepts the join and reports bad params as a system error.
            reply("ok", {"postgres_changes": [{**p, "id": binding_id(p)} for p in raw]})
            socket.send(topic, "system", {"extension": "postgres_changes", "status": "error",
                                          "message": str(exc), "channel": name})
            return
        if bindings:
            # Before the reply: once subscribe() returns, every commit is captured.
            try:
                await run_in_threadpool(self._prepare)
            except (psycopg.Error, RuntimeError) as exc:
                log.warning("realtime: %s", exc)
                reply("error", {"reason": "UnableToConnectToProject: Realtime was unable to "
                                          "connect to the project database"})
                return
        with self._lock:
            socket.channels[topic] = Channel(topic=topic, join_ref=join_ref, claims=claims,
                                             bindings=bindings, socket=socket)
        reply("ok", {"postgres_changes": [{**b.params, "id": b.id} for b in bindings]})
        if bindings:
            socket.send(topic, "system", {"extension": "postgres_changes", "status": "ok",
                                          "message": "Subscribed to PostgreSQL", "channel": name})

    def _refresh(self, socket: Socket, topic: str, payload: Mapping[str, Any]) -> None:
        channel = socket.channels.get(topic)
        token = payload.get("access_token")
        if channel is None or not isinstance(token, str) or token.startswith("sb_"):
            return
        try:
            claims = verify(self.keys, token)
        except JoinRefused as exc:
            self.shut_down(channel, str(exc))
            return
        channel.claims = claims


def realtime_routes(db_url: str, keys: ProjectKeys) -> list[BaseRoute]:
    """The Realtime websocket route, to pass as `create_app(..., routes=...)`."""
    return RealtimeHub(db_url, keys).routes()
