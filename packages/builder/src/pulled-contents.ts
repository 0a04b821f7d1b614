import { link, mkdir, readFile, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { atomicWriteFile, type Digest, isDigest, type Logger, pathExists, StackerError } from '@stacker/core'
import { extractTarLayer } from '@stacker/layers'
import type { Descriptor, OciLayout } from '@stacker/oci'
import type { OverlayStore } from '@stacker/overlay'
import { contentDigest, contentIdFor } from './content.js'
import { copyTree } from './util.js'

/**
 * A layer's own diff found in the shared cache is not extracted when it is found: its outputs are
 * made from pulled blobs, and most such layers are never run on or read. Its gzip tar (already
 * checked against the diff id its content id is derived from) is kept in
 * `<stacker-dir>/layer-bases/pulled/<id>.tar.gz`, and the first reader of the chain
 * (openChainContents) extracts it into the store, refusing it unless the extracted tree, tarred
 * again, has that diff id. A content dir appears complete or not at all, as any other.
 */
interface PulledRecord {
  diffId: Digest
  /** SOURCE_DATE_EPOCH the id was derived with (null: none). */
  sourceDateEpoch: number | null
}

function dirOf(stackerDir: string): string {
  return join(stackerDir, 'layer-bases', 'pulled')
}

/** Keeps the pulled tar of content `id` (a blob of `layout`) for materialisePulled. */
export async function registerPulledContent(
  stackerDir: string,
  layout: OciLayout,
  id: string,
  blob: Descriptor,
  rec: PulledRecord,
): Promise<void> {
  const dir = dirOf(stackerDir)
  await mkdir(dir, { recursive: true })
  const file = join(dir, `${id}.tar.gz`)
  if (!(await pathExists(file))) {
    const tmp = `${file}.${process.pid}.tmp`
    await rm(tmp, { force: true })
    try {
      await link(layout.blobPath(blob.digest), tmp)
    } catch {
      await copyTree(layout.blobPath(blob.digest), tmp)
    }
    await rename(tmp, file)
  }
  await atomicWriteFile(join(dir, `${id}.json`), JSON.stringify(rec))
}

/** Whether content `id` can be materialised from a pulled tar. */
export async function hasPulledContent(stackerDir: string, id: string): Promise<boolean> {
  const dir = dirOf(stackerDir)
  return (await pathExists(join(dir, `${id}.json`))) && (await pathExists(join(dir, `${id}.tar.gz`)))
}

/** Extracts pulled content `id` into the store if it is not there yet (see the file comment). */
export async function materialisePulled(
  opts: { stackerDir: string; store: OverlayStore; logger: Logger; signal?: AbortSignal | undefined },
  id: string,
): Promise<void> {
  if (await opts.store.hasContent(id)) return
  const dir = dirOf(opts.stackerDir)
  let rec: PulledRecord
  try {
    rec = JSON.parse(await readFile(join(dir, `${id}.json`), 'utf8')) as PulledRecord
  } catch {
    return
  }
  if (typeof rec.diffId !== 'string' || !isDigest(rec.diffId)) return
  const sde = rec.sourceDateEpoch ?? undefined
  const tar = join(dir, `${id}.tar.gz`)
  opts.logger.debug(`extracting the pulled content ${id}`)
  await opts.store.ensureContent(id, async (target) => {
    const { createReadStream } = await import('node:fs')
    await extractTarLayer(createReadStream(tar), target, {
      ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
      whiteouts: 'overlay',
      compression: 'gzip',
      sourceDescription: tar,
    })
    const got = await contentDigest(target, sde)
    if (got !== rec.diffId || contentIdFor(got, sde) !== id)
      throw new StackerError(
        'DIGEST',
        `the content ${id} pulled from the shared cache extracts to diff ${got}, not ${rec.diffId}`,
        { hint: 'rebuild with --no-cache' },
      )
  })
  await rm(tar, { force: true })
  await rm(join(dir, `${id}.json`), { force: true })
}
