import { randomUUID } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { link, mkdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import {
  atomicWriteFile,
  type Digest,
  isDigest,
  isStackerError,
  type Logger,
  pathExists,
  StackerError,
} from '@stacker/core'
import { extractTarLayer } from '@stacker/layers'
import { type Descriptor, layerKind, type OciLayout, openVerifiedFile } from '@stacker/oci'
import type { OverlayStore } from '@stacker/overlay'
import { contentDigest, contentIdFor, DIFF_PREFIX } from './content.js'
import { copyTree } from './util.js'

/**
 * Contents that are kept as a tar until something reads them (docs/architecture.md, "Contents
 * extracted on first read"):
 *
 * - A layer's own diff found in the shared cache: its outputs are made from pulled blobs, and most
 *   such layers are never run on or read. Its gzip tar (already checked against the diff id its
 *   content id is derived from) is kept as `<id>.tar.gz`; the extracted tree, tarred again, must
 *   have that diff id.
 * - A tar layer of a base image (`sha256_<blob hex>`): a build whose layers are all found in a
 *   cache never reads it. The blob is kept as `<id>.blob` (a hard link to the image's blob, never
 *   a copy); it must have its digest when it is extracted.
 *
 * Both live in `<stacker-dir>/layer-bases/pulled/` with a `<id>.json` record. The first reader of
 * a chain (OpenedImages.open) extracts them into the store; a content dir appears complete or not
 * at all, as any other.
 */
interface PulledRecord {
  diffId: Digest
  /** SOURCE_DATE_EPOCH the id was derived with (null: none). */
  sourceDateEpoch: number | null
}

interface BaseRecord {
  kind: 'base'
  /** The blob's digest and media type, as the image's manifest gives them. */
  digest: Digest
  mediaType: string
  /** Where the image's blob is (for messages: the kept file is a link to it). */
  source: string
}

function dirOf(stackerDir: string): string {
  return join(stackerDir, 'layer-bases', 'pulled')
}

function dataFile(stackerDir: string, id: string): string {
  return join(dirOf(stackerDir), id.startsWith(DIFF_PREFIX) ? `${id}.tar.gz` : `${id}.blob`)
}

/** Links `from` to `to` (through a fresh temporary name, so `to` appears whole). With `copy`, a
 *  copy is made where a link cannot be; without, false is returned then. An existing `to` is kept
 *  when it is a copy, or a link to `from` itself; a link to a file that `from` no longer is (a
 *  layout copied again after a corruption) is replaced. */
async function linkInto(from: string, to: string, copy: boolean): Promise<boolean> {
  const had = await stat(to).catch(() => undefined)
  if (had && (copy || (await stat(from).catch(() => undefined))?.ino === had.ino)) return true
  const tmp = `${to}.${randomUUID()}.tmp`
  try {
    try {
      await link(from, tmp)
    } catch {
      if (!copy) return false
      await copyTree(from, tmp)
    }
    await rename(tmp, to)
    return true
  } finally {
    await rm(tmp, { force: true })
  }
}

/** Keeps the pulled tar of content `id` (a blob of `layout`) for materialisePulled. */
export async function registerPulledContent(
  stackerDir: string,
  layout: OciLayout,
  id: string,
  blob: Descriptor,
  rec: PulledRecord,
): Promise<void> {
  await mkdir(dirOf(stackerDir), { recursive: true })
  await linkInto(layout.blobPath(blob.digest), dataFile(stackerDir, id), true)
  await atomicWriteFile(join(dirOf(stackerDir), `${id}.json`), JSON.stringify(rec))
}

/**
 * Keeps tar layer `d` of a base image in `layout` as content `id`, to be extracted by its first
 * reader. False (nothing kept) when the blob cannot be hard-linked into the stacker dir (another
 * filesystem) or is not a tar layer: the caller extracts it now.
 */
export async function deferBaseContent(
  stackerDir: string,
  layout: OciLayout,
  id: string,
  d: Descriptor,
): Promise<boolean> {
  if (id.startsWith(DIFF_PREFIX) || layerKind(d.mediaType) !== 'tar') return false
  await mkdir(dirOf(stackerDir), { recursive: true })
  if (!(await linkInto(layout.blobPath(d.digest), dataFile(stackerDir, id), false))) return false
  const rec: BaseRecord = { kind: 'base', digest: d.digest, mediaType: d.mediaType, source: layout.blobPath(d.digest) }
  await atomicWriteFile(join(dirOf(stackerDir), `${id}.json`), JSON.stringify(rec))
  return true
}

/** Whether content `id` can be materialised from a kept tar. */
export async function hasPulledContent(stackerDir: string, id: string): Promise<boolean> {
  return (await pathExists(join(dirOf(stackerDir), `${id}.json`))) && (await pathExists(dataFile(stackerDir, id)))
}

/** Extracts kept content `id` into the store if it is not there yet (see the file comment). The
 *  caller makes sure one call per id runs at a time (OpenedImages). */
export async function materialisePulled(
  opts: { stackerDir: string; store: OverlayStore; logger: Logger; signal?: AbortSignal | undefined },
  id: string,
): Promise<void> {
  if (await opts.store.hasContent(id)) return
  const dir = dirOf(opts.stackerDir)
  let rec: unknown
  try {
    rec = JSON.parse(await readFile(join(dir, `${id}.json`), 'utf8'))
  } catch {
    return
  }
  const file = dataFile(opts.stackerDir, id)
  const signal = opts.signal !== undefined ? { signal: opts.signal } : {}
  if (isBaseRecord(rec)) {
    opts.logger.debug(`extracting ${rec.digest} (${rec.mediaType})`)
    try {
      await opts.store.ensureContent(id, async (target) => {
        // Checked against its digest as it is read: a blob changed since it was linked fails here.
        await extractTarLayer(openVerifiedFile(file, rec.digest, { name: rec.source }), target, {
          ...signal,
          whiteouts: 'overlay',
          compression: 'auto',
          sourceDescription: rec.digest,
        })
      })
    } catch (e) {
      // A corrupt blob is not kept: the next build links the image's blob again.
      if (isStackerError(e, 'DIGEST')) {
        await rm(file, { force: true })
        await rm(join(dir, `${id}.json`), { force: true })
      }
      throw e
    }
    await opts.store.setBlobView(rec.digest, id)
  } else if (isPulledRecord(rec)) {
    const sde = rec.sourceDateEpoch ?? undefined
    opts.logger.debug(`extracting the pulled content ${id}`)
    await opts.store.ensureContent(id, async (target) => {
      await extractTarLayer(createReadStream(file), target, {
        ...signal,
        whiteouts: 'overlay',
        compression: 'gzip',
        sourceDescription: file,
      })
      const got = await contentDigest(target, sde)
      if (got !== rec.diffId || contentIdFor(got, sde) !== id)
        throw new StackerError(
          'DIGEST',
          `the content ${id} pulled from the shared cache extracts to diff ${got}, not ${rec.diffId}`,
          { hint: 'rebuild with --no-cache' },
        )
    })
  } else return
  await rm(file, { force: true })
  await rm(join(dir, `${id}.json`), { force: true })
}

function isBaseRecord(v: unknown): v is BaseRecord {
  const r = v as Partial<BaseRecord> | null
  return (
    typeof r === 'object' &&
    r !== null &&
    r.kind === 'base' &&
    typeof r.digest === 'string' &&
    isDigest(r.digest) &&
    typeof r.mediaType === 'string' &&
    typeof r.source === 'string'
  )
}

function isPulledRecord(v: unknown): v is PulledRecord {
  const r = v as Partial<PulledRecord> | null
  return typeof r === 'object' && r !== null && typeof r.diffId === 'string' && isDigest(r.diffId)
}
