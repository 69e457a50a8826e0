// supabase-js calling `suparag serve` (issue 18): a client on the service's URL, each
// user's access token per call, as an app behind a proxy on its own domain would.
//
// Run by tests/test_edge_js.py: node edge_search.mjs
// Environment: EDGE_URL, SUPABASE_ANON_KEY, TOKENS (JSON: {user: access token}).
// Stdout, one JSON object a line: {"user", "titles": [...]} per user, then
// {"expired": {"status", "code"}} for a call with an expired token.
import { createClient } from '@supabase/supabase-js'

const { EDGE_URL, SUPABASE_ANON_KEY, TOKENS, EXPIRED } = process.env
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
setTimeout(() => { process.stderr.write('edge_search: not done in 60 s\n'); process.exit(1) },
           60_000).unref()

const client = createClient(EDGE_URL, SUPABASE_ANON_KEY, { auth: { persistSession: false } })
for (const [user, token] of Object.entries(JSON.parse(TOKENS))) {
  const { data, error } = await client.functions.invoke('search', {
    body: { query: 'animals, bread and rocks', k: 20 },
    headers: { Authorization: `Bearer ${token}` },
  })
  if (error) { process.stderr.write(`edge_search: ${user}: ${error.message}\n`); process.exit(1) }
  say({ user, titles: data.results.map((hit) => hit.title) })
}
const { error } = await client.functions.invoke('search', {
  body: { query: 'x' }, headers: { Authorization: `Bearer ${EXPIRED}` },
})
say({ expired: { status: error?.context?.status, code: (await error?.context?.json())?.code } })
