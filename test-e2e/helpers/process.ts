import { createServer } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

/** What the helpers need of an execa subprocess, whatever its options. */
export interface Child extends PromiseLike<unknown> {
  readonly exitCode: number | null
  readonly signalCode: NodeJS.Signals | null
  kill(signal?: NodeJS.Signals | number): boolean
}

// Servers started by the helpers are killed when the worker exits, even if a test forgot stop().
const live = new Set<Child>()
let hooked = false

/** Tracks a long-running child so it is SIGKILLed at process exit; returns a function that untracks it. */
export function trackChild(child: Child): () => void {
  if (!hooked) {
    hooked = true
    process.on('exit', () => {
      for (const c of live) c.kill('SIGKILL')
    })
  }
  live.add(child)
  return () => {
    live.delete(child)
  }
}

/** Stops a tracked child: SIGTERM, then SIGKILL if it has not exited after graceMs. Never throws. */
export async function stopChild(child: Child, graceMs = 5000): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    await settle(child)
    clearTimeout(timer)
  } else {
    await settle(child)
  }
}

async function settle(child: Child): Promise<void> {
  try {
    await child
  } catch {
    // The exit status of a server being stopped is of no interest.
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it). */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0
      srv.close(() => resolvePort(port))
    })
  })
}

/**
 * Polls until `ready()` resolves true. Fails with `what` and the last error once `timeoutMs` passes or
 * `gaveUp()` says the thing being waited for has died.
 */
export async function waitUntil(
  ready: () => Promise<boolean>,
  opts: { what: string; timeoutMs?: number; gaveUp?: () => string | undefined },
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000)
  let last: unknown
  for (;;) {
    try {
      if (await ready()) return
    } catch (e) {
      last = e
    }
    const dead = opts.gaveUp?.()
    if (dead !== undefined) throw new Error(`${opts.what}: ${dead}`)
    if (Date.now() > deadline) {
      throw new Error(`${opts.what}: not ready after ${opts.timeoutMs ?? 20_000}ms`, { cause: last })
    }
    await sleep(50)
  }
}

/** True when an HTTP GET of url gets any response at all (any status). */
export async function answers(url: string): Promise<boolean> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) })
  await res.arrayBuffer()
  return true
}
