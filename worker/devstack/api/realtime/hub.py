"""The Realtime hub: websockets, their channels, join / leave / token refresh, and the
dispatcher's lifetime, on `/realtime/v1/websocket`.

Frames are read and written through the serializer that the socket's `vsn` names
(protocol.py); joins carry `postgres_changes` bindings (bindings.py) that the
dispatcher (dispatcher.py) serves. Broadcast (broadcast.py): clients send on their
channels, the database sends with `realtime.send`, and private channels are joined
only as the policies on `realtime.messages` allow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from worker.db import connect
from worker.devstack.api.keys import ProjectKeys
from worker.devstack.api.realtime import broadcast, protocol
from worker.devstack.api.realtime.bindings import Binding, binding_id
from worker.devstack.api.realtime.channels import Channel, Socket, Stats
from worker.devstack.api.realtime.dispatcher import Dispatcher
from worker.errors import InvalidToken, JoinRefused, SubscriptionError

log = logging.getLogger("suparag.realtime")

PATH = "/realtime/v1/websocket"
METRICS_PATH = "/realtime/v1/metrics"

#: Channels one socket may hold, as Supabase Realtime's default `max_channels_per_client`;
#: the next join is refused with upstream's reason.
MAX_CHANNELS_PER_SOCKET = 100


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
        self.stats = Stats()
        self.authorizer = broadcast.Authorizer(db_url, self.stats)

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute(PATH, self.endpoint), Route(METRICS_PATH, self.metrics)]

    async def metrics(self, request: Request) -> Response:
        """The server's counters in Prometheus' format, for the service_role key only (as
        Supabase Realtime's /metrics wants its own token)."""
        key = request.headers.get("apikey") or request.headers.get(
            "authorization", "").removeprefix("Bearer ")
        try:
            role = verify(self.keys, key).get("role") if key else None
        except JoinRefused:
            role = None
        if role != "service_role":
            return JSONResponse({"message": "the service_role key is required"},
                                status_code=401)
        return PlainTextResponse(self.stats.prometheus(),
                                 media_type="text/plain; version=0.0.4")

    def channels(self) -> list[Channel]:
        """Every channel joined on any socket (the dispatcher delivers to these)."""
        with self._lock:
            return [ch for s in self._sockets for ch in list(s.channels.values())]

    def broadcast(self, topic: str, private: bool, payload: Mapping[str, Any], *,
                  sender: Channel | None = None) -> int:
        """Send a broadcast to every channel of the topic (private ones for a private
        message, public ones otherwise); the sender's own channel only with
        `broadcast.self`. Returns how many channels it was sent to."""
        sent = 0
        now = time.time()
        for channel in self.channels():
            if channel.name != topic or channel.private != private:
                continue
            if channel is sender and not channel.self_broadcast:
                continue
            exp = channel.claims.get("exp")
            if private and isinstance(exp, (int, float)) and exp < now:
                self.shut_down(channel, "Token has expired")
                continue
            channel.socket.send(channel.topic, protocol.BROADCAST, payload)
            sent += 1
        self.stats.sent("broadcast", sent)
        return sent

    # -- dispatcher lifetime ----------------------------------------------------------

    def _prepare(self) -> None:
        """Attach capture triggers and make sure the dispatcher runs (blocking)."""
        with connect(self.db_url, autocommit=True) as conn:
            conn.execute("select suparag_realtime.sync_triggers()")
        with self._lock:
            dispatcher = self._dispatcher
            if dispatcher is None or dispatcher.stopping.is_set() or not dispatcher.is_alive():
                dispatcher = self._dispatcher = Dispatcher(self.db_url, self, self.stats)
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
                self.authorizer.close()

    def shut_down(self, channel: Channel, message: str) -> None:
        """End a channel as upstream's shutdown_response does: a system error, then close."""
        with self._lock:
            channel.socket.channels.pop(channel.topic, None)
        name = channel.topic.removeprefix("realtime:")
        channel.socket.send(channel.topic, "system", {"extension": "system", "status": "error",
                                                      "message": message, "channel": name})
        channel.socket.send(channel.topic, "phx_close", {}, ref=channel.join_ref,
                            join_ref=channel.join_ref)

    # -- the websocket ----------------------------------------------------------------

    async def endpoint(self, ws: WebSocket) -> None:
        vsn = ws.query_params.get("vsn", protocol.DEFAULT_VSN)
        serializer = protocol.serializer_for(vsn)
        apikey = ws.query_params.get("apikey") or ws.headers.get("apikey")
        # Upstream refuses the socket (HTTP 403) for a serializer it does not serve
        # (Phoenix logs the mismatch) and without a valid project key.
        if serializer is None:
            await self._refuse(ws, f"serializer vsn {vsn!r} is not served: connect with "
                                   f"vsn={' or vsn='.join(protocol.SERVED)}")
            return
        if not apikey:
            await self._refuse(ws, "no apikey: pass the project's anon key as ?apikey=")
            return
        # Supabase's gateway takes only the project's anon and service_role keys as the
        # apikey, not any token signed with its secret (a user's token goes in the join).
        if apikey not in (self.keys.anon_key, self.keys.service_role_key):
            await self._refuse(ws, "the apikey is not this project's anon or service_role "
                                   "key (see `suparag dev status`)")
            return
        await ws.accept()
        socket = Socket(loop=asyncio.get_running_loop(), serializer=serializer)
        self._attach(socket)
        writer = asyncio.create_task(self._write(ws, socket))
        try:
            while True:
                received = await ws.receive()
                if received["type"] == "websocket.disconnect":
                    break
                frame = received.get("text")
                if frame is None:
                    frame = received.get("bytes") or b""
                try:
                    message = serializer.decode(frame)
                except protocol.MalformedFrame as bad:  # readable enough to answer with an error
                    message = bad.message
                except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
                    log.info("realtime: ignoring a frame that is not a vsn %s message: %s",
                             vsn, exc)
                    continue
                await self._handle(socket, apikey, message)
        except WebSocketDisconnect:
            pass
        finally:
            self._detach(socket)
            socket.outbox.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)

    @staticmethod
    async def _refuse(ws: WebSocket, reason: str) -> None:
        """Refuse the upgrade with HTTP 403, the reason in the log and the body."""
        log.warning("realtime: socket refused: %s", reason)
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(JSONResponse({"message": reason}, status_code=403))
        else:  # the server cannot send a body: a bare 403
            await ws.close(code=1008)

    @staticmethod
    async def _write(ws: WebSocket, socket: Socket) -> None:
        while (frame := await socket.outbox.get()) is not None:
            try:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_text(frame)
            except (WebSocketDisconnect, RuntimeError):
                return

    async def _handle(self, socket: Socket, apikey: str, message: protocol.Message) -> None:
        topic, event, payload = message.topic, message.event, message.payload
        ref, join_ref = message.ref, message.join_ref

        def reply(status: str, response: Mapping[str, Any]) -> None:
            socket.send(str(topic), "phx_reply", {"status": status, "response": response},
                        ref=ref, join_ref=join_ref)

        # Whatever the codec let through, a malformed frame gets an error reply and the
        # socket stays open (issue 14): one bad push must not end the client's other channels.
        if not isinstance(topic, str) or not isinstance(event, str):
            reply("error", {"reason": "InvalidMessage: topic and event must be strings"})
            return
        if topic == "phoenix":
            if event == "heartbeat":
                reply("ok", {})
            return
        if message.binary is not None:
            # vsn 2.0.0 binary pushes: no event here takes a binary payload.
            if ref is not None:
                reply("error", {"reason": f"binary payloads are not served locally: send "
                                          f"{event} with a JSON payload"})
            return
        if event == "phx_join":
            await self._join(socket, apikey, topic, payload, join_ref or ref, reply)
        elif event == "phx_leave":
            with self._lock:
                channel = socket.channels.pop(topic, None)
            reply("ok", {})
            # Phoenix's close carries the channel's join_ref as both refs.
            closing = channel.join_ref if channel else join_ref
            socket.send(topic, "phx_close", {}, ref=closing, join_ref=closing)
        elif event == "access_token":
            if not isinstance(payload, Mapping) or not isinstance(
                    payload.get("access_token"), str):
                reply("error", {"reason": "MalformedJWT: the access_token payload must be "
                                          '{"access_token": "<jwt>"}'})
                return
            await self._refresh(socket, topic, payload)
        elif event == protocol.BROADCAST:
            await self._broadcast(socket, topic, payload, reply)
        else:
            log.info("realtime: %s on %s is not served (postgres_changes and broadcast only)",
                     event, topic)
            # A push that waits for its reply (presence) gets a clear refusal instead of
            # a timeout.
            if ref is not None:
                reply("error", {"reason": f"{event} is not served by the local Realtime: "
                                          f"it serves postgres_changes and broadcast"})

    async def _join(self, socket: Socket, apikey: str, topic: str, payload: Mapping[str, Any],
                    join_ref: str | None, reply: Callable[[str, Mapping[str, Any]], None]
                    ) -> None:
        if not topic.startswith("realtime:") or topic == "realtime:":
            reply("error", {"reason": "TopicNameRequired: You must provide a topic name"})
            return
        raw = _join_bindings(payload)
        options = _broadcast_options(payload)
        for problem in (raw, options):
            if isinstance(problem, str):
                reply("error", {"reason": f"InvalidJoinPayload: {problem}"})
                return
        assert not isinstance(raw, str) and not isinstance(options, str)
        if topic not in socket.channels and len(socket.channels) >= MAX_CHANNELS_PER_SOCKET:
            reply("error", {"reason": "ChannelRateLimitReached: Too many channels"})
            return
        token = payload.get("access_token") or apikey
        if not isinstance(token, str) or token.startswith("sb_"):
            token = apikey
        try:
            claims = verify(self.keys, token)
        except JoinRefused as exc:
            reply("error", {"reason": str(exc)})
            return
        name = topic.removeprefix("realtime:")
        try:
            bindings = [Binding.parse(p) for p in raw]
        except SubscriptionError as exc:
            # Upstream accepts the join and reports bad params as a system error.
            reply("ok", {"postgres_changes": [{**p, "id": binding_id(p)} for p in raw]})
            socket.send(topic, "system", {"extension": "postgres_changes", "status": "error",
                                          "message": str(exc), "channel": name})
            return
        private = options["private"]
        try:
            # Before the reply: once subscribe() returns, every commit is captured,
            # changes and database broadcasts alike.
            await run_in_threadpool(self._prepare)
            readable = (not private
                        or await run_in_threadpool(self.authorizer.can_read, claims, name))
        except (psycopg.Error, RuntimeError) as exc:
            log.warning("realtime: %s", exc)
            reply("error", {"reason": "UnableToConnectToProject: Realtime was unable to "
                                      "connect to the project database"})
            return
        if not readable:
            reply("error", {"reason": "Unauthorized: You do not have permissions to read "
                                      f"from this Channel topic: {name}"})
            return
        with self._lock:
            socket.channels[topic] = Channel(
                topic=topic, join_ref=join_ref, claims=claims, bindings=bindings,
                socket=socket, private=private, self_broadcast=options["self"],
                ack_broadcast=options["ack"])
        reply("ok", {"postgres_changes": [{**b.params, "id": b.id} for b in bindings]})
        if bindings:
            socket.send(topic, "system", {"extension": "postgres_changes", "status": "ok",
                                          "message": "Subscribed to PostgreSQL", "channel": name})

    async def _refresh(self, socket: Socket, topic: str, payload: Mapping[str, Any]) -> None:
        channel = socket.channels.get(topic)
        token = payload.get("access_token")
        if channel is None or not isinstance(token, str) or token.startswith("sb_"):
            return
        try:
            claims = verify(self.keys, token)
        except JoinRefused as exc:
            self.shut_down(channel, str(exc))
            return
        if channel.private:
            # A new token is a new user as far as the policies go: check again.
            try:
                readable = await run_in_threadpool(self.authorizer.can_read, claims,
                                                   channel.name)
            except psycopg.Error as exc:
                log.warning("realtime: %s", exc)
                self.shut_down(channel, "Realtime was unable to connect to the project database")
                return
            if not readable:
                self.shut_down(channel, "You no longer have permission to read from this "
                                        f"Channel topic: {channel.name}")
                return
        channel.claims, channel.can_write = claims, None

    async def _broadcast(self, socket: Socket, topic: str, payload: Mapping[str, Any],
                         reply: Callable[[str, Mapping[str, Any]], None]) -> None:
        """A client's broadcast push: to the topic's other channels (and its own with
        `self`), a reply with `ack`; on a private channel only if its user may send."""
        channel = socket.channels.get(topic)
        if channel is None:
            reply("error", {"reason": "unmatched topic"})
            return
        if not isinstance(payload.get("event"), str):
            if channel.ack_broadcast:
                reply("error", {"reason": "InvalidMessage: a broadcast needs an event"})
            return
        size = len(json.dumps(payload, default=str).encode())
        if size > broadcast.MAX_BROADCAST_BYTES:
            if channel.ack_broadcast:
                reply("error", {"reason": f"PayloadSizeExceeded: the broadcast is {size} bytes;"
                                          f" the limit is {broadcast.MAX_BROADCAST_BYTES}"})
            return
        exp = channel.claims.get("exp")
        if isinstance(exp, (int, float)) and exp < time.time():
            self.shut_down(channel, "Token has expired")
            return
        if channel.private:
            if channel.can_write is None:
                try:
                    channel.can_write = await run_in_threadpool(
                        self.authorizer.can_write, channel.claims, channel.name)
                except psycopg.Error as exc:
                    log.warning("realtime: %s", exc)
                    return
            if not channel.can_write:
                # Upstream drops it without a reply, ack or not.
                log.info("realtime: broadcast on %s refused: the policies do not let this "
                         "user send", topic)
                return
        self.broadcast(channel.name, channel.private, payload, sender=channel)
        if channel.ack_broadcast:
            reply("ok", {})


def _join_bindings(payload: Any) -> list[Mapping[str, Any]] | str:
    """The `config.postgres_changes` entries of a join payload, or what is wrong with it."""
    if not isinstance(payload, Mapping):
        return "the join payload must be an object"
    config = payload.get("config") or {}
    if not isinstance(config, Mapping):
        return "config must be an object"
    changes = config.get("postgres_changes") or []
    if not isinstance(changes, list) or not all(isinstance(p, Mapping) for p in changes):
        return "config.postgres_changes must be a list of objects"
    return changes


def _broadcast_options(payload: Any) -> dict[str, bool] | str:
    """`private`, and `broadcast.self` / `broadcast.ack`, of a join payload."""
    config = payload.get("config") or {} if isinstance(payload, Mapping) else {}
    if not isinstance(config, Mapping):
        return "config must be an object"
    settings = config.get("broadcast") or {}
    if not isinstance(settings, Mapping):
        return "config.broadcast must be an object"
    options = {"private": config.get("private", False), "self": settings.get("self", False),
               "ack": settings.get("ack", False)}
    for key, value in options.items():
        if not isinstance(value, bool):
            return f"{'config.private' if key == 'private' else 'config.broadcast.' + key}" \
                   " must be true or false"
    return options


def realtime_routes(db_url: str, keys: ProjectKeys) -> list[BaseRoute]:
    """The Realtime websocket route, to pass as `create_app(..., routes=...)`."""
    return RealtimeHub(db_url, keys).routes()
