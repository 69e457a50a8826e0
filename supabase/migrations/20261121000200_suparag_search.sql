-- suparag: semantic and hybrid search, bounded by the caller's RLS.
--
-- Both functions are security invoker: they see exactly the chunks the caller
-- could select, because the document_chunks policy is applied inside the
-- index scan. With plain HNSW a selective policy starves the scan (it stops
-- after ef_search candidates, most of them invisible: pgvector #259, #479), so
-- both turn on pgvector 0.8's iterative scan, which keeps walking the graph
-- until match_count visible rows are found. relaxed_order may hand rows back
-- slightly out of order; the outer query re-sorts by exact distance.

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
language sql stable
security invoker
set search_path = ''
set hnsw.iterative_scan = 'relaxed_order'
set hnsw.ef_search = 100
as $$
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
  select n.document_id, n.id, n.chunk_index, d.title, n.content, d.metadata,
         1 - n.distance as similarity
  from nearest n
  join public.documents d on d.id = n.document_id
  where match_threshold is null or 1 - n.distance >= match_threshold
  order by n.distance
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
set hnsw.iterative_scan = 'relaxed_order'
set hnsw.ef_search = 100
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
  nearest as materialized (
    select c.id,
           c.embedding operator(extensions.<=>) query_embedding as distance
    from public.document_chunks c
    where c.embedding is not null
      and (hybrid_search.embedding_model is null
           or c.embedding_model = hybrid_search.embedding_model)
      and (filter = '{}'::jsonb
           or exists (select 1 from public.documents fd
                      where fd.id = c.document_id and fd.metadata @> filter))
    order by c.embedding operator(extensions.<=>) query_embedding
    limit greatest(match_count, 0) * 2
  ),
  semantic as (
    select n.id, row_number() over (order by n.distance, n.id) as rank_ix
    from nearest n
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
