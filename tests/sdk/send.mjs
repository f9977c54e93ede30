// Sends identify / track / page calls for many users through Customer.io's Node Pipelines SDK,
// with `host` = the gateway. Driven by tests/pipelines_inbound.rs, which reads the sandbox.
//
// Environment: GATEWAY_URL (the gateway's base URL), WRITE_KEY, USERS, CALLS (per user),
// PREFIX (of the user ids), MAX_RETRIES (the SDK's, default 3).
//
// Calls go in rounds: every user's call n, then each user's call n + 1 once round n is
// delivered. The SDK sends full batches without waiting for the ones in flight, so a user's
// calls are only ordered across batches when the caller waits, as here. Prints a JSON summary
// `{"sent": n, "failed": n, "errors": [...]}`; exits 0 either way.
import { Analytics } from '@customerio/cdp-analytics-node'

const env = (name, fallback) => process.env[name] ?? fallback
const users = Number(env('USERS', '20'))
const calls = Number(env('CALLS', '15'))
const prefix = env('PREFIX', 'sdk')

const analytics = new Analytics({
  host: env('GATEWAY_URL'),
  writeKey: env('WRITE_KEY'),
  maxEventsInBatch: users,
  flushInterval: 50,
  maxRetries: Number(env('MAX_RETRIES', '3')),
})

const KINDS = ['identify', 'track', 'page']

// Call `seq` of `userId`: the kinds in turn, each carrying `seq` where the gateway keeps it.
function call(userId, seq) {
  const kind = KINDS[seq % KINDS.length]
  const messageId = `${userId}-${seq}`
  const params = {
    identify: { userId, messageId, traits: { seq, plan: 'pro' } },
    track: { userId, messageId, event: 'step', properties: { seq } },
    page: {
      userId,
      messageId,
      name: 'Pricing',
      properties: { seq, url: `https://example.com/pricing/${seq}` },
    },
  }[kind]
  return new Promise((resolve) => analytics[kind](params, (err) => resolve(err)))
}

const errors = []
let sent = 0
for (let seq = 0; seq < calls; seq++) {
  const round = []
  for (let u = 0; u < users; u++) round.push(call(`${prefix}-${u}`, seq))
  for (const err of await Promise.all(round)) {
    sent++
    if (err) errors.push(String(err?.message ?? err))
  }
}
await analytics.closeAndFlush()
console.log(JSON.stringify({ sent, failed: errors.length, errors: [...new Set(errors)] }))
