"""Broadcast on the local Realtime server: who may join a private channel and send on it
(decided by RLS on `realtime.messages`, as Supabase decides it), and the messages a
broadcast becomes on the channels of one topic.

Authorization runs as the joining user, the way Supabase Realtime runs it: in a
transaction that is always rolled back, the server inserts a probe message for the
topic, switches to the user's role and JWT claims with `realtime.topic()` set to the
topic, and tries to read the probe back (may they receive?) and to insert one of their
own (may they send?). Whatever policies the project has on `realtime.messages` decide;
suparag's answers policy is one of them. The result holds until the channel's token
changes, so delivering a message costs no query, however many subscribe.

Topics: a channel `realtime:answers:42` has the topic `answers:42`, which is what
`realtime.topic()` and `realtime.messages.topic` hold. Private and public channels of
one topic are apart: a message sent with `private => true` reaches only private
channels, and the reverse.
"""

from __future__ import annotations

import binascii
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg

from worker.db import connect, set_request_context
from worker.devstack.api.realtime.channels import Stats

log = logging.getLogger("suparag.realtime")

#: The largest broadcast a client may send: Supabase's smallest plan limit (256 KB).
MAX_BROADCAST_BYTES = 256 * 1024

#: Roles a token may carry into an authorization check: PostgREST's API roles.
API_ROLES = ("anon", "authenticated", "service_role")


def message(event: str, payload: Any, message_id: str | None = None) -> dict[str, Any]:
    """The `broadcast` payload a channel receives: realtime-js and realtime-py hand its
    `event` and `payload` to the callbacks bound to that event."""
    out: dict[str, Any] = {"type": "broadcast", "event": event, "payload": payload}
    if message_id is not None:
        out["meta"] = {"id": message_id}
    return out


def from_row(record: Mapping[str, Any]) -> tuple[str, bool, dict[str, Any]] | None:
    """(topic, private, broadcast payload) of a captured `realtime.messages` row, or None
    if it is not a deliverable broadcast."""
    topic, event = record.get("topic"), record.get("event")
    if record.get("extension") != "broadcast" or not isinstance(topic, str) or \
            not isinstance(event, str):
        return None
    payload: Any = record.get("payload")
    binary = record.get("binary_payload")
    if payload is None and isinstance(binary, str) and binary.startswith("\\x"):
        try:  # bytea as to_jsonb writes it: "\x" and hex
            payload = binascii.unhexlify(binary[2:])
        except binascii.Error:
            return None
    if payload is None:
        return None
    return topic, bool(record.get("private")), message(event, payload, str(record.get("id")))


class Authorizer:
    """Checks a user's access to a private topic against `realtime.messages`' policies.

    One connection, opened on first use and reopened after a failure; checks run one
    at a time (each is two or three short statements in a rolled-back transaction).
    """

    def __init__(self, db_url: str, stats: Stats | None = None) -> None:
        self.db_url = db_url
        self.stats = stats or Stats()
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[dict[str, Any]] | None = None

    def can_read(self, claims: Mapping[str, Any], topic: str) -> bool:
        """May these claims receive broadcasts on the private topic?"""
        return self._check(claims, topic, write=False)

    def can_write(self, claims: Mapping[str, Any], topic: str) -> bool:
        """May these claims send broadcasts on the private topic?"""
        return self._check(claims, topic, write=True)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _check(self, claims: Mapping[str, Any], topic: str, *, write: bool) -> bool:
        if claims.get("role", "anon") not in API_ROLES:
            return False
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    # The probe's insert (a read check), the context, the topic, the test.
                    self.stats.queried("broadcast", 3 if write else 4)
                    return self._probe(conn, claims, topic, write=write)
                except psycopg.OperationalError:
                    self._conn = None  # the database restarted: one fresh try
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.db_url)
        return self._conn

    @staticmethod
    def _probe(conn: psycopg.Connection[dict[str, Any]], claims: Mapping[str, Any],
               topic: str, *, write: bool) -> bool:
        probe = uuid.uuid4()
        try:
            if not write:
                # Inserted with the server's own rights, before the switch to the user.
                conn.execute("insert into realtime.messages (id, topic, extension)"
                             " values (%s, %s, 'broadcast')", (probe, topic))
            set_request_context(conn, claims)
            conn.execute("select set_config('realtime.topic', %s, true)", (topic,))
            if not write:
                return conn.execute("select 1 from realtime.messages where id = %s",
                                    (probe,)).fetchone() is not None
            try:
                conn.execute("insert into realtime.messages (id, topic, extension)"
                             " values (%s, %s, 'broadcast')", (probe, topic))
            except psycopg.errors.InsufficientPrivilege:
                return False
            return True
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:  # a policy that errors refuses, as upstream
            log.warning("realtime: the policies on realtime.messages failed for topic %s: %s",
                        topic, exc)
            return False
        finally:
            if not conn.closed:
                conn.rollback()
