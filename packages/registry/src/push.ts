import { type Digest, isDigest, type Logger, StackerError, silentLogger } from '@stacker/core'
import { type Descriptor, type ImageIndex, isIndexMediaType, type Manifest } from '@stacker/oci'
import { blobSource } from './blob-source.js'
import { type PushBlobResult, RegistryClient } from './client.js'
import { type OciLayoutLike, withContext } from './layout-like.js'
import type { ImageRef } from './ref.js'

/** What pushImage sends (`source` in `layout`), where (`ref`, `tags`), and which repository may
 *  already hold its blobs. */
export interface PushImageOptions {
  layout: OciLayoutLike
  /** A tag or a digest in the layout. */
  source: string
  ref: ImageRef
  /** Tags to push to; none means the reference's tag, or its digest when it has no tag. */
  tags: string[]
  client?: RegistryClient
  logger?: Logger
  /** A repository of the same registry that may hold the blobs already (cross-repository mount):
   *  one for every blob, or a function naming one for a blob (or none). */
  mountFrom?: string | ((digest: Digest) => string | undefined)
  /** Blobs uploaded at once (default 3). */
  concurrency?: number
}

/** The pushed manifest and what pushing took for each blob (see pushImageDetailed). */
export interface PushImageResult {
  descriptor: Descriptor
  /** What happened to each blob. */
  blobs: Map<Digest, PushBlobResult>
}

/** Pushes an image from a layout (a tag or digest) to a registry under one or more tags: blobs
 *  first (each skipped if present, mounted if possible), then child manifests, then the manifest
 *  under each tag, so a tag never points at an incomplete image. Returns the manifest descriptor. */
export async function pushImage(opts: PushImageOptions): Promise<Descriptor> {
  return (await pushImageDetailed(opts)).descriptor
}

/** pushImage, also saying what happened to each blob. */
export async function pushImageDetailed(opts: PushImageOptions): Promise<PushImageResult> {
  const logger = opts.logger ?? silentLogger
  const client = opts.client ?? new RegistryClient(opts.ref, { logger })
  const { layout } = opts
  const blobs = new Map<Digest, PushBlobResult>()
  const from = opts.mountFrom
  const mountFor = typeof from === 'function' ? from : () => from
  try {
    return await withContext(`pushing ${opts.ref}`, 'OCI_LAYOUT', async () => {
      const found = await layout.resolve(opts.source)
      const bytes = await layout.readBlob(found.digest)
      const descriptor: Descriptor = { mediaType: found.mediaType, digest: found.digest, size: bytes.byteLength }
      if (opts.ref.digest !== undefined && opts.ref.digest !== descriptor.digest) {
        throw new StackerError('DIGEST', `${opts.source} is ${descriptor.digest}, not ${opts.ref.digest}`)
      }

      const pushTree = async (desc: Descriptor, raw: Buffer, depth: number): Promise<void> => {
        const parsed = JSON.parse(raw.toString('utf8')) as Partial<Manifest & ImageIndex>
        if (isIndexMediaType(desc.mediaType) || Array.isArray(parsed.manifests)) {
          if (depth > 4) throw new StackerError('OCI_LAYOUT', `index ${desc.digest} nests too deep`)
          for (const child of parsed.manifests ?? []) {
            checkDescriptor(desc, child)
            const childBytes = await layout.readBlob(child.digest)
            await pushTree(child, childBytes, depth + 1)
            await client.putManifest(child.digest, childBytes, child.mediaType)
          }
          return
        }
        const parts = [parsed.config, ...(parsed.layers ?? [])]
        const todo: Descriptor[] = []
        for (const b of parts) {
          checkDescriptor(desc, b)
          if (!blobs.has(b.digest) && !todo.some((t) => t.digest === b.digest)) todo.push(b)
        }
        const done = await inParallel(todo, opts.concurrency ?? 3, async (b) => {
          const mountFrom = mountFor(b.digest)
          const r = await client.pushBlob(b, () => blobSource(layout, b.digest), {
            ...(mountFrom !== undefined ? { mountFrom } : {}),
          })
          logger.debug(`blob ${b.digest}: ${r}`)
          return r
        })
        for (const [i, b] of todo.entries()) blobs.set(b.digest, done[i] as PushBlobResult)
      }
      await pushTree(descriptor, bytes, 0)

      const tags = opts.tags.length > 0 ? opts.tags : [opts.ref.tag ?? descriptor.digest]
      for (const tag of tags) await client.putManifest(tag, bytes, descriptor.mediaType)
      logger.debug(`pushed ${opts.ref}`, { digest: descriptor.digest, tags: tags.join(',') })
      return { descriptor, blobs }
    })
  } finally {
    if (!opts.client) client.close()
  }
}

/** Runs `fn` over `items`, at most `limit` at a time; results in the items' order. On a failure no
 *  new item is started, the running ones are waited for, and the first error is thrown. */
async function inParallel<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length)
  let next = 0
  const state: { failure?: unknown } = {}
  const worker = async (): Promise<void> => {
    while (next < items.length && !('failure' in state)) {
      const i = next++
      try {
        results[i] = await fn(items[i] as T)
      } catch (e) {
        if (!('failure' in state)) state.failure = e
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker))
  if ('failure' in state) throw state.failure
  return results
}

function checkDescriptor(parent: Descriptor, d: Descriptor | undefined): asserts d is Descriptor {
  if (!d || typeof d.digest !== 'string' || !isDigest(d.digest) || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw new StackerError('OCI_LAYOUT', `manifest ${parent.digest} has an invalid descriptor`)
  }
}
