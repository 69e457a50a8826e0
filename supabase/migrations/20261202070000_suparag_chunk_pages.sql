-- suparag: the page a chunk came from (issue 15), for citations such as "policy.pdf, p. 12".
--
-- Readers of paged formats (PDF pages, PowerPoint slides) put a line `<!-- page N -->`
-- before each page's text in documents.content; the embedding worker's chunker never
-- lets a chunk span two pages and writes the page here. Null for documents without
-- pages. Readable under the same policies as the rest of the chunk (select is granted
-- on the table); written only by the worker, like every other chunk column.
alter table public.document_chunks
  add column page integer check (page > 0);

comment on column public.document_chunks.page is
  'The 1-based page (PDF) or slide (PPTX) the chunk came from, from the document''s '
  '`<!-- page N -->` markers; null for documents without pages.';
