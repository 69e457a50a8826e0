-- suparag: where a document came from, so ingesting the same file again
-- updates its document instead of adding a copy.
--
-- `source` names the origin in the ingesting tool's own terms (for
-- `suparag ingest`, a file's path relative to the folder given, or
-- `file.jsonl#id=...` for one record of a file). It is unique per owner:
-- two owners may ingest the same file, one owner gets one document per
-- source. Rows without a source (inserted through the API) are unaffected.
-- Re-ingesting unchanged text changes nothing, so the enqueue trigger, which
-- fires only when content_version moves, queues no embedding job.

alter table public.documents add column source text;

comment on column public.documents.source is
  'Where the document was ingested from (e.g. a relative file path); unique per owner when set. Ingest upserts on (owner_id, source).';

create unique index documents_owner_source_key
  on public.documents (owner_id, source)
  where source is not null;

-- Users may set and change the source of their own rows, like the other
-- user-facing columns (RLS still limits them to their own rows).
grant insert (source), update (source) on public.documents to authenticated;
