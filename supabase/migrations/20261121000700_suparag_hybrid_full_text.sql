-- suparag: hybrid_search's full-text half through the GIN index under RLS.
--
-- Under RLS, `fts @@ query` cannot use document_chunks_fts_idx: PostgreSQL
-- only runs a qual ahead of a policy (and so as an index condition) when its
-- operator is leakproof, `@@` is not, and only a superuser may mark it so.
-- As anon or authenticated the full-text half was therefore a sequential scan
-- with the policy checked on every chunk (~300 ms at 100k chunks).
--
-- suparag_search.full_text_matches is `security definer`, so its scan is not
-- subject to RLS and uses the index; it applies suparag's read rule itself,
-- to the caller's role and JWT claims (the role PostgREST set is still
-- current_setting('role') inside a security definer function, and the claims
-- are the same request.jwt.claims the policies read). It returns only ids and
-- ranks of chunks the caller may read, so calling it directly reveals nothing
-- a plain select would not. Its rule must stay the policies' rule of
-- 20261121000000: tests/test_rls.py compares the two for every kind of
-- caller, on generated corpora.
--
-- hybrid_search also fetches the rows of its final ids only, by primary key.
--
-- hybrid_search stays `security invoker`: it asks the helper only for callers
-- RLS applies to and whose policies suparag wrote (anon, authenticated);
-- everyone else (service_role, table owners, roles with their own policies)
-- gets the plain query. Every row it returns is still read through the
-- caller's RLS, so a helper that let too much through could widen the
-- candidates, never the results.

begin;

-- Its own schema: the API roles need usage on it to call it from
-- hybrid_search, and suparag_private stays closed to them. PostgREST does not
-- expose it (only `public` is, by default), and it holds nothing else.
create schema suparag_search;
revoke all on schema suparag_search from public;
grant usage on schema suparag_search to anon, authenticated, service_role;

create function suparag_search.full_text_matches(
  query tsquery,
  match_count integer,
  filter jsonb default '{}'::jsonb
)
returns table (id bigint, rank_ix bigint)
language sql stable
security definer
set search_path = ''
as $$
  with caller as (
    select pg_catalog.current_setting('role', true) as role,
           auth.uid() as uid,
           auth.jwt() -> 'app_metadata' ->> 'team' as team
  )
  select c.id,
         row_number() over (order by pg_catalog.ts_rank_cd(c.fts, query) desc, c.id) as rank_ix
  from public.document_chunks c
  join public.documents d on d.id = c.document_id
  cross join caller
  where c.fts @@ query
    and caller.role in ('anon', 'authenticated')
    and (d.visibility = 'public'
         or (caller.role = 'authenticated'
             and (d.owner_id = caller.uid
                  or (d.visibility = 'team' and d.team = caller.team))))
    and (filter = '{}'::jsonb or d.metadata @> filter)
  order by rank_ix
  limit greatest(match_count, 0)
$$;

comment on function suparag_search.full_text_matches(tsquery, integer, jsonb) is
  'Chunks matching query that the calling anon or authenticated user may read (suparag''s read rule, applied to role and JWT claims), ranked by ts_rank_cd; through the GIN index. For hybrid_search.';

revoke all on function suparag_search.full_text_matches(tsquery, integer, jsonb) from public;
-- service_role too: hybrid_search names the helper for every caller (a SQL
-- function's privileges are checked when it is planned), though only anon
-- and authenticated reach it, and for other roles it returns nothing.
grant execute on function suparag_search.full_text_matches(tsquery, integer, jsonb)
  to anon, authenticated, service_role;

create or replace function public.hybrid_search(
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
  with query as materialized (
    select pg_catalog.websearch_to_tsquery('english'::regconfig, query_text) as q,
           pg_catalog.current_setting('role', true) in ('anon', 'authenticated')
             and pg_catalog.row_security_active('public.document_chunks') as by_rule
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
  ),
  -- The best match_count ids first, then their rows: joined the other way
  -- round, the planner (which guesses 1,000 rows per function) hashed every
  -- readable chunk to find these few (~220 ms at 100k chunks).
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

commit;
