-- suparag: a narrow reader's search no longer reads every document (issue 17).
--
-- match_documents decides between an exact scan and HNSW by counting the
-- caller's readable documents, up to a limit D. Under RLS that count was a
-- sequential scan of public.documents with the policy checked on each row:
-- a broad reader reaches D in the first pages, but a reader of few documents
-- among many (the "1% reader") read the whole table on every call, and the
-- chunk count and the exact scan read it again. The bench had hidden it: its
-- narrow reader's documents were the first 1% of the table.
--
-- Two changes; results unchanged (every query still runs under the caller's
-- RLS, these only steer the plan, and the decision uses the same counts):
--   * documents_public_idx, a partial index on public documents. With it each
--     arm of suparag's read policy (public, own, team) has an index, so
--     PostgreSQL can read a caller's documents with a BitmapOr of three index
--     scans instead of a sequential scan.
--   * Which of the two to use is decided per call from a sample of about
--     1,000 documents (tablesample system, under RLS), in
--     suparag_search.few_readable_documents. The planner cannot
--     decide it: the policy compares with auth.uid() and the JWT's team,
--     which are unknown when it plans, so it guesses the same share for every
--     caller. A narrow caller (fewer than sqrt(D * N) readable documents,
--     estimated) gets the indexes, with enable_seqscan off for the rest of
--     the call; a broad caller keeps the scan that stops at D.
-- A project with policies of its own still gets correct results; without an
-- index for each arm of its policies the narrow path scans as before.
--
-- No psql meta-commands: `supabase db push` and `suparag db push` apply it.

create index documents_public_idx on public.documents (id) where visibility = 'public';

create function suparag_search.few_readable_documents(
  filter jsonb,
  wanted double precision
)
returns boolean
language plpgsql stable
security invoker
set search_path = ''
as $$
declare
  -- Documents sampled (about; tablesample system takes whole pages).
  sample_rows constant double precision := 1000;
  n double precision := suparag_search.row_estimate('public', 'documents');
  sampled bigint;
begin
  -- A table this small is scanned whole for about the price of a sample.
  if n < 5 * sample_rows then
    return false;
  end if;
  -- Under the caller's RLS: the readable share of a fixed sample of pages.
  execute format(
    'select count(*) from public.documents d tablesample system (%s) repeatable (0)'
    ' where d.metadata @> $1',
    least(100, 100 * sample_rows / n))
    into sampled
    using coalesce(filter, '{}'::jsonb);
  -- Reading R readable documents by index costs about R; a scan for the first
  -- `wanted` of them reads about wanted * n / R rows. Equal at sqrt(wanted * n).
  return sampled * n / sample_rows < pg_catalog.sqrt(greatest(wanted, 1) * n);
end
$$;

comment on function suparag_search.few_readable_documents(jsonb, double precision) is
  'Whether the caller (under RLS) reads few enough documents matching filter that reading them through the indexes beats scanning for `wanted` of them: estimated from a sample of about 1,000 documents. For match_documents'' plan.';

revoke all on function suparag_search.few_readable_documents(jsonb, double precision) from public;
grant execute on function suparag_search.few_readable_documents(jsonb, double precision)
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

