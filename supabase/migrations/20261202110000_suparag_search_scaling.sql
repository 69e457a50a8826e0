-- suparag: match_documents' plan scales with the table, not with constants
-- (issue 17, "A million chunks").
--
-- Until now match_documents chose its plan with numbers measured at 100,000
-- chunks: an exact scan below 500 readable documents / 3,000 readable chunks,
-- else HNSW with hnsw.ef_search = 100 and pgvector's default
-- hnsw.max_scan_tuples (20,000). At a million chunks ef_search 100 found 82%
-- of a broad reader's true top 10, and a 1% reader (10,000 chunks) took the
-- HNSW plan and got 94%. Now the numbers come from the space's size, read
-- from the catalog's estimate (pg_class.reltuples of its HNSW index, kept by
-- ANALYZE and VACUUM; readable by every role, no count), and from the number
-- of rows asked for, k:
--
--   * Exact scan below T = max(3000, 3 * sqrt(k * N)) readable chunks. An
--     exact scan costs about one row per readable chunk R; HNSW under a
--     filter that passes R of N rows reads about k * N / R rows before k
--     pass, each dearer than an exact row (graph hops, then the same policy
--     check). The two meet where R^2 ~ c * k * N, i.e. R ~ sqrt(c) * sqrt(k*N):
--     the landed 3,000 at 100,000 chunks and k = 10 is 3 * sqrt(k * N), so
--     the factor 3 keeps the choice measured there and grows it as sqrt(N).
--     The documents step stops at T / (chunks per document), from the same
--     estimates (6, the landed 3,000 / 500, while they are unknown).
--   * hnsw.ef_search = max(100, k, 100 * (N / 100,000)^(2/3)), at most 1,000
--     (pgvector's limit): 100 up to 100k, 209 at 300k, 465 at a million.
--     Recall at a fixed ef_search falls as the graph grows. Plain HNSW (m 16,
--     ef_construction 64, no RLS) over the bench's clustered vectors, recall@10
--     of 100 queries at ef_search 100 / 200 / 400 / 1,000: 100k 0.999 (0.984
--     at 40); 300k 0.946 / 0.979 / 0.989 / 0.989 (0.871 at 40); a million
--     0.839 / 0.876 / 0.945 / 0.950 (0.920 at 300). At a million recall stops
--     near 0.95 from 400 on: past that the graph (ef_construction), not the
--     search, limits it.
--   * hnsw.max_scan_tuples is at least 2 * k * N / T: a reader on the HNSW
--     plan reads at least T chunks, so about k * N / T rows are visited
--     before k pass its policy; below that the iterative scan stops early
--     and returns fewer than k rows.
--
-- suparag_search.search_plan(k, vectors, documents) computes these numbers,
-- so they can be read and tested without a table of that size. The function
-- keeps `set hnsw.ef_search` and `set hnsw.max_scan_tuples` in its
-- definition: PostgreSQL then undoes the set_config(..., true) calls inside
-- it when it returns, so the caller's settings are never changed. Signature,
-- results, security invoker and grants are those of 20261202090000.
--
-- No psql meta-commands: `supabase db push` and `suparag db push` apply it.

create function suparag_search.search_plan(
  wanted integer,
  vectors double precision,
  documents double precision default null
)
returns table (
  exact_scan_chunks integer,
  exact_scan_documents integer,
  ef_search integer,
  max_scan_tuples integer
)
language sql immutable
security invoker
set search_path = ''
as $$
  with given as (
    select greatest(coalesce(wanted, 0), 1)::double precision as k,
           greatest(coalesce(vectors, 0), 0) as n,
           case when coalesce(documents, 0) > 0 and coalesce(vectors, 0) > 0
                then greatest(vectors / documents, 1) else 6 end as per_document
  ),
  limits as (
    select g.*, greatest(3000, ceil(3 * pg_catalog.sqrt(g.k * g.n)))::integer as chunks
    from given g
  )
  select l.chunks,
         greatest(ceil(l.chunks / l.per_document), 1)::integer,
         -- 100 (the landed value, recall 1.0 at 100,000 bench vectors) growing
         -- as (N / 100,000)^(2/3), at least k, at most pgvector's 1,000.
         least(1000, greatest(100, l.k,
                              ceil(100 * pg_catalog.power(l.n / 100000, 2.0 / 3))))::integer,
         least(2147483647, greatest(20000, ceil(2 * l.k * l.n / l.chunks)))::integer
  from limits l
$$;

comment on function suparag_search.search_plan(integer, double precision, double precision) is
  'match_documents'' plan for k = wanted rows in a space of `vectors` vectors over `documents` documents (catalog estimates): exact scan below exact_scan_chunks readable chunks (counted after exact_scan_documents documents), else HNSW with these ef_search and max_scan_tuples.';

revoke all on function suparag_search.search_plan(integer, double precision, double precision) from public;
grant execute on function suparag_search.search_plan(integer, double precision, double precision)
  to anon, authenticated, service_role;


-- The estimate of a relation's rows: pg_class.reltuples (-1 until the first
-- ANALYZE or VACUUM, then 0 here: search_plan's floors apply).
create function suparag_search.row_estimate(schema_name text, relation_name text)
returns double precision
language sql stable
security invoker
set search_path = ''
as $$
  select coalesce((select greatest(c.reltuples, 0)::double precision
                   from pg_catalog.pg_class c
                   join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                   where n.nspname = schema_name and c.relname = relation_name), 0)
$$;

comment on function suparag_search.row_estimate(text, text) is
  'The catalog''s row estimate of schema_name.relation_name (pg_class.reltuples; 0 when unknown or missing). For match_documents'' plan.';

revoke all on function suparag_search.row_estimate(text, text) from public;
grant execute on function suparag_search.row_estimate(text, text)
  to anon, authenticated, service_role;


create or replace function public.match_documents(
  query_embedding extensions.vector,
  match_count integer default null,
  filter jsonb default '{}'::jsonb,
  match_threshold double precision default null,
  embedding_model text default null,
  include_embedding boolean default null,
  space text default null
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
  embedding extensions.vector
)
language plpgsql stable
security invoker
set search_path = ''
set hnsw.iterative_scan = 'relaxed_order'
-- Defaults here; the plan sets both per call (local to this call).
set hnsw.ef_search = 100
set hnsw.max_scan_tuples = 20000
as $$
declare
  -- Rows for a call without match_count: Supabase's default `[api] max_rows`.
  unasked_count constant integer := 1000;
  wanted constant integer := greatest(coalesce(match_count, unasked_count), 0);
  with_embedding constant boolean := coalesce(include_embedding, match_count is null);
  chosen record;
  plan record;
  -- The space's stored vector, the query at the same type, and the join
  -- that brings its vectors: literals, so the planner matches the space's
  -- partial expression index.
  stored text;
  query text;
  source text;     -- where the space's vectors are: the chunks, or chunk_vectors
  id_col text;     -- ... their chunk id
  doc_col text;    -- ... and their document id (both are read without a join)
  present text;
  vectors double precision;  -- the space's size, from the catalog
  readable integer;
  exact boolean := false;
begin
  select * into chosen from suparag_search.embedding_space(space);
  if not found then
    raise exception using
      errcode = '22023',
      message = case when space is null then 'no embedding space is active'
                     else format('no embedding space named %s', space) end,
      hint = 'see `suparag spaces list`';
  end if;
  if extensions.vector_dims(query_embedding) <> chosen.dimensions then
    raise exception using
      errcode = '22023',
      message = format('query_embedding has %s dimensions; the %s embedding space %s takes %s',
                       extensions.vector_dims(query_embedding),
                       case when chosen.active then 'active' else 'chosen' end,
                       chosen.name, chosen.dimensions),
      hint = format('embed the query with %s, or name another space with `space`',
                    chosen.model);
  end if;

  if chosen.storage = 'column' then
    source := 'public.document_chunks c';
    id_col := 'c.id';
    doc_col := 'c.document_id';
    stored := 'c.embedding';
    query := '$1';
    present := 'c.embedding is not null and ($6 is null or c.embedding_model = $6)';
    vectors := suparag_search.row_estimate('public', 'document_chunks_embedding_idx');
  else
    if embedding_model is not null and embedding_model <> chosen.model then
      raise exception using
        errcode = '22023',
        message = format('the embedding space %s holds vectors of %s, not %s',
                         chosen.name, chosen.model, embedding_model),
        hint = 'leave embedding_model null, or name the space that holds that model';
    end if;
    -- The candidates come from chunk_vectors alone (its policy asks documents,
    -- one hop); chunks are joined for the rows returned only.
    source := 'suparag_search.chunk_vectors v';
    id_col := 'v.chunk_id';
    doc_col := 'v.document_id';
    if chosen.dimensions > 2000 then  -- halfvec above vector's HNSW limit
      stored := format('(v.embedding::extensions.halfvec(%s))', chosen.dimensions);
      query := format('$1::extensions.halfvec(%s)', chosen.dimensions);
    else
      stored := format('(v.embedding::extensions.vector(%s))', chosen.dimensions);
      query := '$1';
    end if;
    present := format('v.space_id = %s', chosen.id);
    -- The space's partial HNSW index (worker/spaces.py names it).
    vectors := suparag_search.row_estimate('suparag_search',
                                           format('chunk_vectors_space_%s_hnsw', chosen.id));
  end if;

  select * into plan
  from suparag_search.search_plan(wanted, vectors,
                                  suparag_search.row_estimate('public', 'documents'));

  select count(*) into readable
  from (
    select 1 from public.documents d where d.metadata @> filter
    limit plan.exact_scan_documents
  ) visible_documents;

  if readable < plan.exact_scan_documents then
    execute format(
      'select count(*) from (select 1 from public.documents d'
      ' join %s on %s = d.id'
      ' where %s and d.metadata @> $2 limit %s) visible_chunks',
      source, doc_col, present, plan.exact_scan_chunks)
      into readable
      using query_embedding, filter, wanted, match_threshold, with_embedding, embedding_model;
    exact := readable < plan.exact_scan_chunks;
  end if;

  if exact then
    return query execute format($sql$
      with nearest as materialized (
        select %4$s as id, %5$s as document_id,
               %1$s operator(extensions.<=>) %2$s as distance,
               case when $5 then %1$s::extensions.vector end as embedding
        from public.documents d
        join %3$s on %5$s = d.id
        where %6$s
          and d.metadata @> $2
          and ($4 is null or 1 - (%1$s operator(extensions.<=>) %2$s) >= $4)
        -- "+ 0" keeps the planner off the HNSW index: this branch is the exact one.
        order by (%1$s operator(extensions.<=>) %2$s) + 0, %4$s
        limit $3
      )
      select c.document_id, c.id, c.chunk_index, d.title, c.content, d.metadata,
             1 - n.distance, c.id, n.embedding
      from nearest n
      join public.document_chunks c on c.id = n.id
      join public.documents d on d.id = n.document_id
      order by n.distance, n.id
      $sql$, stored, query, source, id_col, doc_col, present)
      using query_embedding, filter, wanted, match_threshold, with_embedding, embedding_model;
    return;
  end if;

  -- Local to this call: the definition's `set` clauses restore both on return.
  perform pg_catalog.set_config('hnsw.ef_search', plan.ef_search::text, true);
  perform pg_catalog.set_config('hnsw.max_scan_tuples', plan.max_scan_tuples::text, true);

  return query execute format($sql$
    with nearest as materialized (
      select %4$s as id, %5$s as document_id,
             case when $5 then %1$s::extensions.vector end as embedding,
             %1$s operator(extensions.<=>) %2$s as distance
      from %3$s
      where %6$s
        and ($2 = '{}'::jsonb
             or exists (select 1 from public.documents fd
                        where fd.id = %5$s and fd.metadata @> $2))
      order by %1$s operator(extensions.<=>) %2$s
      limit $3
    )
    -- relaxed_order can return rows slightly out of order: sort them exactly,
    -- and apply the threshold here, not in the scan.
    select c.document_id, c.id, c.chunk_index, d.title, c.content, d.metadata,
           1 - n.distance, c.id, n.embedding
    from nearest n
    join public.document_chunks c on c.id = n.id
    join public.documents d on d.id = n.document_id
    where $4 is null or 1 - n.distance >= $4
    order by n.distance, n.id
    $sql$, stored, query, source, id_col, doc_col, present)
    using query_embedding, filter, wanted, match_threshold, with_embedding, embedding_model;
end
$$;

comment on function public.match_documents(extensions.vector, integer, jsonb, double precision, text, boolean, text) is
  'Nearest chunks by cosine similarity among those the caller may read, in one embedding space. query_embedding: at the space''s width. match_count: rows (null = all, up to 1000; PostgREST''s limit cuts). filter: documents.metadata must contain it. match_threshold: minimum similarity (null = none). embedding_model: only vectors from this model (null = any). include_embedding: return each chunk''s vector (null = only when match_count is null, as LangChain''s SupabaseVectorStore calls it). space: the embedding space (null = the active one). id = chunk_id.';
