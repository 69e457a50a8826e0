-- suparag: semantic and hybrid search, bounded by the caller's RLS.
--
-- Both functions are security invoker: they see exactly the chunks the caller
-- could select, because the RLS policies apply inside every scan. With plain
-- HNSW a selective policy starves the scan (it stops after ef_search
-- candidates, most of them invisible: pgvector #259, #479), so
-- match_documents picks one of two plans per call:
--   * the caller reads few chunks (a user who sees 1%): an exact scan of
--     just those, which is small, fast and exact;
--   * the caller reads many: HNSW with pgvector 0.8's iterative scan, which
--     keeps walking the graph until match_count visible rows are found.
-- hybrid_search uses match_documents for its semantic half.

create function public.match_documents(
  query_embedding extensions.vector(384),
  match_count integer default 10,
  filter jsonb default '{}'::jsonb,
  match_threshold double precision default null,
  embedding_model text default null
)
returns table (
  document_id uuid,
  chunk_id bigint,
  chunk_index integer,
  title text,
  content text,
  metadata jsonb,
  similarity double precision
)
language plpgsql stable
security invoker
set search_path = ''
set hnsw.iterative_scan = 'relaxed_order'
set hnsw.ef_search = 100
as $$
declare
  -- Below this many readable chunks an exact scan is both cheaper and exact;
  -- above it, HNSW. Filtered HNSW loses recall when the filter is very
  -- selective (the caller's neighbours are far apart in the graph), which is
  -- exactly the case where the exact scan is small.
  -- Counted in two steps so that a broad reader pays only for reading a few
  -- hundred document rows (0.3 ms at 100k chunks, against 3.5 ms for
  -- counting 3,000 chunks): documents first, chunks only for a narrow reader.
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
           1 - (c.embedding operator(extensions.<=>) query_embedding)
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
    limit greatest(match_count, 0);
    return;
  end if;

  return query
  with nearest as materialized (
    select c.id, c.document_id, c.chunk_index, c.content,
           c.embedding operator(extensions.<=>) query_embedding as distance
    from public.document_chunks c
    where c.embedding is not null
      and (match_documents.embedding_model is null
           or c.embedding_model = match_documents.embedding_model)
      and (filter = '{}'::jsonb
           or exists (select 1 from public.documents fd
                      where fd.id = c.document_id and fd.metadata @> filter))
    order by c.embedding operator(extensions.<=>) query_embedding
    limit greatest(match_count, 0)
  )
  -- relaxed_order can return rows slightly out of order: sort them exactly,
  -- and apply the threshold here, not in the scan (where it would make the
  -- iterative scan run to its tuple limit).
  select n.document_id, n.id, n.chunk_index, d.title, n.content, d.metadata,
         1 - n.distance
  from nearest n
  join public.documents d on d.id = n.document_id
  where match_threshold is null or 1 - n.distance >= match_threshold
  order by n.distance, n.id;
end
$$;

comment on function public.match_documents(extensions.vector, integer, jsonb, double precision, text) is
  'Nearest chunks by cosine similarity among those the caller may read. filter: documents.metadata must contain it. match_threshold: minimum similarity (null = none). embedding_model: only vectors from this model (null = any).';

create function public.hybrid_search(
  query_text text,
  query_embedding extensions.vector(384),
  match_count integer default 10,
  filter jsonb default '{}'::jsonb,
  full_text_weight double precision default 1,
  semantic_weight double precision default 1,
  rrf_k integer default 50,
  embedding_model text default null
)
returns table (
  document_id uuid,
  chunk_id bigint,
  chunk_index integer,
  title text,
  content text,
  metadata jsonb,
  score double precision
)
language sql stable
security invoker
set search_path = ''
as $$
  with full_text as materialized (
    select c.id,
           row_number() over (
             order by pg_catalog.ts_rank_cd(c.fts, pg_catalog.websearch_to_tsquery('english'::regconfig, query_text)) desc,
                      c.id
           ) as rank_ix
    from public.document_chunks c
    where c.fts @@ pg_catalog.websearch_to_tsquery('english'::regconfig, query_text)
      and (filter = '{}'::jsonb
           or exists (select 1 from public.documents fd
                      where fd.id = c.document_id and fd.metadata @> filter))
    order by rank_ix
    limit greatest(match_count, 0) * 2
  ),
  -- The semantic half is match_documents itself, so both functions share
  -- one RLS-bounded, full-result nearest-neighbour search.
  semantic as (
    select m.chunk_id as id,
           row_number() over (order by m.similarity desc, m.chunk_id) as rank_ix
    from public.match_documents(query_embedding, greatest(match_count, 0) * 2, filter,
                                null, embedding_model) m
  ),
  fused as (
    select coalesce(f.id, s.id) as id,
           coalesce(1.0 / (rrf_k + f.rank_ix), 0.0) * full_text_weight
             + coalesce(1.0 / (rrf_k + s.rank_ix), 0.0) * semantic_weight as score
    from full_text f
    full outer join semantic s on s.id = f.id
  )
  select c.document_id, c.id, c.chunk_index, d.title, c.content, d.metadata,
         fu.score::double precision
  from fused fu
  join public.document_chunks c on c.id = fu.id
  join public.documents d on d.id = c.document_id
  order by fu.score desc, c.id
  limit greatest(match_count, 0)
$$;

comment on function public.hybrid_search(text, extensions.vector, integer, jsonb, double precision, double precision, integer, text) is
  'Reciprocal rank fusion of full-text (websearch syntax) and semantic rankings over the chunks the caller may read. score = sum of weight / (rrf_k + rank).';

revoke all on function public.match_documents(extensions.vector, integer, jsonb, double precision, text) from public;
revoke all on function public.hybrid_search(text, extensions.vector, integer, jsonb, double precision, double precision, integer, text) from public;
grant execute on function public.match_documents(extensions.vector, integer, jsonb, double precision, text)
  to anon, authenticated, service_role;
grant execute on function public.hybrid_search(text, extensions.vector, integer, jsonb, double precision, double precision, integer, text)
  to anon, authenticated, service_role;
