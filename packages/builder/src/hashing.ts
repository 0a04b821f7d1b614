import { type BigIntStats, createReadStream, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { atomicWriteFile, Hasher, isDigest, sha256Digest, type Digest } from '@stacker/core'
import { hashFileOffThread } from '@stacker/oci'

interface StatKey {
  dev: number
  ino: number
  size: number
  mtimeNs: string
  ctimeNs: string
}

/** Remembers file digests by inode, size and times, so an unchanged file costs a stat, not a read.
 *  Kept in `<stacker-dir>/hash-cache.json`; a corrupt file is ignored. */
export class HashCache {
  readonly #file: string
  #entries = new Map<string, { k: StatKey; d: Digest }>()
  #dirty = false

  private constructor(file: string) {
    this.#file = file
  }

  static async open(file: string): Promise<HashCache> {
    const c = new HashCache(file)
    try {
      const raw = JSON.parse(await readFile(file, 'utf8')) as {
        version: number
        entries: Array<[string, StatKey, Digest]>
      }
      if (raw.version === 1 && Array.isArray(raw.entries))
        for (const e of raw.entries) if (isRecord(e)) c.#entries.set(e[0], { k: e[1], d: e[2] })
    } catch {
      // Missing or corrupt: start empty; digests are recomputed.
    }
    return c
  }

  /** `st`: the file's lstat, when the caller has it already. */
  async fileDigest(path: string, st: BigIntStats = lstatSync(path, { bigint: true })): Promise<Digest> {
    const k: StatKey = {
      dev: Number(st.dev),
      ino: Number(st.ino),
      size: Number(st.size),
      mtimeNs: st.mtimeNs.toString(),
      ctimeNs: st.ctimeNs.toString(),
    }
    const hit = this.#entries.get(path)
    if (
      hit &&
      hit.k.dev === k.dev &&
      hit.k.ino === k.ino &&
      hit.k.size === k.size &&
      hit.k.mtimeNs === k.mtimeNs &&
      hit.k.ctimeNs === k.ctimeNs
    )
      return hit.d
    const d = await hashFile(path, k.size)
    this.#entries.set(path, { k, d })
    this.#dirty = true
    return d
  }

  async save(): Promise<void> {
    if (!this.#dirty) return
    const entries = [...this.#entries].map(([p, v]) => [p, v.k, v.d])
    await atomicWriteFile(this.#file, JSON.stringify({ version: 1, entries }))
    this.#dirty = false
  }
}

/** A damaged record is skipped (its file is hashed again), never trusted or fatal. */
function isRecord(e: unknown): e is [string, StatKey, Digest] {
  if (!Array.isArray(e) || e.length !== 3) return false
  const [p, k, d] = e as [unknown, unknown, unknown]
  if (typeof p !== 'string' || typeof d !== 'string' || !isDigest(d)) return false
  if (typeof k !== 'object' || k === null) return false
  const sk = k as Record<string, unknown>
  return (
    typeof sk.dev === 'number' &&
    typeof sk.ino === 'number' &&
    typeof sk.size === 'number' &&
    typeof sk.mtimeNs === 'string' &&
    typeof sk.ctimeNs === 'string'
  )
}

// Below this size a file is read in one synchronous call: a tree of thousands of small files costs
// several async round trips through the thread pool per file otherwise, many times the hashing.
const SMALL_FILE = 1 << 20

export async function hashFile(path: string, size?: number): Promise<Digest> {
  const h = new Hasher()
  if (size !== undefined && size <= SMALL_FILE) h.update(readFileSync(path))
  // A big file of known size is hashed by a worker thread, so a tree's big files hash in parallel
  // with each other and with the walk.
  else if (size !== undefined) return hashFileOffThread(path, size)
  else for await (const chunk of createReadStream(path, { highWaterMark: SMALL_FILE })) h.update(chunk as Buffer)
  return h.digest()
}

export interface TreeEntry {
  path: string
  digest: string
}

/** A digest of a file or directory tree: names, types, modes, owners, symlink targets and file
 *  contents (not times). Returns per-entry digests as well, for "what changed" messages. */
export async function hashTree(root: string, cache: HashCache): Promise<{ digest: Digest; entries: TreeEntry[] }> {
  const entries: TreeEntry[] = []
  // Big files' digests, worked out meanwhile (see hashFile) and put in their entries at the end.
  const pending: Promise<void>[] = []
  // Metadata is read synchronously (see SMALL_FILE); only big files' contents are streamed.
  const walk = async (abs: string, rel: string): Promise<void> => {
    const st = lstatSync(abs, { bigint: true })
    const meta = `${st.mode.toString(8)} ${st.uid}:${st.gid}`
    if (st.isDirectory()) {
      entries.push({ path: rel || '.', digest: `d ${meta}` })
      const names = readdirSync(abs).sort()
      for (const n of names) await walk(join(abs, n), rel ? `${rel}/${n}` : n)
    } else if (st.isSymbolicLink()) {
      entries.push({ path: rel || '.', digest: `l ${meta} ${readlinkSync(abs)}` })
    } else if (st.isFile()) {
      const entry = { path: rel || '.', digest: '' }
      entries.push(entry)
      const digest = cache.fileDigest(abs, st)
      if (st.size <= SMALL_FILE) entry.digest = `f ${meta} ${await digest}`
      else
        pending.push(
          digest.then((d) => {
            entry.digest = `f ${meta} ${d}`
          }),
        )
    } else {
      entries.push({ path: rel || '.', digest: `o ${meta} ${st.rdev}` })
    }
  }
  // Settled even after the walk failed, so that no read of this tree is left running.
  const walked = await walk(root, '').then(
    () => undefined,
    (e: unknown) => ({ e }),
  )
  const settled = await Promise.allSettled(pending)
  if (walked) throw walked.e
  for (const r of settled) if (r.status === 'rejected') throw r.reason
  const digest = sha256Digest(entries.map((e) => `${e.path}\0${e.digest}`).join('\n'))
  return { digest, entries }
}

/** Paths whose entry differs between two listings (added, removed or changed), sorted. */
export function changedPaths(before: readonly TreeEntry[], after: readonly TreeEntry[]): string[] {
  const a = new Map(before.map((e) => [e.path, e.digest]))
  const b = new Map(after.map((e) => [e.path, e.digest]))
  const out = new Set<string>()
  for (const [p, d] of a) if (b.get(p) !== d) out.add(p)
  for (const p of b.keys()) if (!a.has(p)) out.add(p)
  return [...out].sort()
}
