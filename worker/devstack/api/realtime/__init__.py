"""`/realtime/v1/websocket`: Supabase Realtime's `postgres_changes`, locally.

The Phoenix protocol that the Supabase clients speak (serializer vsn 1.0.0, JSON
objects, from supabase-py; vsn 2.0.0, JSON arrays and binary frames, from
supabase-js): `phoenix` heartbeats, `phx_join` with `config.postgres_changes`, the
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

Modules, in the order a message meets them: protocol.py (frame encoding, one
codec per `vsn`), hub.py (sockets, join / leave / refresh, `realtime_routes`),
bindings.py (what a join subscribes to), channels.py (the joined state),
dispatcher.py (the thread that reads changes and checks RLS per subscriber).
"""
