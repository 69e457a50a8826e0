-- suparag: the pg_net wake-up carries a secret from Supabase Vault.
--
-- In production the worker's wake endpoint faces the internet (pg_net must
-- reach it), and a wake-up with no key let anyone make the workers poll
-- (issue 14). The enqueue trigger now reads the secret named
-- `suparag_wake_secret` from `vault.decrypted_secrets`, where Vault exists and
-- the secret is set, and sends it as the `X-Suparag-Wake-Secret` header; the
-- worker (SUPARAG_WAKE_SECRET) refuses a wake-up without it. Create it once:
--   select vault.create_secret('<random>', 'suparag_wake_secret');
-- and give the worker the same value. Without Vault, or without the secret,
-- the trigger posts as before (no header); without pg_net it posts nothing.
-- Both `vault` and `net` are named only inside branches taken when they exist.
-- The rest of the body is migration 0100's, unchanged.

create or replace function suparag_private.enqueue_embedding() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  worker_url text;
  wake_secret text;
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
      -- The secret, where Vault exists; never stored outside it.
      if to_regclass('vault.decrypted_secrets') is not null then
        select v.decrypted_secret into wake_secret
          from vault.decrypted_secrets v where v.name = 'suparag_wake_secret';
      end if;
      perform net.http_post(
        url := worker_url,
        body := jsonb_build_object(
          'type', tg_op,
          'table', tg_table_name,
          'schema', tg_table_schema,
          'record', jsonb_build_object('id', new.id, 'content_version', new.content_version)
        ),
        headers := jsonb_build_object('Content-Type', 'application/json')
          || case when wake_secret is null then '{}'::jsonb
                  else jsonb_build_object('X-Suparag-Wake-Secret', wake_secret) end
      );
    end if;
  end if;

  return null;
end
$$;
comment on function suparag_private.enqueue_embedding() is
  'Trigger: queue an embedding job for the row and wake workers (pg_net wake-ups carry the Vault secret suparag_wake_secret where set). Security definer because callers may not write the private queue.';
revoke all on function suparag_private.enqueue_embedding() from public, anon, authenticated;
