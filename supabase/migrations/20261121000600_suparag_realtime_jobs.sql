-- suparag: Supabase Realtime wake-ups for embedding workers (issue 3).
--
-- `suparag worker`, given SUPABASE_URL and the service_role key, subscribes to
-- postgres_changes (INSERT, UPDATE) on the embedding queue and drains the queue
-- on each event: a wake-up that needs neither a direct connection (LISTEN) nor
-- an address the database can reach (pg_net). The queue holds only ids,
-- versions and job state; it has RLS with no policies and no grants for anon or
-- authenticated, so Realtime's per-subscriber check sends its inserts and
-- updates to service_role only.
--
-- Hosted Supabase and the local stand-in both have the publication; one
-- declared `for all tables` already covers the table and cannot take a list.
do $$
begin
  if exists (select from pg_catalog.pg_publication
             where pubname = 'supabase_realtime' and not puballtables)
     and not exists (select from pg_catalog.pg_publication_tables
                     where pubname = 'supabase_realtime'
                       and schemaname = 'suparag_private' and tablename = 'embedding_jobs') then
    alter publication supabase_realtime add table suparag_private.embedding_jobs;
  end if;
end
$$;
