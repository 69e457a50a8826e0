-- suparag: table spaces as cheap under RLS as the column space, and a stored
-- default for hybrid_search's fusion weights, per space (issues 10 and 11).
--
-- 1. suparag_search.chunk_vectors carries its chunk's document_id, so its
--    read policy asks public.documents directly (one hop, as the chunk policy
--    of 20261121000000 does) instead of asking document_chunks, whose policy
--    then asks documents (two hops for every HNSW candidate). A trigger fills
--    document_id from the chunk on every write, so writers (the worker, tests,
--    hand-written inserts) do not change; a chunk's document never changes
--    (the worker replaces chunks, it does not move them).
--
-- 2. hybrid_search's full_text_weight, semantic_weight and rrf_k default to
--    null and are then read from suparag_private.hybrid_defaults for the
--    searched space (falling back to 1, 1, 50: the landed defaults). Callers
--    that pass weights get exactly those. The table is private and is
--    changed only by `suparag eval defaults set` / `suparag eval tune
--    --apply` (explicit commands that print old -> new), never by tune alone.
--
-- No psql meta-commands: `supabase db push` and `suparag db push` apply it.

-- 1. chunk_vectors.document_id --------------------------------------------------

alter table suparag_search.chunk_vectors add column document_id uuid;

update suparag_search.chunk_vectors v
set document_id = c.document_id
from public.document_chunks c
where c.id = v.chunk_id;

alter table suparag_search.chunk_vectors alter column document_id set not null;

-- A narrow reader's exact scan goes from its documents to their vectors.
create index chunk_vectors_space_document_idx
  on suparag_search.chunk_vectors (space_id, document_id);

comment on column suparag_search.chunk_vectors.document_id is
  'The chunk''s document (filled by a trigger from document_chunks), so the read policy asks documents directly.';

create function suparag_private.chunk_vectors_document()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  select c.document_id into new.document_id
  from public.document_chunks c where c.id = new.chunk_id;
  if new.document_id is null then
    -- What the foreign key would say: the chunk is gone (a write-back replaced it).
    raise exception using
      errcode = '23503',
      message = format('chunk %s is not present in table document_chunks', new.chunk_id),
      hint = 'the chunk was replaced; its document''s job writes the new chunks'' vectors';
  end if;
  return new;
end
$$;

comment on function suparag_private.chunk_vectors_document() is
  'Trigger: sets chunk_vectors.document_id from the chunk (the read policy''s one hop to documents).';

revoke all on function suparag_private.chunk_vectors_document() from public, anon, authenticated;

create trigger chunk_vectors_document
  before insert or update of chunk_id, document_id on suparag_search.chunk_vectors
  for each row execute function suparag_private.chunk_vectors_document();

drop policy "anon reads vectors of readable chunks" on suparag_search.chunk_vectors;
drop policy "users read vectors of readable chunks" on suparag_search.chunk_vectors;

-- As for chunks: the subquery runs under the caller's documents policies, so a
-- vector is visible exactly when its document (hence its chunk) is.
create policy "anon reads vectors of readable documents"
  on suparag_search.chunk_vectors for select to anon
  using (exists (select 1 from public.documents d where d.id = document_id));

create policy "users read vectors of readable documents"
  on suparag_search.chunk_vectors for select to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id));

-- progress and failures, for `suparag spaces status` ---------------------------

-- When each vector was written: the backfill's rate (vectors in the last
-- minute) and its ETA. now() is stable, so existing rows get the migration's
-- time without a table rewrite.
alter table suparag_search.chunk_vectors
  add column written_at timestamptz not null default now();

-- A space's model failures (backfill or live edit), so status can show them.
alter table suparag_private.embedding_spaces
  add column failures integer not null default 0,
  add column last_error text,
  add column last_error_at timestamptz;

-- match_documents: a table space's candidates from chunk_vectors alone ---------

-- As 20261202050000, but the nearest rows are found in the space's vectors
-- alone (the chunk id and document id are both on them), and the chunks are
-- joined for the returned rows only: each HNSW candidate passes one policy
-- (one hop to documents), as the column space's candidates do.
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
set hnsw.ef_search = 100
as $$
declare
  -- Rows for a call without match_count: Supabase's default `[api] max_rows`.
  unasked_count constant integer := 1000;
  wanted constant integer := greatest(coalesce(match_count, unasked_count), 0);
  with_embedding constant boolean := coalesce(include_embedding, match_count is null);
  -- Below this many readable chunks an exact scan is both cheaper and exact;
  -- above it, HNSW (see 20261121000200 for the two-step count).
  exact_scan_documents constant integer := 500;
  exact_scan_chunks constant integer := 3000;
  chosen record;
  -- The space's stored vector, the query at the same type, and the join
  -- that brings its vectors: literals, so the planner matches the space's
  -- partial expression index.
  stored text;
  query text;
  source text;     -- where the space's vectors are: the chunks, or chunk_vectors
  id_col text;     -- ... their chunk id
  doc_col text;    -- ... and their document id (both are read without a join)
  present text;
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
  end if;

  select count(*) into readable
  from (
    select 1 from public.documents d where d.metadata @> filter limit exact_scan_documents
  ) visible_documents;

  if readable < exact_scan_documents then
    execute format(
      'select count(*) from (select 1 from public.documents d'
      ' join %s on %s = d.id'
      ' where %s and d.metadata @> $2 limit %s) visible_chunks',
      source, doc_col, present, exact_scan_chunks)
      into readable
      using query_embedding, filter, wanted, match_threshold, with_embedding, embedding_model;
    exact := readable < exact_scan_chunks;
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

revoke all on function public.match_documents(extensions.vector, integer, jsonb, double precision, text, boolean, text) from public;
grant execute on function public.match_documents(extensions.vector, integer, jsonb, double precision, text, boolean, text)
  to anon, authenticated, service_role;


-- 2. the stored hybrid_search defaults, per space --------------------------------

create table suparag_private.hybrid_defaults (
  space_id integer primary key
    references suparag_private.embedding_spaces (id) on delete cascade,
  full_text_weight double precision not null check (full_text_weight >= 0),
  semantic_weight double precision not null check (semantic_weight >= 0),
  rrf_k integer not null check (rrf_k >= 1),
  -- what set it, e.g. 'suparag eval tune faq.jsonl (sha256 1a2b3c4d)'
  source text not null default 'suparag eval defaults set',
  updated_at timestamptz not null default now()
);

comment on table suparag_private.hybrid_defaults is
  'hybrid_search''s weights for a space when the caller passes none. Changed only by `suparag eval defaults set` or `suparag eval tune --apply`, which print old -> new.';

alter table suparag_private.hybrid_defaults enable row level security;
revoke all on suparag_private.hybrid_defaults from public, anon, authenticated;
grant all on suparag_private.hybrid_defaults to service_role;

create function suparag_search.hybrid_defaults(space_name text default null)
returns table (full_text_weight double precision, semantic_weight double precision,
               rrf_k integer)
language sql stable
security definer
set search_path = ''
as $$
  -- The landed defaults (1, 1, 50) unless the space has stored ones.
  select coalesce(h.full_text_weight, 1), coalesce(h.semantic_weight, 1),
         coalesce(h.rrf_k, 50)
  from suparag_search.embedding_space(space_name) s
  left join suparag_private.hybrid_defaults h on h.space_id = s.id
$$;

comment on function suparag_search.hybrid_defaults(text) is
  'hybrid_search''s default weights for the space named space_name (null: the active one): stored ones, else 1, 1, 50.';

revoke all on function suparag_search.hybrid_defaults(text) from public;
grant execute on function suparag_search.hybrid_defaults(text)
  to anon, authenticated, service_role;

-- As 20261202050000, with the weights defaulting to the space's stored ones.
drop function public.hybrid_search(text, extensions.vector, integer, jsonb, double precision,
                                   double precision, integer, text, text);

create function public.hybrid_search(
  query_text text,
  query_embedding extensions.vector,
  match_count integer default 10,
  filter jsonb default '{}'::jsonb,
  full_text_weight double precision default null,
  semantic_weight double precision default null,
  rrf_k integer default null,
  embedding_model text default null,
  space text default null
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
  with query as materialized (
    select pg_catalog.websearch_to_tsquery('english'::regconfig, query_text) as q,
           pg_catalog.current_setting('role', true) in ('anon', 'authenticated')
             and pg_catalog.row_security_active('public.document_chunks') as by_rule
  ),
  weights as materialized (
    -- What the caller passed, else the space's stored default (an unknown space
    -- leaves no row here; match_documents below then names it in its error).
    -- Qualified: in SQL functions a column name hides a parameter's.
    select coalesce(hybrid_search.full_text_weight, h.full_text_weight) as full_text,
           coalesce(hybrid_search.semantic_weight, h.semantic_weight) as semantic,
           coalesce(hybrid_search.rrf_k, h.rrf_k) as k
    from suparag_search.hybrid_defaults(space) h
  ),
  full_text as materialized (
    -- anon and authenticated under RLS: the index, through suparag's read rule
    select m.id, m.rank_ix
    from query, suparag_search.full_text_matches(query.q, greatest(match_count, 0) * 2,
                                                  filter) m
    where query.by_rule
    union all
    -- everyone else: the plain query, under whatever RLS applies to them
    select r.id, r.rank_ix
    from query, lateral (
      select c.id,
             row_number() over (order by pg_catalog.ts_rank_cd(c.fts, query.q) desc, c.id)
               as rank_ix
      from public.document_chunks c
      where c.fts @@ query.q
        and (filter = '{}'::jsonb
             or exists (select 1 from public.documents fd
                        where fd.id = c.document_id and fd.metadata @> filter))
      order by rank_ix
      limit greatest(match_count, 0) * 2
    ) r
    where not query.by_rule
  ),
  semantic as (
    select m.chunk_id as id,
           row_number() over (order by m.similarity desc, m.chunk_id) as rank_ix
    from public.match_documents(query_embedding, greatest(match_count, 0) * 2, filter,
                                null, embedding_model, false, space) m
  ),
  fused as (
    select coalesce(f.id, s.id) as id,
           coalesce(1.0 / (w.k + f.rank_ix), 0.0) * w.full_text
             + coalesce(1.0 / (w.k + s.rank_ix), 0.0) * w.semantic as score
    from full_text f
    full outer join semantic s on s.id = f.id
    cross join weights w
  ),
  top as materialized (
    select fu.id, fu.score
    from fused fu
    order by fu.score desc, fu.id
    limit greatest(match_count, 0)
  )
  select c.document_id, c.id, c.chunk_index, d.title, c.content, d.metadata,
         t.score::double precision
  from top t
  join public.document_chunks c on c.id = t.id
  join public.documents d on d.id = c.document_id
  order by t.score desc, c.id
$$;

comment on function public.hybrid_search(text, extensions.vector, integer, jsonb, double precision, double precision, integer, text, text) is
  'Full text and semantic search fused by reciprocal rank, among chunks the caller may read. query_embedding: at the width of the space (null = the active one). full_text_weight, semantic_weight, rrf_k: null = the space''s stored default (`suparag eval defaults`), else 1, 1, 50.';

revoke all on function public.hybrid_search(text, extensions.vector, integer, jsonb, double precision, double precision, integer, text, text) from public;
grant execute on function public.hybrid_search(text, extensions.vector, integer, jsonb, double precision, double precision, integer, text, text)
  to anon, authenticated, service_role;
