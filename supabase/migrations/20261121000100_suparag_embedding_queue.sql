-- suparag: the embedding job queue and the triggers that feed it.
--
-- A committed insert, or a change to a document's title or content, leaves one
-- job per document in suparag_private.embedding_jobs (newer changes fold into
-- the same job) and wakes workers. Wake-ups are hints: pg_notify always, and
-- net.http_post to the configured worker URL where pg_net is installed. The
-- queue table is the truth; a worker that missed every wake-up still finds
-- the job on its next sweep.

create table suparag_private.embedding_jobs (
  id bigint generated always as identity primary key,
  document_id uuid not null unique references public.documents (id) on delete cascade,
  -- The document version to embed; raised in place when the document changes
  -- again before the job is done.
  content_version bigint not null,
  status text not null default 'queued' check (status in ('queued', 'failed')),
  attempts integer not null default 0,
  run_after timestamptz not null default now(),
  leased_by text,
  leased_until timestamptz,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table suparag_private.embedding_jobs is
  'One pending embedding job per document. Claimed with for update skip locked and a lease; deleted when its version is written.';

-- Workers claim by (status, run_after); expired leases are found the same way.
create index embedding_jobs_claim_idx on suparag_private.embedding_jobs (run_after)
  where status = 'queued';

create table suparag_private.settings (
  key text primary key,
  value text not null,
  updated_at timestamptz not null default now()
);
comment on table suparag_private.settings is
  'Operator settings read by triggers, e.g. worker_url (where pg_net posts wake-ups). Holds no secrets.';

alter table suparag_private.embedding_jobs enable row level security;
alter table suparag_private.settings enable row level security;
revoke all on suparag_private.embedding_jobs, suparag_private.settings from public, anon, authenticated;
grant all on suparag_private.embedding_jobs, suparag_private.settings to service_role;

-- enqueue -----------------------------------------------------------------------

create function suparag_private.enqueue_embedding() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  worker_url text;
begin
  insert into suparag_private.embedding_jobs as j (document_id, content_version)
  values (new.id, new.content_version)
  on conflict (document_id) do update
    set content_version = excluded.content_version,
        status = 'queued',
        attempts = 0,
        run_after = now(),
        last_error = null,
        updated_at = now();

  -- A constant payload: PostgreSQL folds identical notifications of one
  -- transaction into one, so a bulk insert wakes each listener once.
  perform pg_notify('suparag_embedding_jobs', 'documents');

  -- pg_net, where present and configured; once per transaction, since one
  -- wake-up drains every job the transaction queued. The call is resolved
  -- only when reached, so databases without pg_net never touch `net`.
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is not null
     and coalesce(current_setting('suparag.wakeup_posted', true), '') <> 'on' then
    select s.value into worker_url from suparag_private.settings s where s.key = 'worker_url';
    if worker_url is not null then
      perform set_config('suparag.wakeup_posted', 'on', true);
      perform net.http_post(
        url := worker_url,
        body := jsonb_build_object(
          'type', tg_op,
          'table', tg_table_name,
          'schema', tg_table_schema,
          'record', jsonb_build_object('id', new.id, 'content_version', new.content_version)
        )
      );
    end if;
  end if;

  return null;
end
$$;
comment on function suparag_private.enqueue_embedding() is
  'Trigger: queue an embedding job for the row and wake workers. Security definer because callers may not write the private queue.';
revoke all on function suparag_private.enqueue_embedding() from public, anon, authenticated;

create trigger documents_enqueue_on_insert
  after insert on public.documents
  for each row execute function suparag_private.enqueue_embedding();

-- Only title or content changes bump content_version; a metadata-only update
-- enqueues nothing.
create trigger documents_enqueue_on_change
  after update on public.documents
  for each row
  when (old.content_version is distinct from new.content_version)
  execute function suparag_private.enqueue_embedding();
