import { rm, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { type Digest, isDigest, isErrno, StackerError } from '@stacker/core'
import { TEMP_DIR } from './blob-writer.js'
import type { GcResult, OciLayout } from './layout.js'
import { isIndexMediaType, isManifestMediaType } from './media-types.js'
import type { LayoutState } from './state.js'
import type { Descriptor } from './types.js'

const ROOT_TEMP_RE = /^\.(index\.json|oci-layout)\.tmp-(\d+)-[0-9a-f]+$/
const TEMP_FILE_RE = /^blob-(\d+)-[0-9a-f]+$/
const HEX_LEN: Readonly<Record<string, number>> = { sha256: 64, sha512: 128 }

/** The garbage collection of a layout (see OciLayout.gc); the caller holds its index and blob locks. */
export async function collectGarbage(layout: OciLayout, state: LayoutState, keep: Digest[]): Promise<GcResult> {
  const live = await reachable(layout, keep)
  const removed: Digest[] = []
  const blobsDir = join(layout.dir, 'blobs')
  for (const alg of await readdirOrEmpty(blobsDir)) {
    const len = HEX_LEN[alg]
    if (len === undefined) continue
    for (const name of await readdirOrEmpty(join(blobsDir, alg))) {
      const d = `${alg}:${name}`
      if (name.length !== len || !isDigest(d)) continue
      if (live.has(d) || state.digests.has(d)) continue
      await rm(join(blobsDir, alg, name), { force: true })
      removed.push(d)
    }
  }
  const temp = await removeStaleTemps(layout.dir, state)
  removed.sort()
  return { removed, temp }
}

async function reachable(layout: OciLayout, keep: Digest[]): Promise<Set<string>> {
  const index = await layout.readIndex()
  const seen = new Set<string>()
  const queue: Array<{ digest: string; mediaType?: string }> = [
    ...index.manifests,
    ...keep.map((digest) => ({ digest })),
  ]
  if (index.subject) queue.push(index.subject)
  while (queue.length > 0) {
    const d = queue.pop()!
    if (!isDigest(d.digest) || seen.has(d.digest)) continue
    seen.add(d.digest)
    const mayHaveChildren =
      d.mediaType === undefined || isManifestMediaType(d.mediaType) || isIndexMediaType(d.mediaType)
    if (!mayHaveChildren || !(await layout.hasBlob(d.digest))) continue
    let doc: Record<string, unknown>
    if (d.mediaType === undefined) {
      // A `keep` digest of unknown type: follow it only if it parses as JSON.
      try {
        doc = JSON.parse((await layout.readBlob(d.digest)).toString('utf8')) as Record<string, unknown>
      } catch (e) {
        if (e instanceof StackerError) throw e
        continue
      }
      if (typeof doc !== 'object' || doc === null) continue
    } else {
      doc = await layout.readJson<Record<string, unknown>>(d.digest)
    }
    for (const key of ['config', 'subject'] as const) {
      const child = doc[key] as Descriptor | undefined
      if (child && typeof child === 'object' && typeof child.digest === 'string') queue.push(child)
    }
    for (const key of ['layers', 'manifests', 'blobs'] as const) {
      const list = doc[key]
      if (!Array.isArray(list)) continue
      for (const child of list as Descriptor[]) {
        if (child && typeof child === 'object' && typeof child.digest === 'string') queue.push(child)
      }
    }
  }
  return seen
}

async function removeStaleTemps(dir: string, state: LayoutState): Promise<string[]> {
  const removed: string[] = []
  const tmpDir = join(dir, TEMP_DIR)
  for (const name of await readdirOrEmpty(tmpDir)) {
    const path = join(tmpDir, name)
    if (state.tempFiles.has(path)) continue
    const pid = Number(TEMP_FILE_RE.exec(name)?.[1] ?? Number.NaN)
    if (pid !== process.pid && pidAlive(pid)) continue
    await rm(path, { recursive: true, force: true })
    removed.push(path)
  }
  // Crashed index.json/oci-layout replacements; ours can't be live because we hold the index lock.
  for (const name of await readdirOrEmpty(dir)) {
    const m = ROOT_TEMP_RE.exec(name)
    if (!m) continue
    const pid = Number(m[2])
    if (pid !== process.pid && pidAlive(pid)) continue
    await rm(join(dir, name), { force: true })
    removed.push(join(dir, name))
  }
  return removed.sort()
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort()
  } catch (e) {
    if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return []
    throw e
  }
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return isErrno(e, 'EPERM')
  }
}
