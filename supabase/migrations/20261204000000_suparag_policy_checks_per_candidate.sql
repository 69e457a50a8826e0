-- suparag: match_documents checks the read policy per candidate, not by hashing
-- every readable document (issue 17).
--
-- The chunks' read policy is `exists (select 1 from documents d where d.id =
-- document_id)`, itself under the documents' policy. Beside an HNSW scan the
-- planner turns it into a hashed subplan: once per call it reads every document
-- the caller may read and hashes their ids, then probes the hash for each
-- candidate. It chooses so because it counts the policy check once per row the
-- index could return (the whole table), not per row the LIMIT lets through.
-- That is cheap at 10,000 documents and the largest cost at a million chunks
-- (100,000 documents): for a caller who reads 99% of them the HNSW query took
-- 25.4 ms with the hash and 6.2 ms with a primary-key lookup per candidate
-- (EXPLAIN ANALYZE, session 12).
--
-- The planner hashes a subplan only when it expects the hash table to fit in
-- work_mem * hash_mem_multiplier. So the approximate branch plans its one query
-- with both at their minimum (64kB, 1): a caller the planner expects to read
-- more than about 1,500 documents gets a lookup per candidate; one expected to
-- read fewer still gets the hash, which is then small. Planning happens when
-- the query's cursor is opened; the caller's settings are back before the
-- first row is fetched, so the scan and the sort run with the caller's memory
-- (pgvector bounds its iterative scans by work_mem * hnsw.scan_mem_multiplier).
-- For the same reason the candidates are a LIMIT subquery, not a materialized
-- CTE, whose store is sized when the cursor opens. The exact branch is
-- unchanged. hybrid_search's semantic arm is match_documents, so it gains the
-- same.
--
-- Measured on the bench's million chunks (100,000 documents, shared buffers
-- holding the index), 40 queries, k = 10: the reader of 99% of the documents
-- went from 24.9 / 33.7 ms (p50 / p95) to 7.2 / 11.3 ms, the reader of 1%
-- from 26.5 / 32.0 to 19.6 / 24.9 ms (both while a test run shared the cores).
--
-- Signature, results, security invoker and grants are those of 20261203010000.
-- No psql meta-commands: `supabase db push` and `suparag db push` apply it.

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
-- On, unless a narrow caller's counts and exact scan turn it off (local to the call).
set enable_seqscan = on
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
  -- The caller's memory settings, given back before the approximate scan runs.
  caller_work_mem constant text := pg_catalog.current_setting('work_mem');
  caller_hash_mem constant text := pg_catalog.current_setting('hash_mem_multiplier');
  candidates refcursor;
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

  -- A narrow caller's documents are counted and scanned through the policy's
  -- indexes (local to this call; the definition's `set` restores it).
  if suparag_search.few_readable_documents(filter, plan.exact_scan_documents) then
    perform pg_catalog.set_config('enable_seqscan', 'off', true);
  end if;

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

  -- Local to this call: the definition's `set` clauses restore these on return.
  perform pg_catalog.set_config('enable_seqscan', 'on', true);
  perform pg_catalog.set_config('hnsw.ef_search', plan.ef_search::text, true);
  perform pg_catalog.set_config('hnsw.max_scan_tuples', plan.max_scan_tuples::text, true);
  -- Planned with the least memory, so the read policy is checked by a lookup
  -- per candidate rather than by hashing every readable document (see above).
  perform pg_catalog.set_config('work_mem', '64kB', true);
  perform pg_catalog.set_config('hash_mem_multiplier', '1', true);
  open candidates for execute format($sql$
    select c.document_id, c.id, c.chunk_index, d.title, c.content, d.metadata,
           1 - n.distance, c.id, n.embedding
    from (
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
    ) n
    join public.document_chunks c on c.id = n.id
    join public.documents d on d.id = n.document_id
    -- relaxed_order can return rows slightly out of order: sort them exactly,
    -- and apply the threshold here, not in the scan.
    where $4 is null or 1 - n.distance >= $4
    order by n.distance, n.id
    $sql$, stored, query, source, id_col, doc_col, present)
    using query_embedding, filter, wanted, match_threshold, with_embedding, embedding_model;
  -- Planned; the scan and the sort run with the caller's memory.
  perform pg_catalog.set_config('work_mem', caller_work_mem, true);
  perform pg_catalog.set_config('hash_mem_multiplier', caller_hash_mem, true);
  loop
    fetch candidates into document_id, chunk_id, chunk_index, title, content, metadata,
                          similarity, id, embedding;
    exit when not found;
    return next;
  end loop;
  close candidates;
end
$$;

comment on function public.match_documents(extensions.vector, integer, jsonb, double precision, text, boolean, text) is
  'Nearest chunks by cosine similarity among those the caller may read, in one embedding space. query_embedding: at the space''s width. match_count: rows (null = all, up to 1000; PostgREST''s limit cuts). filter: documents.metadata must contain it. match_threshold: minimum similarity (null = none). embedding_model: only vectors from this model (null = any). include_embedding: return each chunk''s vector (null = only when match_count is null, as LangChain''s SupabaseVectorStore calls it). space: the embedding space (null = the active one). id = chunk_id.';

