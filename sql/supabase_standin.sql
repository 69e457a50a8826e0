-- suparag: the parts of a Supabase database that plain PostgreSQL lacks.
--
-- Applied only to local databases (`suparag dev`, tests); never pushed to a
-- Supabase project, which has all of this already. Idempotent: safe to run on
-- every start. Follows ../shared/SUPABASE-FACTS.md (roles, auth functions,
-- extensions schema, realtime publication).

-- Roles ---------------------------------------------------------------------
-- anon / authenticated / service_role are the API roles PostgREST switches to
-- with `set local role`; authenticator is the login role it connects as.
do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
  -- The owners of Supabase's managed schemas and of Auth's objects. Nothing logs
  -- in as them here; they exist so ownership reads as on a Supabase project (the
  -- CLI's `migration down` and `db reset` drop every schema not owned by
  -- supabase_admin, apart from a fixed list).
  if not exists (select from pg_catalog.pg_roles where rolname = 'supabase_admin') then
    create role supabase_admin nologin;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'supabase_auth_admin') then
    create role supabase_auth_admin nologin noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';

-- Schemas and default privileges ---------------------------------------------
-- Supabase grants everything in public to the API roles by default; RLS is the
-- real gate, which is why every suparag table enables it.
grant usage on schema public to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on sequences to anon, authenticated, service_role;

create schema if not exists extensions;
grant usage on schema extensions to anon, authenticated, service_role;
-- Enabled on every Supabase project; the CLI's `inspect db` commands read it. (A build
-- without contrib, as the PostgreSQL 16 the tests also run on, goes without.)
do $$
begin
  if exists (select from pg_available_extensions where name = 'pg_stat_statements') then
    create extension if not exists pg_stat_statements with schema extensions;
  end if;
end
$$;

-- Auth ------------------------------------------------------------------------
-- Owned as on Supabase (supabase/postgres init-scripts): the schema by
-- supabase_admin, Auth's tables and functions by supabase_auth_admin (below).
create schema if not exists auth;
alter schema auth owner to supabase_admin;
grant usage on schema auth to anon, authenticated, service_role;
grant all on schema auth to supabase_auth_admin;

-- The columns suparag and its local API use, named as GoTrue names them.
create table if not exists auth.users (
  instance_id uuid,
  id uuid primary key default gen_random_uuid(),
  aud varchar(255) default 'authenticated',
  role varchar(255) default 'authenticated',
  email varchar(255) unique,
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  last_sign_in_at timestamptz,
  raw_app_meta_data jsonb not null default '{}'::jsonb,
  raw_user_meta_data jsonb not null default '{}'::jsonb,
  is_anonymous boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table auth.users is
  'Local stand-in for Supabase Auth users. app_metadata (raw_app_meta_data) is operator-set and may grant access; user_metadata never does.';
alter table auth.users enable row level security;
grant select on auth.users to service_role;

-- Refresh tokens of the local API's sessions, named as GoTrue names them, so
-- a session outlives an API restart. `token` holds the sha256 of the token
-- (the local API's choice; GoTrue keeps the token itself). Rotated on each
-- use; the new token keeps the session and names its parent.
create table if not exists auth.refresh_tokens (
  id bigserial primary key,
  token varchar(255) unique,
  user_id varchar(255),
  revoked boolean not null default false,
  parent varchar(255),
  session_id uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists refresh_tokens_session_id_idx on auth.refresh_tokens (session_id);
alter table auth.refresh_tokens enable row level security;
revoke all on auth.refresh_tokens from public;

-- The definitions current Supabase uses: claims come from request.jwt.claims
-- (PostgREST >= 12), with the legacy per-claim setting still honoured.
create or replace function auth.uid() returns uuid
language sql stable
set search_path = ''
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
set search_path = ''
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email() returns text
language sql stable
set search_path = ''
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt()
  to anon, authenticated, service_role;

alter table auth.users owner to supabase_auth_admin;
alter table auth.refresh_tokens owner to supabase_auth_admin;
alter function auth.uid() owner to supabase_auth_admin;
alter function auth.role() owner to supabase_auth_admin;
alter function auth.email() owner to supabase_auth_admin;
alter function auth.jwt() owner to supabase_auth_admin;

-- Realtime --------------------------------------------------------------------
do $$
begin
  if not exists (select from pg_catalog.pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;

-- Realtime change capture (local only) -----------------------------------------
-- Supabase Realtime decodes the WAL; here there is no decoder, so the local API's
-- Realtime server (worker/devstack/api/realtime/) attaches an AFTER ROW trigger to every
-- table in the supabase_realtime publication (suparag_realtime.sync_triggers, on
-- its start and on every join). The trigger writes the change to a table and
-- notifies `suparag_realtime`; the server reads new rows by transaction id and
-- prunes them. Rows, not notification payloads, carry the data, so a change of
-- any size is delivered. Nothing is captured unless a server is running
-- (suparag_realtime.consumers), so nothing piles up when no one listens.
-- The schema is owned by supabase_admin, as Supabase's `realtime` schema is, so
-- the CLI's `migration down` leaves it alone; its objects stay postgres's (the
-- capture trigger is security definer and must write the capture table).
create schema if not exists suparag_realtime;
alter schema suparag_realtime owner to supabase_admin;
revoke all on schema suparag_realtime from public, anon, authenticated, service_role;

create table if not exists suparag_realtime.changes (
  id bigint generated always as identity primary key,
  -- Rows are read by transaction, not by id: ids are taken before commit, so a
  -- reader that followed ids could step over a transaction still in flight.
  xid xid8 not null default pg_catalog.pg_current_xact_id(),
  schema_name text not null,
  table_name text not null,
  op text not null check (op in ('INSERT', 'UPDATE', 'DELETE')),
  record jsonb,
  -- What logical decoding would carry: the replica identity (primary key by
  -- default, the whole row with `replica identity full`), {} when unchanged.
  old_record jsonb,
  captured_at timestamptz not null default now()
);
comment on table suparag_realtime.changes is
  'Local stand-in for the WAL that Supabase Realtime decodes: row changes of tables in the supabase_realtime publication, kept until the local Realtime server has delivered them.';
create index if not exists changes_xid_idx on suparag_realtime.changes (xid);
alter table suparag_realtime.changes enable row level security;

create table if not exists suparag_realtime.consumers (
  id text primary key,
  alive_until timestamptz not null
);
comment on table suparag_realtime.consumers is
  'Running local Realtime servers; each renews alive_until while it runs. Changes are captured only while one is alive.';
alter table suparag_realtime.consumers enable row level security;

-- security definer: the writer (a user, through the API) may not write the
-- capture table. UTC, so timestamps in records read as Realtime sends them.
create or replace function suparag_realtime.capture() returns trigger
language plpgsql security definer
set search_path = ''
set timezone = 'UTC'
as $$
declare
  replident "char";
  identity text[];
  old_identity jsonb;
begin
  if not exists (select from suparag_realtime.consumers where alive_until > now()) then
    return null;
  end if;
  if tg_op <> 'INSERT' then
    select c.relreplident into replident from pg_catalog.pg_class c where c.oid = tg_relid;
    if replident = 'f' then
      old_identity := to_jsonb(old);
    elsif replident = 'n' then
      old_identity := '{}';
    else
      select coalesce(array_agg(a.attname::text), '{}') into identity
        from pg_catalog.pg_index i
        join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
       where i.indrelid = tg_relid
         and case when replident = 'i' then i.indisreplident else i.indisprimary end;
      select coalesce(jsonb_object_agg(o.key, o.value), '{}') into old_identity
        from jsonb_each(to_jsonb(old)) o where o.key = any (identity);
      -- Logical decoding sends the old key of an UPDATE only when the key changed.
      if tg_op = 'UPDATE' and old_identity = (
           select coalesce(jsonb_object_agg(n.key, n.value), '{}')
             from jsonb_each(to_jsonb(new)) n where n.key = any (identity)) then
        old_identity := '{}';
      end if;
    end if;
  end if;
  insert into suparag_realtime.changes (schema_name, table_name, op, record, old_record)
  values (tg_table_schema, tg_table_name, tg_op,
          case when tg_op <> 'DELETE' then to_jsonb(new) end, old_identity);
  -- One payload per transaction, so PostgreSQL folds a bulk write into one wake-up.
  perform pg_notify('suparag_realtime', pg_catalog.pg_current_xact_id()::text);
  return null;
end
$$;
comment on function suparag_realtime.capture() is
  'AFTER ROW trigger on tables in the supabase_realtime publication: records the change for the local Realtime server.';
revoke all on function suparag_realtime.capture() from public, anon, authenticated, service_role;

create or replace function suparag_realtime.sync_triggers() returns void
language plpgsql
set search_path = ''
as $$
declare
  t record;
begin
  -- Two servers (or two joins) syncing at once must not race on create trigger.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('suparag_realtime.sync_triggers'));
  for t in
    select p.schemaname, p.tablename
      from pg_catalog.pg_publication_tables p
     where p.pubname = 'supabase_realtime' and p.schemaname <> 'suparag_realtime'
       and not exists (
         select from pg_catalog.pg_trigger g
          where g.tgrelid = format('%I.%I', p.schemaname, p.tablename)::regclass
            and g.tgname = 'suparag_realtime_capture')
  loop
    execute format('create trigger suparag_realtime_capture after insert or update or delete'
                   ' on %I.%I for each row execute function suparag_realtime.capture()',
                   t.schemaname, t.tablename);
  end loop;
  for t in
    select n.nspname, c.relname
      from pg_catalog.pg_trigger g
      join pg_catalog.pg_class c on c.oid = g.tgrelid
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where g.tgname = 'suparag_realtime_capture'
       and not exists (
         select from pg_catalog.pg_publication_tables p
          where p.pubname = 'supabase_realtime'
            and p.schemaname = n.nspname and p.tablename = c.relname)
  loop
    execute format('drop trigger suparag_realtime_capture on %I.%I', t.nspname, t.relname);
  end loop;
end
$$;
comment on function suparag_realtime.sync_triggers() is
  'Attach the capture trigger to every table in the supabase_realtime publication, and detach it from tables that left.';
revoke all on function suparag_realtime.sync_triggers() from public, anon, authenticated, service_role;

-- Realtime Broadcast: realtime.messages, realtime.send, realtime.topic -----------
-- As Supabase Realtime defines them (its tenant migrations), so the same SQL that
-- authorizes private channels and sends from the database on a hosted project
-- works here. Supabase partitions realtime.messages by day and creates the
-- partitions itself; here one default partition holds every message and the local
-- Realtime server prunes what is older than three days, Supabase's retention.
do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'supabase_realtime_admin') then
    create role supabase_realtime_admin nologin noinherit;
  end if;
end
$$;

-- Owned by supabase_admin as on Supabase, so the CLI's `migration down` leaves it
-- alone as a managed schema.
create schema if not exists realtime;
alter schema realtime owner to supabase_admin;
grant usage on schema realtime to anon, authenticated, service_role;

create table if not exists realtime.messages (
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default false,
  updated_at timestamp without time zone not null default now(),
  inserted_at timestamp without time zone not null default now(),
  id uuid not null default gen_random_uuid(),
  binary_payload bytea,
  constraint messages_payload_exclusive check (payload is null or binary_payload is null),
  constraint messages_pkey primary key (id, inserted_at)
) partition by range (inserted_at);
create table if not exists realtime.messages_local partition of realtime.messages default;
alter table realtime.messages enable row level security;
alter table realtime.messages owner to supabase_realtime_admin;
alter table realtime.messages_local owner to supabase_realtime_admin;
grant insert, select, update on table realtime.messages to anon, authenticated, service_role;

create or replace function realtime.topic() returns text
language sql stable
as $$ select nullif(current_setting('realtime.topic', true), '')::text; $$;

-- A rollback sends nothing; a failed insert (a policy refusing the sender, for
-- one) is a warning, never an error in the sender's transaction.
create or replace function realtime.send(payload jsonb, event text, topic text,
                                         private boolean default true)
returns void
language plpgsql
as $$
declare
  generated_id uuid;
  final_payload jsonb;
begin
  begin
    generated_id := gen_random_uuid();
    if payload ? 'id' then
      final_payload := payload;
    else
      final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
    end if;
    execute format('set local realtime.topic to %L', topic);
    insert into realtime.messages (id, payload, event, topic, private, extension)
    values (generated_id, final_payload, event, topic, private, 'broadcast');
  exception
    when others then
      raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
  end;
end
$$;

create or replace function realtime.broadcast_changes(
  topic_name text, event_name text, operation text, table_name text, table_schema text,
  new record, old record, level text default 'ROW')
returns void
language plpgsql
as $$
declare
  row_data jsonb := '{}'::jsonb;
begin
  if level = 'STATEMENT' then
    raise exception 'function can only be triggered for each row, not for each statement';
  end if;
  if operation in ('INSERT', 'UPDATE', 'DELETE') then
    row_data := jsonb_build_object('old_record', old, 'record', new, 'operation', operation,
                                   'table', table_name, 'schema', table_schema);
    perform realtime.send(row_data, event_name, topic_name);
  else
    raise exception 'Unexpected operation type: %', operation;
  end if;
exception
  when others then
    raise exception 'Failed to process the row: %', sqlerrm;
end
$$;

alter function realtime.topic() owner to supabase_realtime_admin;
alter function realtime.send(jsonb, text, text, boolean) owner to supabase_realtime_admin;
alter function realtime.broadcast_changes(text, text, text, text, text, record, record, text)
  owner to supabase_realtime_admin;

-- Supabase Realtime reads new messages from the WAL; here a trigger hands each
-- committed broadcast to the local server through the same capture table as row
-- changes, in commit order. Messages are captured only while a server runs.
create or replace function suparag_realtime.capture_message() returns trigger
language plpgsql security definer
set search_path = ''
set timezone = 'UTC'
as $$
begin
  if new.extension <> 'broadcast'
     or not exists (select from suparag_realtime.consumers where alive_until > now()) then
    return null;
  end if;
  insert into suparag_realtime.changes (schema_name, table_name, op, record)
  values ('realtime', 'messages', 'INSERT', to_jsonb(new));
  perform pg_notify('suparag_realtime', pg_catalog.pg_current_xact_id()::text);
  return null;
end
$$;
comment on function suparag_realtime.capture_message() is
  'AFTER INSERT trigger on realtime.messages: hands a broadcast to the local Realtime server.';
revoke all on function suparag_realtime.capture_message()
  from public, anon, authenticated, service_role;

drop trigger if exists suparag_realtime_broadcast on realtime.messages;
create trigger suparag_realtime_broadcast after insert on realtime.messages
  for each row execute function suparag_realtime.capture_message();

-- Vault ------------------------------------------------------------------------
-- Supabase Vault keeps secrets encrypted in vault.secrets and shows them to
-- privileged roles through vault.decrypted_secrets. Locally only the shape
-- matters (the local database is trust-authenticated): a plain table, the view
-- and vault.create_secret, closed to the API roles as upstream.
create schema if not exists vault;
-- Owned by supabase_admin as on Supabase: the CLI's `migration down` leaves it alone.
alter schema vault owner to supabase_admin;
create table if not exists vault.secrets (
  id uuid primary key default gen_random_uuid(),
  name text unique,
  description text not null default '',
  secret text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
alter table vault.secrets enable row level security;
create or replace view vault.decrypted_secrets as
  select id, name, description, secret, secret as decrypted_secret, created_at, updated_at
    from vault.secrets;
create or replace function vault.create_secret(
  new_secret text, new_name text default null, new_description text default ''
) returns uuid
language sql
set search_path = ''
as $$
  insert into vault.secrets (secret, name, description)
  values (new_secret, new_name, new_description)
  returning id
$$;
revoke all on schema vault from public, anon, authenticated;
revoke all on all tables in schema vault from public, anon, authenticated;
revoke all on function vault.create_secret(text, text, text) from public, anon, authenticated;
comment on view vault.decrypted_secrets is
  'Local stand-in for Supabase Vault''s decrypted view (no encryption locally).';
