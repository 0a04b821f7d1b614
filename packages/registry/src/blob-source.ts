import { createReadStream } from 'node:fs'
import { type Digest, digestAlgorithm, Hasher, StackerError } from '@stacker/core'
import type { OciLayoutLike } from './layout-like.js'

/** Large reads: a blob is read once, start to end, and 1 MiB pieces cost a sixteenth of the calls
 *  (file reads and socket writes) that 64 KiB ones do. */
const READ_SIZE = 1 << 20

/**
 * A blob's bytes for an upload. When the layout names its files (blobPath), the file is read in
 * large pieces and checked against its digest as openBlob would (DIGEST at the end on a mismatch,
 * NOT_FOUND if absent); otherwise the layout's openBlob.
 */
export function blobSource(layout: OciLayoutLike, d: Digest): AsyncIterable<Uint8Array> {
  if (!layout.blobPath) return layout.openBlob(d)
  return readVerified(layout.blobPath(d), d)
}

async function* readVerified(path: string, d: Digest): AsyncGenerator<Uint8Array> {
  const h = new Hasher(digestAlgorithm(d))
  try {
    for await (const chunk of createReadStream(path, { highWaterMark: READ_SIZE })) {
      h.update(chunk as Buffer)
      yield chunk as Buffer
    }
  } catch (e) {
    if (e instanceof StackerError) throw e
    if ((e as { code?: unknown }).code === 'ENOENT')
      throw new StackerError('NOT_FOUND', `blob ${d} not found in the OCI layout`, { cause: e })
    throw new StackerError('OCI_LAYOUT', `can't read blob ${d} (${path}): ${(e as Error).message}`, { cause: e })
  }
  const actual = h.digest()
  if (actual !== d) throw new StackerError('DIGEST', `blob ${d} is corrupt: ${path} has digest ${actual}`)
}
