-- suparag: a transaction that queues many documents is bulk work (issue 16).
--
-- Migration 20261202080000 made a job bulk (priority 1) when one statement
-- queued several documents. An import that inserts its documents one
-- statement at a time in one transaction (psycopg's executemany, an ORM's
-- loop, a migration script) queued every one of them as interactive, so the
-- worker took them about one token budget at a time as if each were a user's
-- edit: its model calls padded about a quarter more than one bulk claim's
-- (`suparag bench worker`, 300 documents). Now the second document a
-- transaction queues makes the transaction's jobs bulk, the first one's too.
-- A single edit (one document per transaction, as a PostgREST request or the
-- dashboard makes) stays interactive.
--
-- The count lives in transaction-local settings, so it ends with the
-- transaction; a document is counted once however often it is queued in a
-- row (`insert ... on conflict do update` fires the insert and the update
-- trigger for one document). The first job is found again by its row's xmin: a job queued
-- inside a savepoint carries the subtransaction's id and keeps priority 0
-- (harmless: it is claimed a little sooner).

create or replace function suparag_private.set_embedding_job_priority() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  seen text := current_setting('suparag.queued_in_transaction', true);
  queued integer := case when seen ~ '^[0-9]{1,9}$' then seen::integer else 0 end;
begin
  if current_setting('suparag.queued_last_document', true) is distinct from new.document_id::text
  then
    queued := queued + 1;
    perform set_config('suparag.queued_in_transaction', queued::text, true);
    perform set_config('suparag.queued_last_document', new.document_id::text, true);
  end if;
  if current_setting('suparag.bulk', true) = 'on' or queued > 1 then
    new.priority := 1;
    if queued = 2 then
      update suparag_private.embedding_jobs
         set priority = 1
       where priority = 0 and status = 'queued' and xmin = pg_current_xact_id()::xid;
    end if;
  else
    new.priority := 0;
  end if;
  return new;
end
$$;
comment on function suparag_private.set_embedding_job_priority() is
  'Trigger: a queued version is interactive (0) when it is the only one its transaction queued, else bulk (1), as is any in a transaction that set suparag.bulk = on.';
revoke all on function suparag_private.set_embedding_job_priority() from public, anon, authenticated;
