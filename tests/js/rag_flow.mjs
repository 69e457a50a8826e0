// An app's RAG flow through supabase-js, with the client's defaults: sign up and sign
// in, insert documents, embed a query with the `embed` function, search with
// match_documents and hybrid_search, and read documents with their chunks, as each kind
// of caller (anon, a new user, another team, a team mate, the owner).
//
// Run by tests/test_supabase_js.py:
//   node --experimental-websocket rag_flow.mjs   (Node 20; Node >= 22 needs no flag)
// Environment: SUPABASE_URL, SUPABASE_ANON_KEY, PASSWORD (of the operator-made users
// alice and carol, team a, and bob, team b, all @example.com), NEW_EMAIL (not yet a user).
// Stdout, one JSON object a line:
//   {"signed_up": {...}}        the new user's sign-up and sign-in
//   {"inserted": [<rows>]}      the documents, as insert().select() returned them; the
//                               test then embeds them and writes "embedded\n" to stdin
//   {"reads": {<caller>: {"match": [...], "hybrid": [...], "embedded": [...]}}}
import { createClient } from '@supabase/supabase-js'
import { say, script } from './script.mjs'
import { createInterface } from 'node:readline'

const { SUPABASE_URL, SUPABASE_ANON_KEY, PASSWORD, NEW_EMAIL } = process.env
const QUERY = 'when does the red database restart?'

const { fail } = script('rag_flow', 120_000)

// What an app does: one client per browser, the session kept in memory.
const client = () =>
  createClient(SUPABASE_URL, SUPABASE_ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
  })

// Every call's error ends the script with what was called and what came back.
function check(what, { data, error }) {
  if (error) fail(`${what}: ${JSON.stringify(error)}`)
  return data
}

async function signedIn(email) {
  const supabase = client()
  const data = check(
    `signInWithPassword(${email})`,
    await supabase.auth.signInWithPassword({ email, password: PASSWORD })
  )
  return { supabase, user: data.user }
}

// A new user signs up (confirmed at once, as `supabase start` does), then signs in anew.
const signup = check(
  'signUp',
  await client().auth.signUp({ email: NEW_EMAIL, password: PASSWORD })
)
const dave = await signedIn(NEW_EMAIL)
say({
  signed_up: {
    email: signup.user?.email,
    has_session: Boolean(signup.session?.access_token),
    signed_in_same_user: dave.user.id === signup.user?.id,
  },
})

const alice = await signedIn('alice@example.com')
const carol = await signedIn('carol@example.com')
const bob = await signedIn('bob@example.com')

// No owner_id and no team: the database takes both from the JWT.
const mine = check(
  'insert alice documents',
  await alice.supabase
    .from('documents')
    .insert([
      { title: 'alice private', visibility: 'private', content: 'Notes for the review of the on-call rota.' },
      { title: 'alice team', visibility: 'team', content: 'The red database restarts every Tuesday at noon.' },
      { title: 'alice public', visibility: 'public', content: 'The office is closed on public holidays; the help desk answers by email.' },
    ])
    .select()
)
const bobs = check(
  'insert bob document',
  await bob.supabase
    .from('documents')
    .insert({ title: 'bob team', visibility: 'team', content: 'The blue database restarts every Friday at midnight.' })
    .select()
)
say({ inserted: [...mine, ...bobs] })

const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (line.trim() === 'embedded') break
}

async function reads(supabase) {
  const { embedding } = check(
    'functions.invoke(embed)',
    await supabase.functions.invoke('embed', { body: { input: QUERY } })
  )
  const match = check(
    'rpc(match_documents)',
    await supabase.rpc('match_documents', { query_embedding: embedding, match_count: 10 })
  )
  const hybrid = check(
    'rpc(hybrid_search)',
    await supabase.rpc('hybrid_search', { query_text: QUERY, query_embedding: embedding, match_count: 10 })
  )
  const embedded = check(
    'select documents with their chunks',
    await supabase
      .from('documents')
      .select('title, content, document_chunks(chunk_index, content)')
      .order('title')
  )
  return {
    match: match.map((r) => r.title),
    hybrid: hybrid.map((r) => r.title),
    embedded,
  }
}

say({
  reads: {
    anon: await reads(client()),
    dave: await reads(dave.supabase),
    bob: await reads(bob.supabase),
    carol: await reads(carol.supabase),
    alice: await reads(alice.supabase),
  },
})
process.exit(0)
