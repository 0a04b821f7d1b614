import { type Digest, isDigest, type Logger, StackerError, settleAll, silentLogger } from '@stacker/core'
import {
  type BlobWriter,
  type Descriptor,
  type ImageIndex,
  isIndexMediaType,
  type Manifest,
  type Platform,
} from '@stacker/oci'
import { RegistryClient } from './client.js'
import { isRetryable } from './errors.js'
import { type OciLayoutLike, withContext } from './layout-like.js'
import { type ImageRef, refReference } from './ref.js'
import { WriteBatch } from './write-batch.js'

/** What pullImage copies (`ref`, for an index `platform` or `all`), into which layout, and under
 *  which tag. */
export interface PullImageOptions {
  ref: ImageRef
  layout: OciLayoutLike
  /** For an index: the platform to take (default linux on this machine's architecture). */
  platform?: Platform
  /** For an index: copy it whole, every platform, and return the index's descriptor. */
  all?: boolean
  /** Tag the result in the layout. */
  tag?: string
  /** Annotations of the tag's entry in index.json (e.g. sourceAnnotation(ref), which lets a later
   *  push mount the image's blobs from where they came). */
  tagAnnotations?: Record<string, string>
  client?: RegistryClient
  logger?: Logger
  /** Blobs downloaded at once (default 3). */
  concurrency?: number
}

interface FetchedManifest {
  descriptor: Descriptor
  bytes: Buffer
}

/**
 * Copies an image (manifests, config and layers) from a registry into an OCI layout. Blobs already
 * in the layout are not fetched. Every blob is downloaded to a temp file of the layout and verified;
 * only when all of them are complete do they become visible, then the manifests, then the tag: a
 * failed pull leaves no new blob and no tag behind. Returns the descriptor of what was copied (the
 * platform's manifest, or the index with `all`). Manifests are stored byte for byte, so a Docker
 * schema 2 manifest keeps its digest.
 */
export async function pullImage(opts: PullImageOptions): Promise<Descriptor> {
  const logger = opts.logger ?? silentLogger
  const client = opts.client ?? new RegistryClient(opts.ref, { logger })
  const { layout } = opts
  try {
    return await withContext(`pulling ${opts.ref}`, 'OCI_LAYOUT', async () => {
      const reference = refReference(opts.ref)
      const manifests: FetchedManifest[] = []
      let top: Descriptor
      if (opts.all) {
        const raw = await client.getRawManifest(reference)
        await collectTree(client, raw, manifests, 0)
        top = raw.descriptor
      } else {
        const m = await client.getManifest(reference, opts.platform ? { platform: opts.platform } : {})
        manifests.push(m)
        top = m.descriptor
      }

      const wanted = new Map<Digest, Descriptor>()
      for (const m of manifests) {
        if (isIndexMediaType(m.descriptor.mediaType)) continue
        for (const b of manifestBlobs(m)) if (!wanted.has(b.digest)) wanted.set(b.digest, b)
      }
      const missing: Descriptor[] = []
      for (const b of wanted.values()) {
        if (await layout.hasBlob(b.digest)) logger.debug(`blob ${b.digest} already present`)
        else missing.push(b)
      }

      const staged = await stageBlobs(client, layout, missing, opts.concurrency ?? 3)
      await commitAll(staged)
      for (const m of manifests) {
        if (!(await layout.hasBlob(m.descriptor.digest))) {
          await layout.putBlob(m.bytes, { digest: m.descriptor.digest, size: m.descriptor.size })
        }
      }
      const result: Descriptor = { mediaType: top.mediaType, digest: top.digest, size: top.size }
      if (opts.tag !== undefined) {
        const annotations = opts.tagAnnotations
        await layout.setTag(opts.tag, annotations ? { ...result, annotations } : result)
      }
      logger.debug(`pulled ${opts.ref}`, { digest: result.digest, blobs: missing.length })
      return result
    })
  } finally {
    if (!opts.client) client.close()
  }
}

/** Children first, so committing in array order never makes a parent visible before its children. */
async function collectTree(
  client: RegistryClient,
  m: FetchedManifest,
  out: FetchedManifest[],
  depth: number,
): Promise<void> {
  if (isIndexMediaType(m.descriptor.mediaType)) {
    if (depth > 4)
      throw new StackerError('REGISTRY', `index ${m.descriptor.digest} nests too deep`, {
        detail: { reason: 'protocol', retryable: false },
      })
    const index = parseJson<ImageIndex>(m)
    for (const entry of Array.isArray(index.manifests) ? index.manifests : []) {
      checkDescriptor(m, entry)
      const child = await client.getRawManifest(entry.digest)
      await collectTree(client, child, out, depth + 1)
    }
  }
  out.push(m)
}

function parseJson<T>(m: FetchedManifest): T {
  return JSON.parse(m.bytes.toString('utf8')) as T
}

function checkDescriptor(m: FetchedManifest, d: Descriptor | undefined): asserts d is Descriptor {
  if (!d || typeof d.digest !== 'string' || !isDigest(d.digest) || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw new StackerError('REGISTRY', `manifest ${m.descriptor.digest} has an invalid descriptor`, {
      detail: { reason: 'protocol', retryable: false },
    })
  }
}

function manifestBlobs(m: FetchedManifest): Descriptor[] {
  const manifest = parseJson<Manifest>(m)
  const blobs = [manifest.config, ...(Array.isArray(manifest.layers) ? manifest.layers : [])]
  for (const b of blobs) checkDescriptor(m, b)
  return blobs
}

const ABANDONED = new Error('abandoned after another blob failed')

/** Downloads blobs into uncommitted writers. On any failure every writer is aborted and the first
 *  error is thrown, so nothing of this pull becomes visible. */
async function stageBlobs(
  client: RegistryClient,
  layout: OciLayoutLike,
  blobs: Descriptor[],
  concurrency: number,
): Promise<BlobWriter[]> {
  const staged: BlobWriter[] = []
  const queue = [...blobs]
  const state: { failure?: unknown } = {}
  const worker = async () => {
    for (let d = queue.shift(); d && !('failure' in state); d = queue.shift()) {
      try {
        staged.push(await fetchInto(client, layout, d, state))
      } catch (e) {
        if (!('failure' in state)) state.failure = e
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, blobs.length)) }, worker))
  if ('failure' in state) {
    await Promise.all(staged.map((w) => w.abort()))
    throw state.failure
  }
  return staged
}

async function fetchInto(
  client: RegistryClient,
  layout: OciLayoutLike,
  desc: Descriptor,
  state: { failure?: unknown },
): Promise<BlobWriter> {
  return stageBlob(client, layout, desc, { abandoned: () => 'failure' in state })
}

/** A check of a blob's content besides its digest. Its verdict is asked only once the blob matched
 *  its digest: bytes that are not the blob fail as such, whatever else they would fail. */
export interface BlobCheck {
  /** Takes a chunk (not modified afterwards); resolves when there is room for more. Never rejects:
   *  a failure is kept for end(). */
  write(chunk: Uint8Array): Promise<void>
  /** Resolves when every byte passed the check, else rejects. */
  end(): Promise<void>
  /** Stops the check and releases what it holds (the attempt failed). */
  abort(): void
}

/** What stageBlob does besides downloading. */
export interface StageBlobOptions {
  /** Makes a check that sees every byte of an attempt besides the writer (e.g. of what the blob
   *  uncompresses to). */
  check?: () => BlobCheck
  /** Polled between chunks: true stops the download (another blob failed). */
  abandoned?: () => boolean
}

/**
 * Downloads blob `desc` into a writer of `layout` and seals it: the writer is returned synced and
 * verified (digest and size), not yet committed; the caller commits or aborts it. A lost transfer
 * is retried as the client's policy says. A large blob is hashed off the main thread.
 */
export async function stageBlob(
  client: RegistryClient,
  layout: OciLayoutLike,
  desc: Descriptor,
  opts: StageBlobOptions = {},
): Promise<BlobWriter> {
  const { retries, delayMs } = client.retryPolicy
  for (let attempt = 0; ; attempt++) {
    // The writer hashes the blob (a large one on another thread, from the file as it grows), so the
    // stream checks only the size and the main thread only moves bytes; seal() gives the digest
    // before anything is committed, so a bad blob still fails the pull with nothing of it visible.
    const w = layout.createBlobWriter({ digest: desc.digest, size: desc.size })
    const check = opts.check?.()
    try {
      const batch = new WriteBatch(w)
      try {
        for await (const chunk of await client.fetchBlob(desc, { consumerVerifies: true })) {
          if (opts.abandoned?.()) throw ABANDONED
          await batch.add(chunk)
          await check?.write(chunk)
        }
        await batch.flush()
        // Also gets the bytes to the disk while other blobs still download.
        const got = await w.seal()
        if (got.digest !== desc.digest)
          throw new StackerError('DIGEST', `blob ${desc.digest} does not match its digest (got ${got.digest})`)
        await check?.end()
      } catch (e) {
        // Every write settles before the writer is aborted.
        await batch.flush().catch(() => {})
        throw e
      }
      return w
    } catch (e) {
      check?.abort()
      await w.abort()
      if (!isRetryable(e) || attempt >= retries) throw e
      await new Promise((r) => setTimeout(r, delayMs * 2 ** attempt))
    }
  }
}

/** Commits every writer at once. Every blob was sealed (synced and verified) as it came in, so
 *  only I/O can fail here; a writer that fails removes its own temp file, and the first error is
 *  thrown. */
async function commitAll(writers: BlobWriter[]): Promise<void> {
  await settleAll(writers.map((w) => w.commit()))
}
