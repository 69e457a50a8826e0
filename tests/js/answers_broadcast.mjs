// An app's supabase-js client receiving its answers over Realtime Broadcast, with the
// client's defaults (serializer vsn 2.0.0), as the README shows: sign in, hand the
// session to Realtime, join the private topic answers:<uid>, ask, collect the `delta`
// events and the `done` event, then refetch the answer row (the record). It also tries
// to join another user's answers topic, which must be refused.
//
// Run by tests/test_answer_broadcast_js.py:
//   node --experimental-websocket answers_broadcast.mjs   (Node 20; Node >= 22 needs no flag)
// Environment: SUPABASE_URL, SUPABASE_ANON_KEY, EMAIL, PASSWORD, OTHER_UID.
// Stdout, one JSON object a line:
//   {"intruder": <status>, "error": <message>}   joining answers:<OTHER_UID>
//   {"subscribed": <status>, "vsn": <vsn>}       its own topic joined
//   {"asked": <question row>}                    the test then runs the answer worker
//   {"deltas": [...], "done": {...}, "row": {...}}
import { createClient } from '@supabase/supabase-js'
import { say, script } from './script.mjs'

const { SUPABASE_URL, SUPABASE_ANON_KEY, EMAIL, PASSWORD, OTHER_UID } = process.env

const { fail, until } = script('answers_broadcast')

function join(topic, handlers = {}) {
  let channel = supabase.channel(topic, { config: { private: true } })
  for (const [event, handler] of Object.entries(handlers)) {
    channel = channel.on('broadcast', { event }, ({ payload }) => handler(payload))
  }
  return new Promise((resolve) =>
    channel.subscribe((status, err) => {
      if (status !== 'SUBSCRIBED' && status !== 'CHANNEL_ERROR') return
      resolve({ status, error: err?.message ?? null })
    })
  )
}

const supabase = createClient(SUPABASE_URL, SUPABASE_ANON_KEY, {
  auth: { persistSession: false, autoRefreshToken: false },
})
const { data: auth, error: authError } = await supabase.auth.signInWithPassword({
  email: EMAIL,
  password: PASSWORD,
})
if (authError || !auth.session) fail(`sign-in failed: ${authError?.message ?? 'no session'}`)
await supabase.realtime.setAuth() // private channels are joined with the user's token

const intruder = await join(`answers:${OTHER_UID}`)
say({ intruder: intruder.status, error: intruder.error })

const deltas = []
let done = null
const own = await join(`answers:${auth.user.id}`, {
  delta: (payload) => deltas.push(payload),
  done: (payload) => {
    done = payload
  },
})
if (own.status !== 'SUBSCRIBED') fail(`own topic: ${own.status} ${own.error}`)
say({ subscribed: own.status, vsn: supabase.realtime.vsn })

const { data: question, error: askError } = await supabase
  .from('questions')
  .insert({ question: 'When does the red database restart?' })
  .select()
  .single()
if (askError) fail(`insert failed: ${askError.message}`)
say({ asked: question })

await until(() => done !== null, 'the done event')
// The row is the record: what a client that missed messages reads.
const { data: row, error: rowError } = await supabase
  .from('answers')
  .select('id, content, citations, status')
  .eq('question_id', question.id)
  .single()
if (rowError) fail(`refetch failed: ${rowError.message}`)
say({ deltas, done, row })
await supabase.removeAllChannels()
process.exit(0)
