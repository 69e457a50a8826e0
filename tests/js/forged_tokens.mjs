// Forged tokens through supabase-js: each must be refused on REST (401) and on Realtime
// (the channel join errors and the channel receives nothing), while alice's genuine
// token, sent the same way, reads and receives.
//
// Run by tests/test_supabase_js.py:
//   node --experimental-websocket forged_tokens.mjs   (Node 20; Node >= 22 needs no flag)
// Environment: SUPABASE_URL, SUPABASE_ANON_KEY, EMAIL, PASSWORD.
// Stdout, one JSON object a line:
//   {"rest": {<token>: {"status", "error", "rows"}}}
//   {"realtime": {<token>: {"statuses": [...], "errors": [...], "events": [...]}}}
//   sent once alice's genuine channel received her new question, and 1 s later.
import { createClient } from '@supabase/supabase-js'
import { say, script } from './script.mjs'
import { createHmac } from 'node:crypto'

const { SUPABASE_URL, SUPABASE_ANON_KEY, EMAIL, PASSWORD } = process.env

const { fail, until } = script('forged_tokens')

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url')
const decode = (part) => JSON.parse(Buffer.from(part, 'base64url').toString())

const alice = createClient(SUPABASE_URL, SUPABASE_ANON_KEY, {
  auth: { persistSession: false, autoRefreshToken: false },
})
const { data: auth, error: authError } = await alice.auth.signInWithPassword({
  email: EMAIL,
  password: PASSWORD,
})
if (authError || !auth.session) fail(`sign-in failed: ${authError?.message ?? 'no session'}`)

// alice's claims, and three ways to forge a token from them.
const genuine = auth.session.access_token
const [header, payload, signature] = genuine.split('.')
const claims = decode(payload)
const hs256 = (body, secret) => {
  const head = b64({ alg: 'HS256', typ: 'JWT' })
  const unsigned = `${head}.${b64(body)}`
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`
}
const tokens = {
  genuine,
  // Her claims, signed with a secret that is not the project's.
  wrong_secret: hs256(claims, 'super-secret-jwt-token-with-at-least-32-characters-long'),
  // Her claims, unsigned.
  alg_none: `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`,
  // Her signed token with the payload changed to the service role.
  tampered: `${header}.${b64({ ...claims, role: 'service_role' })}.${signature}`,
}
if (decode(header).alg !== 'HS256') fail(`expected an HS256 project token, got ${decode(header).alg}`)

// The third-party-auth option: every REST, functions and Realtime call sends this token.
const withToken = (token) =>
  createClient(SUPABASE_URL, SUPABASE_ANON_KEY, { accessToken: async () => token })

const rest = {}
for (const [name, token] of Object.entries(tokens)) {
  const { data, error, status } = await withToken(token).from('questions').select('question')
  rest[name] = { status, error, rows: data }
}
say({ rest })

const realtime = {}
const clients = []
for (const [name, token] of Object.entries(tokens)) {
  const seen = (realtime[name] = { statuses: [], errors: [], events: [] })
  const supabase = withToken(token)
  clients.push(supabase)
  // The client hands the token to Realtime asynchronously: a channel subscribed before
  // that joins with the apikey alone (as anon), so the token would never be tried.
  await supabase.realtime.setAuth(token)
  supabase
    .channel(`questions-${name}`)
    .on('postgres_changes', { event: '*', schema: 'public', table: 'questions' }, (p) =>
      seen.events.push(p)
    )
    .subscribe((status, err) => {
      seen.statuses.push(status)
      if (err) seen.errors.push(err.message)
    })
}
for (const [name, seen] of Object.entries(realtime)) {
  await until(() => seen.statuses.length > 0, `the ${name} channel's first status`)
}

// alice asks: her genuine channel receives the question; a forged one must not.
const { data: question, error: askError } = await alice
  .from('questions')
  .insert({ question: 'who may read the red runbook?' })
  .select()
  .single()
if (askError) fail(`insert failed: ${askError.message}`)
await until(
  () => realtime.genuine.events.some((e) => e.new?.id === question.id),
  `alice's question on her genuine channel (channels: ${JSON.stringify(realtime)})`
)
// The forged channels had as long, and 1 s more, to receive it if anything sent it.
await new Promise((resolve) => setTimeout(resolve, 1000))
say({ realtime })
for (const supabase of clients) await supabase.removeAllChannels()
process.exit(0)
