-- suparag: the history of `suparag eval run` (issue 11).
--
-- One row per evaluation run: which set (by the sha256 of its file), which
-- embedding space and model, semantic or hybrid with which fusion weights, the
-- cut-off k, who evaluated, and the metrics. `suparag eval history` reads it,
-- and `suparag spaces activate` compares a space's latest run with the active
-- space's on the same set. Evaluation is an operator's tool: the table lives in
-- suparag_private, closed to the API roles like the queues and settings.

create table suparag_private.eval_runs (
  id bigint generated always as identity primary key,
  created_at timestamptz not null default now(),
  set_name text not null,
  set_digest text not null check (set_digest ~ '^[0-9a-f]{64}$'),
  space text,
  embedding_model text not null,
  mode text not null check (mode in ('semantic', 'hybrid')),
  -- null: hybrid_search's own defaults (or a semantic run)
  full_text_weight double precision,
  semantic_weight double precision,
  rrf_k integer,
  k integer not null check (k > 0),
  as_user text,
  queries integer not null check (queries >= 0),
  scored integer not null check (scored >= 0 and scored <= queries),
  metrics jsonb not null check (jsonb_typeof(metrics) = 'object'),
  check (mode = 'hybrid' or (full_text_weight is null and semantic_weight is null
                             and rrf_k is null))
);
comment on table suparag_private.eval_runs is
  'suparag eval runs: set digest, space, model, mode, fusion weights, k, evaluating user, metrics (recall, MRR, nDCG, hit rate, latency). Operator-only.';

create index eval_runs_set_space_idx
  on suparag_private.eval_runs (set_digest, space, created_at desc);

alter table suparag_private.eval_runs enable row level security;
revoke all on suparag_private.eval_runs from public, anon, authenticated;
grant all on suparag_private.eval_runs to service_role;
