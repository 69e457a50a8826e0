// A TypeScript app's search through supabase-js typed with the Database that the Supabase
// CLI generates from suparag's schema (`supabase gen types typescript`): tsc --strict must
// accept the calls an app makes and refuse wrong names and arguments; then the compiled
// script runs them against the API as each caller.
//
// Run by tests/test_typed_client.py, which writes database.types.ts beside this file,
// compiles both with tsc and runs the output with Node.
// Environment: SUPABASE_URL, SUPABASE_ANON_KEY, PASSWORD (of alice and bob, @example.com).
// Stdout, one JSON object a line: {"reads": {<caller>: {"match": [...], "hybrid": [...],
// "documents": [...], "similarity_is_number": bool}}}
import { createClient, type SupabaseClient } from '@supabase/supabase-js'
import type { Database, Tables } from './database.types.js'

const { SUPABASE_URL, SUPABASE_ANON_KEY, PASSWORD } = process.env
if (!SUPABASE_URL || !SUPABASE_ANON_KEY || !PASSWORD) throw new Error('environment not set')
const QUERY = 'when does the red database restart?'

type Client = SupabaseClient<Database>

const client = (): Client =>
  createClient<Database>(SUPABASE_URL, SUPABASE_ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
  })

function check<T>(what: string, result: { data: T | null; error: unknown }): T {
  if (result.error || result.data === null) {
    process.stderr.write(`typed_search: ${what}: ${JSON.stringify(result.error)}\n`)
    process.exit(1)
  }
  return result.data
}

// Compiled, never called: what the generated types must refuse.
export function refused(supabase: Client) {
  // @ts-expect-error: the queue is not in the API's schemas
  supabase.from('embedding_jobs')
  // @ts-expect-error: query_embedding is required
  supabase.rpc('match_documents', { match_count: 3 })
  // @ts-expect-error: match_count is a number
  supabase.rpc('match_documents', { query_embedding: '[]', match_count: 'ten' })
  // @ts-expect-error: no such function
  supabase.rpc('match_everything', {})
}

async function reads(supabase: Client) {
  const { embedding } = check(
    'functions.invoke(embed)',
    await supabase.functions.invoke<{ embedding: number[] }>('embed', { body: { input: QUERY } })
  )
  // A vector argument is text in the generated types: pgvector reads '[0.1,...]'.
  const query_embedding = JSON.stringify(embedding)
  const match = check(
    'rpc(match_documents)',
    await supabase.rpc('match_documents', { query_embedding, match_count: 10 })
  )
  const hybrid = check(
    'rpc(hybrid_search)',
    await supabase.rpc('hybrid_search', { query_text: QUERY, query_embedding, match_count: 10 })
  )
  const documents: Pick<Tables<'documents'>, 'title' | 'visibility'>[] = check(
    'select documents',
    await supabase.from('documents').select('title, visibility').order('title')
  )
  return {
    match: match.map((row) => row.title),
    hybrid: hybrid.map((row) => row.title),
    documents: documents.map((row) => row.title),
    similarity_is_number: match.every((row) => typeof row.similarity === 'number'),
  }
}

async function signedIn(email: string): Promise<Client> {
  const supabase = client()
  const { error } = await supabase.auth.signInWithPassword({ email, password: PASSWORD! })
  if (error) check('signInWithPassword', { data: null, error })
  return supabase
}

process.stdout.write(
  JSON.stringify({
    reads: {
      anon: await reads(client()),
      bob: await reads(await signedIn('bob@example.com')),
      alice: await reads(await signedIn('alice@example.com')),
    },
  }) + '\n'
)
process.exit(0)
