import { readFile, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { type Logger, StackerError, atomicWriteFile } from '@stacker/core'
import { decodeLayerName, encodeLayerName, validateContentId } from './names.js'

/** What a layer's filesystem is: content ids, bottom -> top, whatever the output formats.
 *  `meta` is opaque to the store and kept as given. */
export interface LayerRecord {
  version: 1
  chain: string[]
  meta?: unknown
}

// The records of layers, one `<encoded name>.json` each in a dir (the store's `layers/`). The name
// is kept inside the record too, since names too long for a file name are hashed.

function recordFile(dir: string, name: string): string {
  return join(dir, `${encodeLayerName(name)}.json`)
}

/** The record of `name` in `dir`, or undefined when there is none or it is unreadable (logged). */
export async function readRecord(dir: string, name: string, logger: Logger): Promise<LayerRecord | undefined> {
  const file = recordFile(dir, name)
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw e
  }
  const rec = parseRecord(text, name)
  if (!rec) logger.warn(`ignoring unreadable layer record ${file}`)
  return rec
}

/** Replaces the record of `name` in `dir` atomically. */
export async function writeRecord(dir: string, name: string, rec: LayerRecord): Promise<void> {
  if (rec.version !== 1 || !Array.isArray(rec.chain)) {
    throw new StackerError('INTERNAL', `invalid layer record for ${name}`)
  }
  for (const id of rec.chain) validateContentId(id)
  const body: Record<string, unknown> = { version: 1, name, chain: rec.chain }
  if (rec.meta !== undefined) body.meta = rec.meta
  await atomicWriteFile(recordFile(dir, name), `${JSON.stringify(body)}\n`)
}

/** Idempotent. */
export async function removeRecord(dir: string, name: string): Promise<void> {
  await rm(recordFile(dir, name), { force: true })
}

/** Names of all layers recorded in `dir`, sorted. */
export async function listRecords(dir: string): Promise<string[]> {
  const names: string[] = []
  for (const f of await readdir(dir)) {
    if (!f.endsWith('.json') || f.startsWith('.')) continue
    const stem = f.slice(0, -'.json'.length)
    const name = decodeLayerName(stem) ?? (await readStoredName(join(dir, f)))
    if (name !== undefined) names.push(name)
  }
  return names.sort()
}

function parseRecord(text: string, name: string): LayerRecord | undefined {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    return undefined
  }
  if (typeof raw !== 'object' || raw === null) return undefined
  const o = raw as Record<string, unknown>
  if (o.version !== 1 || !Array.isArray(o.chain) || (o.name !== undefined && o.name !== name)) return undefined
  const chain: string[] = []
  for (const id of o.chain) {
    if (typeof id !== 'string') return undefined
    try {
      validateContentId(id)
    } catch {
      return undefined
    }
    chain.push(id)
  }
  return o.meta === undefined ? { version: 1, chain } : { version: 1, chain, meta: o.meta }
}

async function readStoredName(file: string): Promise<string | undefined> {
  try {
    const o = JSON.parse(await readFile(file, 'utf8')) as { name?: unknown }
    return typeof o.name === 'string' ? o.name : undefined
  } catch {
    return undefined
  }
}
