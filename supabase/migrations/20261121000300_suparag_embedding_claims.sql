-- suparag: claiming, finishing and failing embedding jobs.
--
-- Workers anywhere share the queue through these functions: a claim takes
-- due, unleased jobs with `for update skip locked` and leases them, so two
-- workers never hold the same job and a crashed worker's jobs come back when
-- its lease runs out. A claim counts as an attempt, so a document that
-- crashes every worker still ends `failed` after the cap.

create function suparag_private.claim_embedding_jobs(
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
     order by q.run_after, q.id
     limit batch_size
     for update skip locked
   )
  returning j.id, j.document_id, j.content_version, j.attempts
$$;
comment on function suparag_private.claim_embedding_jobs(text, integer, integer) is
  'Lease up to batch_size due jobs to worker_id for lease_seconds; skips jobs other workers hold.';

create function suparag_private.fail_embedding_job(
  job_id bigint,
  claimed_version bigint,
  error text,
  max_attempts integer,
  retry_after_seconds double precision
)
returns text
language plpgsql volatile
set search_path = ''
as $$
declare
  outcome text;
begin
  update suparag_private.embedding_jobs j
     set status = case when j.attempts >= max_attempts then 'failed' else 'queued' end,
         run_after = now() + make_interval(secs => retry_after_seconds),
         leased_by = null,
         leased_until = null,
         last_error = left(error, 2000),
         updated_at = now()
   where j.id = job_id and j.content_version = claimed_version
  returning j.status into outcome;

  if outcome = 'failed' then
    update public.documents d
       set embedding_status = 'failed', embedding_error = left(error, 2000)
     where d.id = (select document_id from suparag_private.embedding_jobs where id = job_id)
       and d.content_version = claimed_version;
  end if;
  -- null: the document changed meanwhile; its newer job stands as it is.
  return outcome;
end
$$;
comment on function suparag_private.fail_embedding_job(bigint, bigint, text, integer, double precision) is
  'Record a failed attempt: retry after the given delay, or mark job and document failed at the cap.';

create function suparag_private.retry_embedding_jobs(document_ids uuid[] default null)
returns integer
language sql volatile
set search_path = ''
as $$
  with requeued as (
    update suparag_private.embedding_jobs j
       set status = 'queued', attempts = 0, run_after = now(), leased_by = null,
           leased_until = null, updated_at = now()
     where j.status = 'failed'
       and (document_ids is null or j.document_id = any(document_ids))
    returning j.document_id
  ), reset as (
    update public.documents d
       set embedding_status = 'pending', embedding_error = null
     where d.id in (select document_id from requeued)
    returning 1
  )
  -- Wake the workers (one notification per transaction, however many rows).
  select count(*)::integer
  from reset, lateral (select pg_notify('suparag_embedding_jobs', 'documents')) wake
$$;
comment on function suparag_private.retry_embedding_jobs(uuid[]) is
  'Requeue failed jobs (all, or those of the given documents); returns how many.';

revoke all on function suparag_private.claim_embedding_jobs(text, integer, integer),
  suparag_private.fail_embedding_job(bigint, bigint, text, integer, double precision),
  suparag_private.retry_embedding_jobs(uuid[])
  from public, anon, authenticated;
grant execute on function suparag_private.claim_embedding_jobs(text, integer, integer),
  suparag_private.fail_embedding_job(bigint, bigint, text, integer, double precision),
  suparag_private.retry_embedding_jobs(uuid[])
  to service_role;
