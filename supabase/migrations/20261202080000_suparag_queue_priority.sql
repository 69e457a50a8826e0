-- suparag: interactive edits ahead of bulk work in the embedding queue (issue 16).
--
-- Each embedding job records a priority decided by how it was queued: 0 for an
-- interactive change (a statement that changed one document's text), 1 for
-- bulk work (a statement that inserted or changed the text of more than one
-- document, e.g. a PostgREST array insert or `suparag ingest`'s batched
-- upsert, or any statement in a transaction that set `suparag.bulk = on`).
-- Claims take priority 0 first, so an edit committed during a long import is
-- embedded within the next batch instead of after the backlog. A newer
-- version of a document takes the priority of the statement that made it: a
-- user's edit of a document still waiting from an import jumps the queue.

alter table suparag_private.embedding_jobs
  add column priority smallint not null default 0;
comment on column suparag_private.embedding_jobs.priority is
  '0: interactive (a single-document change), 1: bulk (a multi-row statement, or suparag.bulk = on). Claims take 0 first.';

-- The claim's order: priority, then due time. The claim index stays for the
-- workers' "when is the next job due" sweep.
create index embedding_jobs_priority_idx on suparag_private.embedding_jobs (priority, run_after, id)
  where status = 'queued';

-- A job's priority is set whenever a version is queued (insert, or the enqueue
-- trigger's `on conflict ... set content_version`); lease updates leave it.
create function suparag_private.set_embedding_job_priority() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.priority := case when current_setting('suparag.bulk', true) = 'on' then 1 else 0 end;
  return new;
end
$$;
comment on function suparag_private.set_embedding_job_priority() is
  'Trigger: a queued version is interactive (0) unless the transaction set suparag.bulk = on (1).';
revoke all on function suparag_private.set_embedding_job_priority() from public, anon, authenticated;

create trigger embedding_jobs_priority
  before insert or update of content_version on suparag_private.embedding_jobs
  for each row execute function suparag_private.set_embedding_job_priority();

-- After a statement on documents (its row triggers have queued the jobs): more
-- than one document whose text it queued makes those jobs bulk.
create function suparag_private.mark_bulk_embedding_jobs() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    if (select count(*) from (select 1 from new_rows limit 2) two) > 1 then
      update suparag_private.embedding_jobs j
         set priority = 1
        from new_rows n
       where j.document_id = n.id and j.content_version = n.content_version
         and j.priority = 0;
    end if;
  else
    if (select count(*) from (select 1 from new_rows n join old_rows o on o.id = n.id
                              where o.content_version is distinct from n.content_version
                              limit 2) two) > 1 then
      update suparag_private.embedding_jobs j
         set priority = 1
        from new_rows n join old_rows o on o.id = n.id
       where o.content_version is distinct from n.content_version
         and j.document_id = n.id and j.content_version = n.content_version
         and j.priority = 0;
    end if;
  end if;
  return null;
end
$$;
comment on function suparag_private.mark_bulk_embedding_jobs() is
  'Statement trigger: the jobs of a statement that queued more than one document are bulk (priority 1). Security definer because callers may not write the private queue.';
revoke all on function suparag_private.mark_bulk_embedding_jobs() from public, anon, authenticated;

create trigger documents_bulk_on_insert
  after insert on public.documents
  referencing new table as new_rows
  for each statement execute function suparag_private.mark_bulk_embedding_jobs();

create trigger documents_bulk_on_update
  after update on public.documents
  referencing old table as old_rows new table as new_rows
  for each statement execute function suparag_private.mark_bulk_embedding_jobs();

-- The claim: as in migration 0300, interactive jobs first.
create or replace function suparag_private.claim_embedding_jobs(
  worker_id text,
  batch_size integer,
  lease_seconds integer
)
returns table (job_id bigint, document_id uuid, content_version bigint, attempts integer)
language sql volatile
set search_path = ''
as $$
  update suparag_private.embedding_jobs j
     set leased_by = worker_id,
         leased_until = now() + make_interval(secs => lease_seconds),
         attempts = j.attempts + 1,
         updated_at = now()
   where j.id in (
     select q.id
     from suparag_private.embedding_jobs q
     where q.status = 'queued'
       and q.run_after <= now()
       and (q.leased_until is null or q.leased_until < now())
     order by q.priority, q.run_after, q.id
     limit batch_size
     for update skip locked
   )
  returning j.id, j.document_id, j.content_version, j.attempts
$$;
comment on function suparag_private.claim_embedding_jobs(text, integer, integer) is
  'Lease up to batch_size due jobs to worker_id for lease_seconds, interactive (priority 0) first; skips jobs other workers hold.';
