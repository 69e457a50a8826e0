// What every test script here shares: JSON lines on stdout, a failure that names the
// script and exits 1, a deadline for the whole run, and polling until a condition holds.
export const WAIT_MS = 30_000

export const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

// fail(message) ends the script; the whole run fails after totalMs (3 waits by default).
export function script(name, totalMs = 3 * WAIT_MS) {
  const fail = (message) => {
    process.stderr.write(`${name}: ${message}\n`)
    process.exit(1)
  }
  setTimeout(() => fail(`not done in ${totalMs / 1000} s`), totalMs).unref()
  const until = async (test, what) => {
    const deadline = Date.now() + WAIT_MS
    while (!test()) {
      if (Date.now() > deadline) fail(`timed out waiting for ${what}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  return { fail, until }
}
