-- suparag: answers delivered over Realtime Broadcast, on a private topic per asker.
--
-- The answer worker sends each answer on the topic `answers:<asker uid>`: `delta`
-- events with the new text as it is generated, then one `done` (or `failed`) event
-- with the final content and citations, sent in the transaction that writes the
-- answer row, so a rollback sends nothing. The row in public.answers stays the
-- record (and keeps reaching postgres_changes subscribers): a client that joins late
-- or misses a message refetches it.
--
-- Realtime authorizes a private channel by what the joining user may do on
-- realtime.messages, with realtime.topic() set to the channel's topic. realtime.messages,
-- realtime.send and realtime.topic() are Supabase's (the local stand-in provides the
-- same); this migration only adds a policy and the worker's sender.

-- An asker may receive broadcasts on their own answers topic: never another user's,
-- and anon none. No insert policy: nobody but the worker sends on it, so an asker
-- cannot forge a `done` on their own topic either.
create policy "suparag: askers receive their own answers"
  on realtime.messages for select to authenticated
  using (
    realtime.messages.extension = 'broadcast'
    and (select realtime.topic()) = 'answers:' || (select auth.uid())::text
  );

-- The worker's sender: the topic named in one place beside the policy above.
create function suparag_private.publish_answer(asker uuid, event text, payload jsonb)
returns void
language sql
set search_path = ''
as $$
  select realtime.send(payload, event, 'answers:' || asker::text, true);
$$;

comment on function suparag_private.publish_answer(uuid, text, jsonb) is
  'Send an answer event (delta, done, failed) on the asker''s private Realtime topic answers:<asker uid>.';

revoke all on function suparag_private.publish_answer(uuid, text, jsonb)
  from public, anon, authenticated;
