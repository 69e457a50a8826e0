-- suparag: match_documents as LangChain's SupabaseVectorStore calls it (issue 12).
--
-- langchain-community's SupabaseVectorStore calls
-- `rpc('match_documents', {query_embedding, filter})` with PostgREST's `limit=k`
-- and never sends match_count; it reads `id`, `content`, `metadata` and
-- `similarity`, and for max_marginal_relevance_search also `embedding` (the
-- vector's text form, which it parses). With match_count defaulting to 10,
-- `similarity_search(q, k=12)` got 10 rows; with no `id`, Document.id was None;
-- with no `embedding`, MMR failed. LangChain's reference SQL defaults
-- match_count to null and returns an id.
--
-- So, with the body otherwise that of 20261121000200:
--   * match_count defaults to null: every chunk the caller may read, nearest
--     first, up to 1,000 rows (Supabase's default `[api] max_rows`, the most one
--     PostgREST read returns); PostgREST's `limit` then cuts that to k. A bound
--     is needed because PostgREST applies its limit outside the call, and a
--     plpgsql function computes all its rows before that: unbounded, the HNSW
--     branch would turn into distances for every readable chunk, sorted.
--   * `id` comes back: the chunk's id (as chunk_id), unique per row, so
--     LangChain's Document.id names the passage it holds.
--   * `embedding` comes back when include_embedding is true; when it is null
--     (the default), only for calls without match_count, i.e. LangChain's,
--     whose MMR needs it. Callers that pass match_count (supabase-py and -js
--     apps, worker/search.py, hybrid_search) get the same rows as before, with
--     `id` and a null `embedding` beside them.
--   * The full-results-under-RLS plan is unchanged: an exact scan for a narrow
--     reader, else HNSW with the iterative scan until the count is found.
--
-- The return type changes, so the function is dropped and created again, with
-- the original's security invoker, pinned search_path, scan settings and
-- grants. hybrid_search (20261121000700) calls it by position with five
-- arguments and an explicit match_count, which resolve to this function.

drop function public.match_documents(extensions.vector, integer, jsonb, double precision, text);

create function public.match_documents(
  query_embedding extensions.vector(384),
  match_count integer default null,
  filter jsonb default '{}'::jsonb,
  match_threshold double precision default null,
  embedding_model text default null,
  include_embedding boolean default null
)
returns table (
  document_id uuid,
  chunk_id bigint,
  chunk_index integer,
  title text,
  content text,
  metadata jsonb,
  similarity double precision,
  id bigint,
  embedding extensions.vector(384)
)
language plpgsql stable
security invoker
set search_path = ''
set hnsw.iterative_scan = 'relaxed_order'
set hnsw.ef_search = 100
as $$
declare
  -- Rows for a call without match_count: Supabase's default `[api] max_rows`,
  -- the most PostgREST hands back from one read anyway.
  unasked_count constant integer := 1000;
  wanted constant integer := greatest(coalesce(match_count, unasked_count), 0);
  with_embedding constant boolean := coalesce(include_embedding, match_count is null);
  -- Below this many readable chunks an exact scan is both cheaper and exact;
  -- above it, HNSW (see 20261121000200 for the two-step count).
  exact_scan_documents constant integer := 500;
  exact_scan_chunks constant integer := 3000;
  readable integer;
  exact boolean := false;
begin
  select count(*) into readable
  from (
    select 1 from public.documents d where d.metadata @> filter limit exact_scan_documents
  ) visible_documents;

  if readable < exact_scan_documents then
    select count(*) into readable
    from (
      select 1
      from public.documents d
      join public.document_chunks c on c.document_id = d.id
      where c.embedding is not null
        and (match_documents.embedding_model is null
             or c.embedding_model = match_documents.embedding_model)
        and d.metadata @> filter
      limit exact_scan_chunks
    ) visible_chunks;
    exact := readable < exact_scan_chunks;
  end if;

  if exact then
    return query
    select c.document_id, c.id, c.chunk_index, d.title, c.content, d.metadata,
           1 - (c.embedding operator(extensions.<=>) query_embedding),
           c.id,
           case when with_embedding then c.embedding end
    from public.documents d
    join public.document_chunks c on c.document_id = d.id
    where c.embedding is not null
      and (match_documents.embedding_model is null
           or c.embedding_model = match_documents.embedding_model)
      and d.metadata @> filter
      and (match_threshold is null
           or 1 - (c.embedding operator(extensions.<=>) query_embedding) >= match_threshold)
    -- "+ 0" keeps the planner off the HNSW index: this branch is the exact one.
    order by (c.embedding operator(extensions.<=>) query_embedding) + 0, c.id
    limit wanted;
    return;
  end if;

  return query
  with nearest as materialized (
    select c.id, c.document_id, c.chunk_index, c.content,
           case when with_embedding then c.embedding end as embedding,
           c.embedding operator(extensions.<=>) query_embedding as distance
    from public.document_chunks c
    where c.embedding is not null
      and (match_documents.embedding_model is null
           or c.embedding_model = match_documents.embedding_model)
      and (filter = '{}'::jsonb
           or exists (select 1 from public.documents fd
                      where fd.id = c.document_id and fd.metadata @> filter))
    order by c.embedding operator(extensions.<=>) query_embedding
    limit wanted
  )
  -- relaxed_order can return rows slightly out of order: sort them exactly,
  -- and apply the threshold here, not in the scan (where it would make the
  -- iterative scan run to its tuple limit).
  select n.document_id, n.id, n.chunk_index, d.title, n.content, d.metadata,
         1 - n.distance, n.id, n.embedding
  from nearest n
  join public.documents d on d.id = n.document_id
  where match_threshold is null or 1 - n.distance >= match_threshold
  order by n.distance, n.id;
end
$$;

comment on function public.match_documents(extensions.vector, integer, jsonb, double precision, text, boolean) is
  'Nearest chunks by cosine similarity among those the caller may read. match_count: rows (null = all, up to 1000; PostgREST''s limit cuts). filter: documents.metadata must contain it. match_threshold: minimum similarity (null = none). embedding_model: only vectors from this model (null = any). include_embedding: return each chunk''s vector (null = only when match_count is null, as LangChain''s SupabaseVectorStore calls it). id = chunk_id.';

revoke all on function public.match_documents(extensions.vector, integer, jsonb, double precision, text, boolean) from public;
grant execute on function public.match_documents(extensions.vector, integer, jsonb, double precision, text, boolean)
  to anon, authenticated, service_role;
