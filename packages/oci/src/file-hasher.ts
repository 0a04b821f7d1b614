import { availableParallelism } from 'node:os'
import type { Worker } from 'node:worker_threads'
import { type Digest, StackerError } from '@stacker/core'

/**
 * Hashes a file that is being appended to, on a worker thread, from what is already written: a
 * download's main thread then only moves bytes, and the hashing (the costliest part of a pull) runs
 * on another core as the file grows. The worker reads back what the writer wrote (from the page
 * cache), so no chunk is copied between threads and none needs to outlive its write.
 */
export interface FileHasher {
  /** The first `bytes` bytes of the file are written: they may be hashed now. Never decreases. */
  advance(bytes: number): void
  /** Hashes up to `bytes` and resolves with the digest of the file's first `bytes` bytes. */
  finish(bytes: number): Promise<Digest>
  /** Stops; the worker forgets the file (safe at any time, any number of times). */
  drop(): void
}

// The worker is a script evaluated from this string, so the file it would be in need not be found
// next to this module (the CLI runs from one bundled file).
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const { openSync, readSync, closeSync } = require('node:fs')
const buf = Buffer.allocUnsafe(1 << 20)
const jobs = new Map()
function catchUp(job, to) {
  while (job.pos < to) {
    const n = readSync(job.fd, buf, 0, Math.min(buf.length, to - job.pos), job.pos)
    if (n <= 0) throw new Error('the file is shorter than what was written to it')
    job.hash.update(n === buf.length ? buf : buf.subarray(0, n))
    job.pos += n
  }
}
parentPort.on('message', (m) => {
  let job = jobs.get(m.id)
  try {
    if (m.op === 'open') {
      jobs.set(m.id, { fd: openSync(m.path, 'r'), hash: createHash(m.algorithm), pos: 0, error: undefined })
      return
    }
    if (!job) return
    if (m.op === 'drop') {
      jobs.delete(m.id)
      closeSync(job.fd)
      return
    }
    if (job.error === undefined) catchUp(job, m.to)
  } catch (e) {
    if (job) job.error ??= e
    else if (m.op === 'open') jobs.set(m.id, (job = { fd: -1, error: e }))
  }
  if (m.op === 'finish') {
    jobs.delete(m.id)
    if (job.fd >= 0) closeSync(job.fd)
    if (job.error !== undefined) parentPort.postMessage({ id: m.id, error: String(job.error && job.error.message || job.error) })
    else parentPort.postMessage({ id: m.id, hex: job.hash.digest('hex') })
  }
})
`

const ADVANCE_STEP = 1 << 20

type Reply = { id: number; hex?: string; error?: string }

interface PoolWorker {
  worker: Worker
  /** Files it hashes now. */
  active: number
  waiting: Map<number, { resolve: (hex: string) => void; reject: (e: Error) => void }>
}

/** Workers are started on first use and shared by the whole process; they never keep it alive
 *  when they have nothing to do. */
const pool: PoolWorker[] = []
let nextId = 1
let workerClass: typeof Worker | undefined

async function pickWorker(): Promise<PoolWorker> {
  const max = Math.max(1, Math.min(2, availableParallelism() - 1))
  const idle = pool.find((w) => w.active === 0)
  if (idle || pool.length >= max) return idle ?? pool.reduce((a, b) => (b.active < a.active ? b : a))
  workerClass ??= (await import('node:worker_threads')).Worker
  const w: PoolWorker = { worker: new workerClass(WORKER_SOURCE, { eval: true }), active: 0, waiting: new Map() }
  w.worker.unref()
  w.worker.on('message', (r: Reply) => {
    const p = w.waiting.get(r.id)
    if (!p) return
    w.waiting.delete(r.id)
    if (r.hex !== undefined) p.resolve(r.hex)
    else
      p.reject(
        Object.assign(new Error(`couldn't hash a blob being written: ${r.error ?? 'unknown error'}`), { code: 'EIO' }),
      )
  })
  const fail = (e: unknown) => {
    const i = pool.indexOf(w)
    if (i >= 0) pool.splice(i, 1)
    const err = new StackerError(
      'INTERNAL',
      `the hashing thread stopped: ${e instanceof Error ? e.message : String(e)}`,
    )
    for (const p of w.waiting.values()) p.reject(err)
    w.waiting.clear()
  }
  w.worker.on('error', fail)
  w.worker.on('exit', (code) => fail(new Error(`exit code ${code}`)))
  pool.push(w)
  return w
}

/** Hashing of `path` with `algorithm` off the main thread (see FileHasher). The file must exist. */
export async function openFileHasher(path: string, algorithm: 'sha256' | 'sha512'): Promise<FileHasher> {
  const w = await pickWorker()
  const id = nextId++
  let done = false
  const release = () => {
    done = true
    // A worker with files to hash keeps the process alive, as the main thread's own hashing would.
    if (--w.active === 0) w.worker.unref()
  }
  if (w.active++ === 0) w.worker.ref()
  w.worker.postMessage({ op: 'open', id, path, algorithm })
  let advanced = 0
  return {
    advance(bytes) {
      // A message per megabyte at most: the worker reads in pieces of that size anyway.
      if (done || bytes - advanced < ADVANCE_STEP) return
      advanced = bytes
      w.worker.postMessage({ op: 'advance', id, to: bytes })
    },
    finish(bytes) {
      if (done) return Promise.reject(new StackerError('INTERNAL', 'file hasher already finished'))
      const p = new Promise<string>((resolve, reject) => w.waiting.set(id, { resolve, reject }))
      w.worker.postMessage({ op: 'finish', id, to: bytes })
      return p.then(
        (hex) => {
          release()
          return `${algorithm}:${hex}` as Digest
        },
        (e: unknown) => {
          release()
          throw e
        },
      )
    },
    drop() {
      if (done) return
      release()
      w.worker.postMessage({ op: 'drop', id })
    },
  }
}

/** The digest of the first `size` bytes of a finished file, hashed on a worker thread (several
 *  files at once hash on several cores). */
export async function hashFileOffThread(
  path: string,
  size: number,
  algorithm: 'sha256' | 'sha512' = 'sha256',
): Promise<Digest> {
  return (await openFileHasher(path, algorithm)).finish(size)
}
