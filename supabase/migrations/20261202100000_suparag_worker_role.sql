-- suparag: a least-privilege database role for `suparag worker` (issue 17).
--
-- A worker next to a hosted project used to connect as `postgres` or with
-- `service_role` (bypassrls, everything in public). `suparag_worker` has only
-- what the worker does:
--
-- - embeddings: claim and fail jobs (the queue functions), read documents and
--   set their embedding status, replace their chunks (and an embedding space's
--   vectors), delete finished jobs, record usage;
-- - answers: claim and fail answer jobs, read questions, write answers, send
--   them on the asker's private Broadcast topic, and retrieve *as the asker*:
--   `set local role authenticated` with the asker's claims, as PostgREST's
--   `authenticator` does, so retrieval stays under the users' policies;
-- - read the columns of auth.users that make a user's JWT claims (id, email,
--   app and user metadata) through suparag_private.asker, never passwords,
--   tokens or anything else of Auth's.
--
-- It is not `bypassrls` (on hosted Supabase's PostgreSQL 15 only a superuser
-- may grant that, and nobody has superuser there), so it is created the same on
-- every PostgreSQL: RLS applies to it, and a policy `to suparag_worker` names
-- each thing it may do where RLS is on, beside the grants that bound its reach
-- (narrower than service_role's `grant all`). The chunk write-back is a plain
-- INSERT for this reason: PostgreSQL refuses COPY FROM into a table whose RLS
-- applies to the copier. Once it `set role authenticated` for an asker, the
-- asker's policies apply. It is `nologin`: an operator gives it a login and
-- password (docs/deploy.md), so no secret is in a migration. Roles are per
-- cluster, so it is created only when missing (a branch or a second database
-- reuses it).

do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'suparag_worker') then
    create role suparag_worker nologin noinherit;
  end if;
end
$$;

comment on role suparag_worker is
  'suparag worker: embeds documents and answers questions; least privilege (issue 17).';

-- Answers are retrieved as their askers (worker/db.py as_request). noinherit: the
-- role has authenticated's rights only after `set role`, never by default.
grant authenticated to suparag_worker;

grant usage on schema suparag_private, suparag_search, extensions to suparag_worker;

-- auth.users: only the columns that make an asker's claims, one user at a time
-- (worker/users.py asker). A function that runs as its owner, because auth.users
-- has RLS on and belongs to Auth's admin role, so no policy of ours may name the
-- worker there; execute is the worker's (and service_role's) only.
create function suparag_private.asker(p_user_id uuid)
returns table (id uuid, email text, app_metadata jsonb, user_metadata jsonb)
language sql
stable
security definer
set search_path = ''
as $$
  select u.id, u.email::text, u.raw_app_meta_data, u.raw_user_meta_data
  from auth.users u
  where u.id = p_user_id
$$;
comment on function suparag_private.asker(uuid) is
  'The columns of one auth.users row that make its JWT claims, for the answer worker '
  '(suparag_worker has no other access to auth.users).';
revoke execute on function suparag_private.asker(uuid) from public;
grant execute on function suparag_private.asker(uuid) to suparag_worker, service_role;

-- Documents: read them; set only the status columns.
grant select, update (embedding_status, embedding_model, embedded_at, embedding_error)
  on public.documents to suparag_worker;
create policy "suparag_worker reads every document" on public.documents
  for select to suparag_worker using (true);
create policy "suparag_worker sets embedding status" on public.documents
  for update to suparag_worker using (true) with check (true);

-- Chunks: read (reusable vectors), replace.
grant select, insert, delete on public.document_chunks to suparag_worker;
create policy "suparag_worker reads chunks" on public.document_chunks
  for select to suparag_worker using (true);
create policy "suparag_worker writes chunks" on public.document_chunks
  for insert to suparag_worker with check (true);
create policy "suparag_worker replaces chunks" on public.document_chunks
  for delete to suparag_worker using (true);

-- The embedding queue: claim and fail through the functions (security invoker, so
-- the columns they set), release leases and delete finished jobs directly. Never insert:
-- only the triggers queue work.
grant select, delete, update (status, attempts, run_after, leased_by, leased_until,
  last_error, updated_at) on suparag_private.embedding_jobs to suparag_worker;
create policy "suparag_worker reads embedding jobs" on suparag_private.embedding_jobs
  for select to suparag_worker using (true);
create policy "suparag_worker releases embedding jobs" on suparag_private.embedding_jobs
  for update to suparag_worker using (true) with check (true);
create policy "suparag_worker finishes embedding jobs" on suparag_private.embedding_jobs
  for delete to suparag_worker using (true);
grant execute on function
  suparag_private.claim_embedding_jobs(text, integer, integer),
  suparag_private.fail_embedding_job(bigint, bigint, text, integer, double precision)
  to suparag_worker;

-- Embedding spaces (issue 10): read the spaces, write their vectors.
grant select on suparag_private.embedding_spaces to suparag_worker;
create policy "suparag_worker reads embedding spaces" on suparag_private.embedding_spaces
  for select to suparag_worker using (true);
grant select, insert, delete on suparag_search.chunk_vectors to suparag_worker;
create policy "suparag_worker reads space vectors" on suparag_search.chunk_vectors
  for select to suparag_worker using (true);
create policy "suparag_worker writes space vectors" on suparag_search.chunk_vectors
  for insert to suparag_worker with check (true);
create policy "suparag_worker replaces space vectors" on suparag_search.chunk_vectors
  for delete to suparag_worker using (true);

-- Questions and answers.
grant select on public.questions to suparag_worker;
create policy "suparag_worker reads questions" on public.questions
  for select to suparag_worker using (true);
-- Everything but the asker's feedback.
grant select, insert (question_id, asker_id, conversation_id, content, mode, model, citations,
  status, error), update (content, mode, model, citations, status, error, updated_at)
  on public.answers to suparag_worker;
create policy "suparag_worker reads answers" on public.answers
  for select to suparag_worker using (true);
create policy "suparag_worker writes answers" on public.answers
  for insert to suparag_worker with check (true);
create policy "suparag_worker updates answers" on public.answers
  for update to suparag_worker using (true) with check (true);
grant select, delete, update (status, attempts, run_after, leased_by, leased_until,
  last_error, updated_at) on suparag_private.answer_jobs to suparag_worker;
create policy "suparag_worker reads answer jobs" on suparag_private.answer_jobs
  for select to suparag_worker using (true);
create policy "suparag_worker releases answer jobs" on suparag_private.answer_jobs
  for update to suparag_worker using (true) with check (true);
create policy "suparag_worker finishes answer jobs" on suparag_private.answer_jobs
  for delete to suparag_worker using (true);
-- publish_answer sends on realtime.messages, which Supabase's realtime schema keeps
-- to its own roles: it runs as its owner, callable only by service_role and the worker
-- (execute stays revoked from public), and sends only to the topic of the asker given.
alter function suparag_private.publish_answer(uuid, text, jsonb) security definer;
grant execute on function
  suparag_private.claim_answer_jobs(text, integer, integer, uuid[]),
  suparag_private.fail_answer_job(bigint, text, integer, double precision),
  suparag_private.publish_answer(uuid, text, jsonb)
  to suparag_worker;

-- Usage metering: one row per model call.
grant select, insert on suparag_private.usage to suparag_worker;
create policy "suparag_worker reads usage" on suparag_private.usage
  for select to suparag_worker using (true);
create policy "suparag_worker records usage" on suparag_private.usage
  for insert to suparag_worker with check (true);
