// An app's supabase-js client against the local API, with the client's defaults
// (Realtime serializer vsn 2.0.0): sign in, subscribe to every change of
// public.answers, ask a question, and report what the channel received.
//
// Run by tests/test_supabase_js.py:
//   node --experimental-websocket answers_listener.mjs   (Node 20; Node >= 22 needs no flag)
// Environment: SUPABASE_URL, SUPABASE_ANON_KEY, EMAIL, PASSWORD.
// Stdout, one JSON object a line:
//   {"subscribed": "SUBSCRIBED"}            the channel is joined
//   {"asked": <question row>}               the question is in; the test then writes answers
//   ... the test writes "rate\n" to stdin once every answer is written ...
//   {"events": [<postgres_changes payloads>]} after this client rated its answer and
//                                           received that change (every earlier change
//                                           that could reach it has arrived by then)
import { createClient } from '@supabase/supabase-js'
import { say, script } from './script.mjs'
import { createInterface } from 'node:readline'

const { SUPABASE_URL, SUPABASE_ANON_KEY, EMAIL, PASSWORD } = process.env

const { fail, until } = script('answers_listener')

const supabase = createClient(SUPABASE_URL, SUPABASE_ANON_KEY, {
  auth: { persistSession: false, autoRefreshToken: false },
})

// The user exists already (made by the operator, with a password): sign in.
const { data: auth, error: authError } = await supabase.auth.signInWithPassword({
  email: EMAIL,
  password: PASSWORD,
})
if (authError || !auth.session) fail(`sign-in failed: ${authError?.message ?? 'no session'}`)

const events = []
let state = null
let leaving = false
supabase
  .channel(`answers-${EMAIL}`)
  .on('postgres_changes', { event: '*', schema: 'public', table: 'answers' }, (payload) =>
    events.push(payload)
  )
  .subscribe((status, err) => {
    state = status
    if (status !== 'SUBSCRIBED' && !leaving) fail(`channel ${status}: ${err?.message ?? ''}`)
  })
await until(() => state === 'SUBSCRIBED', 'SUBSCRIBED')
say({ subscribed: state, vsn: supabase.realtime.vsn })

const { data: question, error: askError } = await supabase
  .from('questions')
  .insert({ question: 'when does the database restart?' })
  .select()
  .single()
if (askError) fail(`insert failed: ${askError.message}`)
say({ asked: question })

const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (line.trim() === 'rate') break
}

const mine = () => events.find((e) => e.new?.question_id === question.id && e.new?.status === 'done')
await until(mine, 'the answer to this question')
const answer = mine().new
const { error: rateError } = await supabase.from('answers').update({ feedback: 1 }).eq('id', answer.id)
if (rateError) fail(`rating failed: ${rateError.message}`)
await until(() => events.some((e) => e.new?.id === answer.id && e.new?.feedback === 1), 'the rating')

say({ events })
leaving = true
await supabase.removeAllChannels()
process.exit(0)
