-- For `suparag bench search --compare-sql bench/sql/hnsw_ef_construction_128.sql`:
-- rebuild the first space's HNSW index with ef_construction 128 (the migrations
-- build it with pgvector's default, 64), same name, so the second pass measures
-- the same data and queries on a denser graph. The bench reports how long this
-- file took to run, which is the rebuild.
--
-- On a live project the same change is made without blocking writes:
--   create index concurrently document_chunks_embedding_idx_new on public.document_chunks
--     using hnsw (embedding extensions.vector_cosine_ops) with (ef_construction = 128);
--   drop index concurrently public.document_chunks_embedding_idx;
--   alter index public.document_chunks_embedding_idx_new rename to document_chunks_embedding_idx;
drop index public.document_chunks_embedding_idx;
create index document_chunks_embedding_idx on public.document_chunks
  using hnsw (embedding extensions.vector_cosine_ops) with (ef_construction = 128);
analyze public.document_chunks;
