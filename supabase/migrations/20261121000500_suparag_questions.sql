-- suparag: questions, their answers, the answer job queue, and usage metering.
--
-- A user inserts a row into public.questions (through the API, as themselves);
-- a trigger queues an answer job and wakes answer workers. The worker
-- retrieves *as the asker* (role authenticated and the asker's JWT claims), so
-- an answer can only quote what the asker may read, and writes the answer,
-- with citations, to public.answers, streaming it in place. Both tables are
-- in the supabase_realtime publication; Realtime applies their RLS, so an
-- asker receives changes to their own rows only.
--
-- Who may do what: a user reads only their own questions and answers,
-- inserts only their own questions, and on their own answers may change only
-- `feedback` (-1, 0 or 1). Answers are otherwise written by the worker alone.

-- questions ---------------------------------------------------------------------

create table public.questions (
  id uuid primary key default gen_random_uuid(),
  asker_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  -- Questions of one conversation share an id; earlier turns reach the prompt.
  conversation_id uuid not null default gen_random_uuid(),
  question text not null check (length(btrim(question)) > 0),
  -- Metadata containment filter for retrieval, as match_documents takes it.
  filter jsonb not null default '{}'::jsonb check (jsonb_typeof(filter) = 'object'),
  match_count integer not null default 5 check (match_count between 1 and 20),
  created_at timestamptz not null default now()
);

comment on table public.questions is
  'Questions users ask; answered by the answer worker as the asker, into public.answers. Readable by the asker only.';
comment on column public.questions.conversation_id is
  'Questions with the same conversation_id (and asker) form a conversation; earlier turns are context for later ones.';

create index questions_asker_conversation_idx
  on public.questions (asker_id, conversation_id, created_at);

-- answers -----------------------------------------------------------------------

create table public.answers (
  id uuid primary key default gen_random_uuid(),
  question_id uuid not null unique references public.questions (id) on delete cascade,
  -- Copied from the question so the policies (and Realtime's RLS check) need no join.
  asker_id uuid not null references auth.users (id) on delete cascade,
  conversation_id uuid not null,
  content text not null default '',
  mode text not null check (mode in ('extractive', 'generative')),
  model text,
  -- [{"n", "document_id", "chunk_id", "chunk_index", "title", "similarity"}, ...]
  citations jsonb not null default '[]'::jsonb check (jsonb_typeof(citations) = 'array'),
  status text not null default 'streaming' check (status in ('streaming', 'done', 'failed')),
  error text,
  feedback smallint check (feedback in (-1, 0, 1)),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

comment on table public.answers is
  'One answer per question, written (and streamed in place) by the answer worker; the asker may set feedback only.';
comment on column public.answers.status is
  'streaming while the worker writes it, done when complete, failed with `error` set (the question is retried).';
comment on column public.answers.feedback is
  'The asker''s rating: -1, 0 or 1 (null: none). The only column an asker may change.';

create index answers_asker_idx on public.answers (asker_id, created_at);

-- privileges --------------------------------------------------------------------

revoke all on public.questions, public.answers from anon, authenticated;
grant select on public.questions, public.answers to authenticated;
grant insert (id, asker_id, conversation_id, question, filter, match_count)
  on public.questions to authenticated;
grant update (feedback) on public.answers to authenticated;
grant all on public.questions, public.answers to service_role;

alter table public.questions enable row level security;
alter table public.answers enable row level security;

create policy "users read own questions"
  on public.questions for select to authenticated
  using (asker_id = (select auth.uid()));

create policy "users ask as themselves"
  on public.questions for insert to authenticated
  with check (asker_id = (select auth.uid()));

create policy "users read answers to own questions"
  on public.answers for select to authenticated
  using (asker_id = (select auth.uid()));

-- Column privileges limit the update to `feedback`; this limits it to the
-- asker's own rows.
create policy "users rate answers to own questions"
  on public.answers for update to authenticated
  using (asker_id = (select auth.uid()))
  with check (asker_id = (select auth.uid()));

-- Realtime: postgres_changes for both tables (RLS decides who receives what).
-- Hosted Supabase and the local stand-in both have the publication; one
-- declared `for all tables` already covers them and cannot take a table list.
do $$
begin
  if exists (select from pg_catalog.pg_publication
             where pubname = 'supabase_realtime' and not puballtables) then
    alter publication supabase_realtime add table public.questions, public.answers;
  end if;
end
$$;

-- the answer job queue ---------------------------------------------------------

create table suparag_private.answer_jobs (
  id bigint generated always as identity primary key,
  question_id uuid not null unique references public.questions (id) on delete cascade,
  status text not null default 'queued' check (status in ('queued', 'failed')),
  attempts integer not null default 0,
  run_after timestamptz not null default now(),
  leased_by text,
  leased_until timestamptz,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table suparag_private.answer_jobs is
  'One pending answer job per question. Claimed with for update skip locked and a lease; deleted when the answer is done.';

create index answer_jobs_claim_idx on suparag_private.answer_jobs (run_after)
  where status = 'queued';

alter table suparag_private.answer_jobs enable row level security;
revoke all on suparag_private.answer_jobs from public, anon, authenticated;
grant all on suparag_private.answer_jobs to service_role;

create function suparag_private.enqueue_answer() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into suparag_private.answer_jobs (question_id) values (new.id)
  on conflict (question_id) do nothing;
  -- Constant payload: one wake-up per transaction however many questions.
  perform pg_notify('suparag_answer_jobs', 'questions');
  return null;
end
$$;
comment on function suparag_private.enqueue_answer() is
  'Trigger: queue an answer job for a new question and wake answer workers. Security definer because askers may not write the private queue.';
revoke all on function suparag_private.enqueue_answer() from public, anon, authenticated;

create trigger questions_enqueue_answer
  after insert on public.questions
  for each row execute function suparag_private.enqueue_answer();

create function suparag_private.claim_answer_jobs(
  worker_id text,
  batch_size integer,
  lease_seconds integer,
  question_ids uuid[] default null
)
returns table (job_id bigint, question_id uuid, attempts integer)
language sql volatile
set search_path = ''
as $$
  update suparag_private.answer_jobs j
     set leased_by = worker_id,
         leased_until = now() + make_interval(secs => lease_seconds),
         attempts = j.attempts + 1,
         updated_at = now()
   where j.id in (
     select q.id
     from suparag_private.answer_jobs q
     where q.status = 'queued'
       and q.run_after <= now()
       and (q.leased_until is null or q.leased_until < now())
       and (question_ids is null or q.question_id = any(question_ids))
     order by q.run_after, q.id
     limit batch_size
     for update skip locked
   )
  returning j.id, j.question_id, j.attempts
$$;
comment on function suparag_private.claim_answer_jobs(text, integer, integer, uuid[]) is
  'Lease up to batch_size due answer jobs (optionally only for the given questions) to worker_id.';

create function suparag_private.fail_answer_job(
  job_id bigint,
  error text,
  max_attempts integer,
  retry_after_seconds double precision
)
returns text
language sql volatile
set search_path = ''
as $$
  update suparag_private.answer_jobs j
     set status = case when j.attempts >= max_attempts then 'failed' else 'queued' end,
         run_after = now() + make_interval(secs => retry_after_seconds),
         leased_by = null,
         leased_until = null,
         last_error = left(error, 2000),
         updated_at = now()
   where j.id = job_id
  returning j.status
$$;
comment on function suparag_private.fail_answer_job(bigint, text, integer, double precision) is
  'Record a failed answer attempt: retry after the given delay, or mark the job failed at the cap.';

create function suparag_private.retry_answer_jobs(question_ids uuid[] default null)
returns integer
language sql volatile
set search_path = ''
as $$
  with requeued as (
    update suparag_private.answer_jobs j
       set status = 'queued', attempts = 0, run_after = now(), leased_by = null,
           leased_until = null, updated_at = now()
     where j.status = 'failed'
       and (question_ids is null or j.question_id = any(question_ids))
    returning j.question_id
  )
  select count(*)::integer
  from requeued, lateral (select pg_notify('suparag_answer_jobs', 'questions')) wake
$$;
comment on function suparag_private.retry_answer_jobs(uuid[]) is
  'Requeue failed answer jobs (all, or those of the given questions); returns how many.';

revoke all on function suparag_private.claim_answer_jobs(text, integer, integer, uuid[]),
  suparag_private.fail_answer_job(bigint, text, integer, double precision),
  suparag_private.retry_answer_jobs(uuid[])
  from public, anon, authenticated;
grant execute on function suparag_private.claim_answer_jobs(text, integer, integer, uuid[]),
  suparag_private.fail_answer_job(bigint, text, integer, double precision),
  suparag_private.retry_answer_jobs(uuid[])
  to service_role;

-- usage metering ------------------------------------------------------------------

create table suparag_private.usage (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  -- e.g. 'answer.query_embedding', 'answer.generation'
  feature text not null,
  model text not null,
  input_tokens integer not null default 0,
  output_tokens integer not null default 0,
  latency_ms double precision not null default 0,
  question_id uuid references public.questions (id) on delete set null,
  user_id uuid references auth.users (id) on delete set null
);
comment on table suparag_private.usage is
  'One row per model call the workers make: feature, model, tokens in and out, latency. Operator-only.';

create index usage_at_idx on suparag_private.usage (at);

alter table suparag_private.usage enable row level security;
revoke all on suparag_private.usage from public, anon, authenticated;
grant all on suparag_private.usage to service_role;
