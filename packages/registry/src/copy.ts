import { mkdir, readdir, rm, rmdir, stat } from 'node:fs/promises'
import { isDigest, type Logger, StackerError, settleAll, silentLogger } from '@stacker/core'
import {
  type BlobWriter,
  type Descriptor,
  isIndexMediaType,
  type Manifest,
  OciLayout,
  type Platform,
  validateRefName,
} from '@stacker/oci'
import { RegistryClient } from './client.js'
import { isRetryable } from './errors.js'
import { withContext } from './layout-like.js'
import { type ImageRef, parseImageRef, refReference } from './ref.js'
import { WriteBatch } from './write-batch.js'

/** Where an image is, as containers/image names it: `oci:<layout dir>[:<ref>]` or
 *  `docker://host[:port]/repo[:tag|@digest]`. */
export type TransportRef =
  | { transport: 'oci'; dir: string; reference?: string; text: string }
  | { transport: 'docker'; ref: ImageRef; text: string }

/**
 * Parses a containers/image style reference. For `oci:` the layout path ends at the first `:`
 * after the scheme and everything after it is the reference (which may itself hold `:`), as
 * containers/image splits it. Throws USAGE (upstream's texts) for anything else.
 */
export function parseTransportRef(text: string): TransportRef {
  const colon = text.indexOf(':')
  if (colon < 0) throw new StackerError('USAGE', `bad image ref: ${text}`)
  const scheme = text.slice(0, colon)
  const rest = text.slice(colon + 1)
  if (scheme === 'oci') {
    const sep = rest.indexOf(':')
    const dir = sep < 0 ? rest : rest.slice(0, sep)
    const reference = sep < 0 ? '' : rest.slice(sep + 1)
    if (dir === '') throw new StackerError('USAGE', `bad image ref: ${text}: no layout path`)
    return reference === '' ? { transport: 'oci', dir, text } : { transport: 'oci', dir, reference, text }
  }
  if (scheme === 'docker') {
    if (!rest.startsWith('//'))
      throw new StackerError('USAGE', `bad image ref: ${text}: docker references must start with docker://`)
    return { transport: 'docker', ref: parseImageRef(text), text }
  }
  throw new StackerError('USAGE', `unknown url scheme ${scheme} for ${text}`)
}

/** True for a registry on this machine (`localhost`, 127.0.0.0/8, `[::1]`), any port. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(0, registry.indexOf(']') + 1) : registry.split(':')[0]
  return host === 'localhost' || host === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(host ?? '')
}

/** A copy between `oci:<dir>[:<ref>]` and `docker://` references, in any direction, with the TLS
 *  checks of each side (`stacker internal-go copy`). */
export interface CopyImageOptions {
  src: string
  dest: string
  /** Verify the source registry's TLS certificate and refuse plain http. Default: true, except for
   *  a loopback registry (as Docker treats 127.0.0.0/8), which may be plain http. */
  srcTlsVerify?: boolean
  /** The same for the destination registry. */
  destTlsVerify?: boolean
  /** For an index: the platform whose manifest is copied (default linux on this machine's
   *  architecture), as containers/image copies one instance of a list. */
  platform?: Platform
  logger?: Logger
  /** Progress lines, as containers/image writes them (`Copying blob ...`). */
  report?: (line: string) => void
  /** Blobs copied at once (default 3). */
  concurrency?: number
}

/** The manifest chosen in the source, and where its blobs are read from. */
interface ImageSource {
  descriptor: Descriptor
  bytes: Buffer
  /** The blob's bytes, verified against its digest as they are read. Called once per attempt. */
  open(d: Descriptor): AsyncIterable<Uint8Array>
  retry: { retries: number; delayMs: number }
  /** The source's registry and repository, for a cross-repository mount on push. */
  registry?: ImageRef
  close(): void
}

/**
 * Copies an image between `oci:` layouts and `docker://` registries, in any direction, like
 * containers/image `copy`: the manifest (for an index, the platform's manifest) is copied byte for
 * byte, so its digest is kept, and every blob is verified against its digest. An `oci:` destination
 * is created when missing; its blobs are all written (to temp files, verified) before any becomes
 * visible, then the manifest, then the tag in index.json, which replaces an entry of that name;
 * untagged entries are dropped afterwards, as upstream does after a copy. A failed copy leaves no
 * tag and no layout it created, and a failed download or verification no new blob. A registry destination gets its blobs first and
 * the manifest last, so the tag never names an incomplete image. Returns the manifest's descriptor.
 */
export async function copyImage(opts: CopyImageOptions): Promise<Descriptor> {
  const logger = opts.logger ?? silentLogger
  const src = parseTransportRef(opts.src)
  const dest = parseTransportRef(opts.dest)
  if (dest.transport === 'oci') {
    if (dest.reference === undefined)
      throw new StackerError('USAGE', `un-parsable oci dest ${opts.dest}: name a tag (oci:<dir>:<tag>)`)
    validateRefName(dest.reference)
  }
  return withContext(`couldn't copy ${opts.src} to ${opts.dest}`, 'OCI_LAYOUT', async () => {
    const source = await openSource(src, opts, logger)
    try {
      const blobs = manifestBlobs(source.descriptor, source.bytes)
      const report = opts.report ?? (() => {})
      const concurrency = Math.max(1, opts.concurrency ?? 3)
      if (dest.transport === 'oci') {
        await copyToLayout(source, blobs, dest.dir, dest.reference as string, { logger, report, concurrency })
      } else {
        await copyToRegistry(source, blobs, dest.ref, {
          insecure: insecure(dest.ref, opts.destTlsVerify),
          logger,
          report,
          concurrency,
        })
      }
      logger.debug(`copied ${opts.src} to ${opts.dest}`, { digest: source.descriptor.digest })
      return { mediaType: source.descriptor.mediaType, digest: source.descriptor.digest, size: source.descriptor.size }
    } finally {
      source.close()
    }
  })
}

function insecure(ref: ImageRef, tlsVerify: boolean | undefined): boolean {
  return tlsVerify === undefined ? isLoopbackRegistry(ref.registry) : !tlsVerify
}

async function openSource(src: TransportRef, opts: CopyImageOptions, logger: Logger): Promise<ImageSource> {
  if (src.transport === 'docker') {
    const client = new RegistryClient(src.ref, { insecure: insecure(src.ref, opts.srcTlsVerify), logger })
    try {
      const m = await client.getManifest(refReference(src.ref), opts.platform ? { platform: opts.platform } : {})
      return {
        descriptor: m.descriptor,
        bytes: m.bytes,
        open: (d) => streamOf(() => client.fetchBlob(d)),
        retry: client.retryPolicy,
        registry: src.ref,
        close: () => client.close(),
      }
    } catch (e) {
      client.close()
      throw e
    }
  }
  const layout = await OciLayout.open(src.dir, { create: false, logger })
  let top: Descriptor
  if (src.reference !== undefined) {
    top = await layout.resolve(src.reference)
  } else {
    const { manifests } = await layout.readIndex()
    if (manifests.length !== 1)
      throw new StackerError(
        manifests.length === 0 ? 'NOT_FOUND' : 'USAGE',
        manifests.length === 0
          ? `no image in OCI layout ${src.dir}`
          : `more than one image in OCI layout ${src.dir}: choose one with oci:${src.dir}:<ref>`,
      )
    top = manifests[0] as Descriptor
  }
  const descriptor = isIndexMediaType(top.mediaType)
    ? (await layout.readImage(top.digest, opts.platform ? { platform: opts.platform } : {})).descriptor
    : top
  const bytes = await layout.readBlob(descriptor.digest)
  return {
    descriptor: { mediaType: descriptor.mediaType, digest: descriptor.digest, size: bytes.byteLength },
    bytes,
    open: (d) => layout.openBlob(d.digest),
    retry: { retries: 0, delayMs: 0 },
    close: () => {},
  }
}

async function* streamOf(fetch: () => Promise<AsyncIterable<Uint8Array>>): AsyncGenerator<Uint8Array> {
  yield* await fetch()
}

/** The config and layers of an image manifest, each once, config first. */
function manifestBlobs(desc: Descriptor, bytes: Buffer): Descriptor[] {
  let parsed: Partial<Manifest> & { manifests?: unknown }
  try {
    parsed = JSON.parse(bytes.toString('utf8'))
  } catch {
    throw new StackerError('OCI_LAYOUT', `manifest ${desc.digest} is not valid JSON`)
  }
  if (Array.isArray(parsed.manifests) || !parsed.config || !Array.isArray(parsed.layers))
    throw new StackerError('OCI_LAYOUT', `${desc.digest} is not an image manifest`)
  const out: Descriptor[] = []
  for (const b of [parsed.config, ...parsed.layers]) {
    if (!b || typeof b.digest !== 'string' || !isDigest(b.digest) || !Number.isSafeInteger(b.size) || b.size < 0)
      throw new StackerError('OCI_LAYOUT', `manifest ${desc.digest} has an invalid descriptor`)
    if (!out.some((o) => o.digest === b.digest)) out.push(b)
  }
  return out
}

interface CopyContext {
  logger: Logger
  report: (line: string) => void
  concurrency: number
}

function blobLine(d: Descriptor, index: number): string {
  return `Copying ${index === 0 ? 'config' : 'blob'} ${d.digest}`
}

async function copyToLayout(
  source: ImageSource,
  blobs: Descriptor[],
  dir: string,
  reference: string,
  ctx: CopyContext,
): Promise<void> {
  const before = await prepareDest(dir)
  try {
    const layout = await OciLayout.open(dir, { create: true, logger: ctx.logger })
    const missing: Descriptor[] = []
    for (const [i, b] of blobs.entries()) {
      if (await layout.hasBlob(b.digest)) ctx.report(`${blobLine(b, i)} skipped: already exists`)
      else missing.push(b)
    }
    const staged: BlobWriter[] = []
    try {
      await inParallel(missing, ctx.concurrency, async (b) => {
        ctx.report(blobLine(b, blobs.indexOf(b)))
        staged.push(await stage(source, layout, b))
      })
    } catch (e) {
      await Promise.all(staged.map((w) => w.abort()))
      throw e
    }
    await settleAll(staged.map((w) => w.commit()))
    ctx.report('Writing manifest to image destination')
    const d = source.descriptor
    await layout.putBlob(source.bytes, { digest: d.digest, size: d.size })
    await layout.setTag(reference, { mediaType: d.mediaType, digest: d.digest, size: d.size })
    await layout.dropUntagged()
  } catch (e) {
    // A layout this copy made is removed whole (an empty dir it was made in is left empty); blobs
    // added to an existing layout are unreachable and go at its next gc.
    if (before !== 'existing') await rm(dir, { recursive: true, force: true })
    if (before === 'empty') await mkdir(dir)
    throw e
  }
}

/** An existing empty dir becomes a layout (containers/image writes one into it); anything else that
 *  exists must already be a layout. */
async function prepareDest(dir: string): Promise<'missing' | 'empty' | 'existing'> {
  try {
    if (!(await stat(dir)).isDirectory()) return 'existing'
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'missing'
    throw e
  }
  if ((await readdir(dir)).length > 0) return 'existing'
  // OciLayout.open creates only a missing layout: the empty dir makes way for it.
  await rmdir(dir)
  return 'empty'
}

/** Downloads one blob into an uncommitted writer, retrying a lost transfer as pulls do. */
async function stage(source: ImageSource, layout: OciLayout, d: Descriptor): Promise<BlobWriter> {
  for (let attempt = 0; ; attempt++) {
    const w = layout.createBlobWriter({ digest: d.digest, size: d.size })
    try {
      const batch = new WriteBatch(w)
      try {
        for await (const chunk of source.open(d)) await batch.add(chunk)
        await batch.flush()
      } catch (e) {
        await batch.flush().catch(() => {})
        throw e
      }
      return w
    } catch (e) {
      await w.abort()
      if (!isRetryable(e) || attempt >= source.retry.retries) throw e
      await new Promise((r) => setTimeout(r, source.retry.delayMs * 2 ** attempt))
    }
  }
}

async function copyToRegistry(
  source: ImageSource,
  blobs: Descriptor[],
  ref: ImageRef,
  ctx: CopyContext & { insecure: boolean },
): Promise<void> {
  const d = source.descriptor
  if (ref.digest !== undefined && ref.digest !== d.digest)
    throw new StackerError('DIGEST', `the image is ${d.digest}, not ${ref.digest}`)
  const client = new RegistryClient(ref, { insecure: ctx.insecure, logger: ctx.logger })
  try {
    const from = source.registry
    const mountFrom = from && from.registry === ref.registry ? from.repository : undefined
    await inParallel(blobs, ctx.concurrency, async (b) => {
      const r = await client.pushBlob(b, () => source.open(b), mountFrom !== undefined ? { mountFrom } : {})
      const i = blobs.indexOf(b)
      ctx.report(r === 'exists' ? `${blobLine(b, i)} skipped: already exists` : blobLine(b, i))
    })
    ctx.report('Writing manifest to image destination')
    await client.putManifest(ref.tag ?? d.digest, source.bytes, d.mediaType)
  } finally {
    client.close()
  }
}

/** Runs `fn` over `items`, at most `limit` at a time. On a failure no new item starts, the running
 *  ones are waited for, and the first error is thrown. */
async function inParallel<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const state: { failure?: unknown } = {}
  const worker = async (): Promise<void> => {
    while (next < items.length && !('failure' in state)) {
      const item = items[next++] as T
      try {
        await fn(item)
      } catch (e) {
        if (!('failure' in state)) state.failure = e
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker))
  if ('failure' in state) throw state.failure
}
