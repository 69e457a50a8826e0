-- suparag: the first embedding space (document_chunks.embedding) can be dropped (issue 10).
--
-- After a model change, the old space is kept live so rolling back is
-- `suparag spaces activate OLD`. Every later space lives in
-- suparag_search.chunk_vectors and is dropped by deleting its row (its
-- vectors cascade). The first space is a column of document_chunks, so
-- dropping it is different (worker/spaces.py::drop_space):
--
--   1. its row becomes state 'dropped', kept, not deleted: the one-column
--      index still holds, so no later space can take the column, and a
--      search that names it is told it was dropped;
--   2. its HNSW index is dropped concurrently;
--   3. its vectors are nulled in small transactions.
--
-- The embedding worker reads the column's state inside each write-back
-- transaction, holding it with FOR KEY SHARE; step 1 takes the row FOR UPDATE,
-- so it waits for the write-backs in flight, and every write-back after it
-- sees 'dropped' and writes no column vector. So step 3 leaves none behind.

alter table suparag_private.embedding_spaces
  drop constraint embedding_spaces_state_check;
alter table suparag_private.embedding_spaces
  add constraint embedding_spaces_state_check
    check (state in ('active', 'live', 'dropped')),
  -- Only the column space is kept once dropped; a table space's row is deleted.
  add constraint embedding_spaces_dropped_column
    check (state <> 'dropped' or storage = 'column');

comment on table suparag_private.embedding_spaces is
  'Embedding spaces: (provider, model, dimensions, options). Exactly one is active (searched by default); every live space is kept current by the embedding worker. storage column = document_chunks.embedding; table = suparag_search.chunk_vectors. A dropped column space keeps its row (state dropped) so the column is never reused.';

-- The search functions resolve spaces here: a dropped one is an error that
-- says so, not "no embedding space named".
create or replace function suparag_search.embedding_space(space_name text default null)
returns table (id integer, name text, model text, dimensions integer, storage text,
               active boolean)
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  chosen record;
begin
  select s.id, s.name, s.model, s.dimensions, s.storage, s.state
    into chosen
    from suparag_private.embedding_spaces s
   where (space_name is null and s.state = 'active') or s.name = space_name;
  if not found then
    return;
  end if;
  if chosen.state = 'dropped' then
    raise exception using
      errcode = '22023',
      message = format('the embedding space %s was dropped', chosen.name),
      hint = 'leave space null to search the active space; see `suparag spaces list`';
  end if;
  return query select chosen.id, chosen.name, chosen.model, chosen.dimensions,
                      chosen.storage, chosen.state = 'active';
end
$$;

-- The worker counts a space's model failures on its row (for `suparag spaces
-- status`) and holds the column space's row FOR KEY SHARE while it writes
-- back; both need UPDATE on the row (a row lock asks for it).
grant update (failures, last_error, last_error_at)
  on suparag_private.embedding_spaces to suparag_worker;
create policy "suparag_worker counts embedding space failures"
  on suparag_private.embedding_spaces
  for update to suparag_worker using (true) with check (true);
