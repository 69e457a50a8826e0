-- suparag: documents and their chunks, guarded by row level security.
--
-- Who may read a document: everyone for `public`, its owner, and members of
-- its team for `team`. Team membership comes only from the JWT's app_metadata,
-- which the operator sets; user_metadata is user-writable and never consulted.
-- A chunk is readable exactly when its document is: the chunk policy asks the
-- documents table, so the documents policies decide both.

create extension if not exists vector with schema extensions;

-- Iterative index scans (hnsw.iterative_scan) arrived in pgvector 0.8; without
-- them a filtered HNSW search silently returns too few rows.
do $$
begin
  if (select string_to_array(extversion, '.')::int[] from pg_catalog.pg_extension where extname = 'vector')
     < array[0, 8] then
    raise exception 'suparag needs pgvector >= 0.8 (found %): run `alter extension vector update`',
      (select extversion from pg_catalog.pg_extension where extname = 'vector');
  end if;
end
$$;

-- The private schema: queue, settings and worker-only functions. PostgREST
-- serves only `public`, and the API roles get no usage here.
create schema if not exists suparag_private;
revoke all on schema suparag_private from public, anon, authenticated;
grant usage on schema suparag_private to service_role;
comment on schema suparag_private is
  'suparag internals (embedding queue, settings, worker functions); not exposed through the API.';

-- documents ---------------------------------------------------------------------

create table public.documents (
  id uuid primary key default gen_random_uuid(),
  owner_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  team text,
  visibility text not null default 'private'
    check (visibility in ('private', 'team', 'public')),
  title text not null default '',
  content text not null default '',
  metadata jsonb not null default '{}'::jsonb
    check (jsonb_typeof(metadata) = 'object'),
  -- Bumped by trigger whenever title or content changes; a worker writes
  -- vectors back only if the version it embedded is still current.
  content_version bigint not null default 1,
  embedding_status text not null default 'pending'
    check (embedding_status in ('pending', 'ready', 'failed')),
  embedding_model text,
  embedded_at timestamptz,
  embedding_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint documents_team_visibility_needs_team
    check (visibility <> 'team' or team is not null)
);

comment on table public.documents is
  'Source documents for retrieval. Readable when public, owned, or shared with the caller''s app_metadata team.';
comment on column public.documents.content_version is
  'Incremented when title or content changes; guards embedding write-back against stale results.';
comment on column public.documents.embedding_status is
  'pending until the worker has embedded the current content_version, then ready; failed after the retry cap.';

create index documents_owner_id_idx on public.documents (owner_id);
create index documents_team_idx on public.documents (team) where visibility = 'team';
create index documents_metadata_idx on public.documents using gin (metadata jsonb_path_ops);

-- document_chunks ---------------------------------------------------------------

create table public.document_chunks (
  id bigint generated always as identity primary key,
  document_id uuid not null references public.documents (id) on delete cascade,
  chunk_index integer not null check (chunk_index >= 0),
  content text not null,
  embedding extensions.vector(384),
  embedding_model text,
  content_hash text not null,
  fts tsvector generated always as (to_tsvector('english'::regconfig, content)) stored,
  created_at timestamptz not null default now(),
  unique (document_id, chunk_index)
);

comment on table public.document_chunks is
  'Embedded pieces of documents; written only by the embedding worker, readable exactly when the document is.';
comment on column public.document_chunks.embedding_model is
  'The model that produced the vector; vectors from different models are never compared.';
comment on column public.document_chunks.content_hash is
  'Hash of the embedded text, so unchanged chunks keep their vectors instead of being embedded again.';

create index document_chunks_embedding_idx on public.document_chunks
  using hnsw (embedding extensions.vector_cosine_ops);
create index document_chunks_fts_idx on public.document_chunks using gin (fts);

-- keep content_version and status honest ---------------------------------------

create function suparag_private.documents_track_content() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    new.content_version := 1;
    new.embedding_status := 'pending';
    new.embedded_at := null;
    new.embedding_error := null;
  elsif new.title is distinct from old.title or new.content is distinct from old.content then
    new.content_version := old.content_version + 1;
    new.embedding_status := 'pending';
    new.embedding_error := null;
  end if;
  new.updated_at := now();
  return new;
end
$$;
comment on function suparag_private.documents_track_content() is
  'Trigger: a new or changed title/content gets a new content_version and goes back to pending. Invoker rights: it only edits NEW.';
revoke all on function suparag_private.documents_track_content() from public, anon, authenticated;

create trigger documents_track_content
  before insert or update on public.documents
  for each row execute function suparag_private.documents_track_content();

-- privileges --------------------------------------------------------------------
-- Supabase's default privileges grant everything to the API roles. Narrow that
-- to what each role needs: users never write status columns or chunks.

revoke all on public.documents, public.document_chunks from anon, authenticated;
grant select on public.documents, public.document_chunks to anon, authenticated;
grant insert (id, owner_id, team, visibility, title, content, metadata),
  update (team, visibility, title, content, metadata),
  delete
  on public.documents to authenticated;
grant all on public.documents, public.document_chunks to service_role;

-- row level security ------------------------------------------------------------

alter table public.documents enable row level security;
alter table public.document_chunks enable row level security;

create policy "anon reads public documents"
  on public.documents for select to anon
  using (visibility = 'public');

create policy "users read public, own and team documents"
  on public.documents for select to authenticated
  using (
    visibility = 'public'
    or owner_id = (select auth.uid())
    or (visibility = 'team'
        and team = (select auth.jwt() -> 'app_metadata' ->> 'team'))
  );

create policy "users insert own documents in their team"
  on public.documents for insert to authenticated
  with check (
    owner_id = (select auth.uid())
    and (team is null or team = (select auth.jwt() -> 'app_metadata' ->> 'team'))
  );

create policy "users update own documents in their team"
  on public.documents for update to authenticated
  using (owner_id = (select auth.uid()))
  with check (
    owner_id = (select auth.uid())
    and (team is null or team = (select auth.jwt() -> 'app_metadata' ->> 'team'))
  );

create policy "users delete own documents"
  on public.documents for delete to authenticated
  using (owner_id = (select auth.uid()));

-- The subquery runs under the caller's documents policies, so a chunk is
-- visible exactly when its document is, for every role, with no copy of the
-- rules to keep in sync.
create policy "anon reads chunks of readable documents"
  on public.document_chunks for select to anon
  using (exists (select 1 from public.documents d where d.id = document_id));

create policy "users read chunks of readable documents"
  on public.document_chunks for select to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id));
