import { createReadStream } from 'node:fs'
import { chmod, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { Readable } from 'node:stream'
import { randomBytes } from 'node:crypto'
import {
  atomicWriteFile,
  canonicalJson,
  type Digest,
  digestAlgorithm,
  digestHex,
  Hasher,
  isDigest,
  type Logger,
  onCleanup,
  parseDigest,
  StackerError,
  silentLogger,
  pathExists,
  isErrno,
} from '@stacker/core'
import { type BlobInfo, type BlobWriter, checkExpected, type ExpectedBlob, LayoutBlobWriter } from './blob-writer.js'
import { Annotations, isIndexMediaType, isManifestMediaType, MediaTypes } from './media-types.js'
import { collectGarbage } from './gc.js'
import { hostPlatform, platformMatches } from './platform.js'
import { goQuote, validateRefName } from './ref-name.js'
import { holdDigest, type LayoutState, layoutState } from './state.js'
import type { Descriptor, ImageConfig, ImageIndex, Manifest, Platform } from './types.js'

/** Options of OciLayout.open. */
export interface OpenOptions {
  /** Create the layout when `dir` does not exist. Default false: a missing layout is NOT_FOUND. */
  create?: boolean
  /** Receives `Creating new OCI Layout at ...` and debug lines. Default: dropped. */
  logger?: Logger
}

/** A tag of the layout and the descriptor it names. */
export interface TagEntry {
  name: string
  descriptor: Descriptor
}

/** Options of OciLayout.gc. */
export interface GcOptions {
  /** Extra roots: blobs written for an image that is not tagged yet. */
  keep?: Digest[]
}

/** What OciLayout.gc removed. */
export interface GcResult {
  /** Removed blobs, sorted. */
  removed: Digest[]
  /** Removed stale temp files (absolute paths), sorted. */
  temp: string[]
}

/** An image read from the layout: the manifest's descriptor, the manifest and the config. */
export interface ImageRecord {
  /** The manifest's descriptor (for an index, the chosen platform's entry). */
  descriptor: Descriptor
  manifest: Manifest
  config: ImageConfig
}

/** What OciLayout.writeImage stores: a config and a manifest listing `layers` (already stored). */
export interface WriteImageOptions {
  config: ImageConfig
  /** Descriptors of blobs already in the layout, bottom layer first. */
  layers: Descriptor[]
  /** The manifest's annotations. */
  annotations?: Record<string, string>
  /** The manifest's `subject` (an artifact that refers to another image). */
  subject?: Descriptor
  /** The manifest's `artifactType`. */
  artifactType?: string
}

const LAYOUT_FILE = 'oci-layout'
const INDEX_FILE = 'index.json'

/**
 * An OCI image layout on disk (image-spec "OCI Image Layout"): a content-addressed blob store plus
 * index.json. Blobs are immutable once written and always renamed into place whole; index.json is
 * replaced atomically. Index updates and gc are serialised across all instances on the same path
 * in this process; other processes must be kept out by the caller's locks.
 */
export class OciLayout {
  /** Absolute path of the layout. */
  readonly dir: string
  readonly #state: LayoutState
  readonly #logger: Logger

  private constructor(dir: string, logger: Logger) {
    this.dir = dir
    this.#state = layoutState(dir)
    this.#logger = logger
  }

  /** Opens the layout at `dir`. With `create`, a missing dir, or an empty one (as mkdtemp leaves
   *  it), becomes a new empty layout first (atomically, logging `Creating new OCI Layout at "dir"`).
   *  Errors: OCI_LAYOUT (detail `{path, reason}`) when `dir` is not a directory, or is a non-empty
   *  directory without index.json, or is missing and `create` is unset. */
  static async open(dir: string, opts: OpenOptions = {}): Promise<OciLayout> {
    const logger = opts.logger ?? silentLogger
    const abs = resolve(dir)
    let st = await statOrUndefined(abs)
    if (!st || (opts.create && st.isDirectory() && (await readdir(abs)).length === 0)) {
      if (!opts.create)
        throw new StackerError('OCI_LAYOUT', `OCI layout ${goQuote(dir)} does not exist`, {
          detail: { path: abs, reason: 'missing' },
        })
      logger.info(`Creating new OCI Layout at ${goQuote(dir)}`)
      await createLayout(abs)
      st = await stat(abs)
    }
    if (!st.isDirectory()) {
      throw new StackerError('OCI_LAYOUT', `OCI layout ${goQuote(dir)} is not a directory`, {
        detail: { path: abs, reason: 'not-a-directory' },
      })
    }
    if (!(await pathExists(join(abs, INDEX_FILE)))) {
      throw new StackerError('OCI_LAYOUT', `${goQuote(dir)} is not an OCI layout: it has no ${INDEX_FILE}`, {
        detail: { path: abs, reason: 'not-a-layout' },
      })
    }
    return new OciLayout(abs, logger)
  }

  /** Where the blob `d` lives (whether or not it exists). Throws DIGEST for a malformed digest. */
  blobPath(d: Digest): string {
    parseDigest(d)
    return join(this.dir, 'blobs', digestAlgorithm(d), digestHex(d))
  }

  async hasBlob(d: Digest): Promise<boolean> {
    return pathExists(this.blobPath(d))
  }

  /** Stores `data`. Streams: hashes while writing, never holds the whole blob. Verifies `expected`
   *  if given (DIGEST on mismatch, nothing stored). Idempotent: an existing blob succeeds. */
  async putBlob(
    data: AsyncIterable<Uint8Array | string> | Iterable<Uint8Array> | Uint8Array | string,
    expected: ExpectedBlob = {},
  ): Promise<BlobInfo> {
    const w = this.createBlobWriter(expected)
    try {
      if (typeof data === 'string') await w.write(Buffer.from(data, 'utf8'))
      else if (data instanceof Uint8Array) await w.write(data)
      else {
        for await (const chunk of data) await w.write(typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk)
      }
    } catch (e) {
      await w.abort()
      throw e
    }
    return w.commit()
  }

  /** A writer for producers that push chunks. The caller must end it with commit() or abort().
   *  `expected` (checked at commit) may be given up front so gc spares an existing blob of that
   *  digest meanwhile and a sha512 digest is hashed with sha512. */
  createBlobWriter(expected: ExpectedBlob = {}): BlobWriter {
    return new LayoutBlobWriter({ dir: this.dir, state: this.#state, blobPath: (d) => this.blobPath(d) }, expected)
  }

  /** Adopts a finished file (e.g. mksquashfs output). With `move`, the file is hashed in place and
   *  renamed in (copied when on another filesystem) and is gone afterwards, also when the blob
   *  already existed; otherwise it is copied and left alone. The file must not change meanwhile. */
  async putBlobFromFile(file: string, opts: { move?: boolean; expected?: ExpectedBlob } = {}): Promise<BlobInfo> {
    const expected = opts.expected ?? {}
    if (!opts.move) return this.putBlob(createReadStream(file), expected)
    const hasher = new Hasher(expected.digest ? digestAlgorithm(expected.digest) : 'sha256')
    for await (const chunk of createReadStream(file)) hasher.update(chunk as Buffer)
    const info = { digest: hasher.digest(), size: hasher.size }
    checkExpected(info, expected)
    const release = holdDigest(this.#state, info.digest)
    try {
      const final = this.blobPath(info.digest)
      const crossDevice = await this.#state.blobLock.run(async () => {
        if (await pathExists(final)) {
          await rm(file, { force: true })
          return false
        }
        await mkdir(dirname(final), { recursive: true })
        await chmod(file, 0o644)
        try {
          await rename(file, final)
          return false
        } catch (e) {
          if (isErrno(e, 'EXDEV')) return true
          throw e
        }
      })
      if (crossDevice) {
        const copied = await this.putBlob(createReadStream(file), info)
        await rm(file, { force: true })
        return copied
      }
      return info
    } finally {
      release()
    }
  }

  /** The whole blob, verified: DIGEST (naming digest and path) if the content does not match,
   *  NOT_FOUND if absent. Use openBlob for large blobs. */
  async readBlob(d: Digest): Promise<Buffer> {
    const path = this.blobPath(d)
    let buf: Buffer
    try {
      buf = await readFile(path)
    } catch (e) {
      throw this.#readError(d, path, e)
    }
    const h = new Hasher(digestAlgorithm(d))
    h.update(buf)
    const actual = h.digest()
    if (actual !== d) throw corruptBlob(d, path, actual)
    return buf
  }

  /** Streams the blob; the stream errors with DIGEST at the end if the content does not match, and
   *  with NOT_FOUND if it is absent. The caller consumes or destroys the stream. */
  openBlob(d: Digest): Readable {
    const path = this.blobPath(d)
    return openVerifiedFile(path, d, { readError: (e) => this.#readError(d, path, e) })
  }

  /** Stores `value` as canonical JSON: the same value always yields the same digest. */
  async putJson(mediaType: string, value: unknown): Promise<Descriptor> {
    const { digest, size } = await this.putBlob(canonicalJson(value))
    return { mediaType, digest, size }
  }

  async readJson<T>(d: Digest): Promise<T> {
    const buf = await this.readBlob(d)
    try {
      return JSON.parse(buf.toString('utf8')) as T
    } catch (e) {
      throw new StackerError('OCI_LAYOUT', `blob ${d} (${this.blobPath(d)}) is not valid JSON`, { cause: e })
    }
  }

  async readIndex(): Promise<ImageIndex> {
    const path = join(this.dir, INDEX_FILE)
    let text: string
    try {
      text = await readFile(path, 'utf8')
    } catch (e) {
      throw new StackerError('OCI_LAYOUT', `can't read ${path}: ${(e as Error).message}`, { cause: e })
    }
    let index: unknown
    try {
      index = JSON.parse(text)
    } catch (e) {
      throw new StackerError('OCI_LAYOUT', `invalid ${path}: ${(e as Error).message}`, { cause: e })
    }
    if (typeof index !== 'object' || index === null || (index as ImageIndex).schemaVersion !== 2) {
      throw new StackerError('OCI_LAYOUT', `invalid ${path}: not an image index with schemaVersion 2`)
    }
    const idx = index as ImageIndex
    if (idx.manifests == null) idx.manifests = []
    if (!Array.isArray(idx.manifests)) throw new StackerError('OCI_LAYOUT', `invalid ${path}: manifests is not a list`)
    return idx
  }

  /** Tagged entries in index order. */
  async listTags(): Promise<TagEntry[]> {
    const index = await this.readIndex()
    const out: TagEntry[] = []
    for (const descriptor of index.manifests) {
      const name = descriptor.annotations?.[Annotations.refName]
      if (name !== undefined) out.push({ name, descriptor })
    }
    return out
  }

  /** The descriptor tagged `name` (the last one, should a foreign writer have left duplicates). */
  async getTag(name: string): Promise<Descriptor | undefined> {
    const tags = await this.listTags()
    return tags.findLast((t) => t.name === name)?.descriptor
  }

  /** A tag, or a `sha256:...` digest (found in index.json, else any manifest/index blob in the
   *  store). NOT_FOUND otherwise. */
  async resolve(ref: string): Promise<Descriptor> {
    if (isDigest(ref)) {
      const index = await this.readIndex()
      const hit = index.manifests.find((m) => m.digest === ref)
      if (hit) return hit
      if (await this.hasBlob(ref)) {
        const buf = await this.readBlob(ref)
        const mediaType = sniffMediaType(buf)
        if (mediaType) return { mediaType, digest: ref, size: buf.byteLength }
      }
      throw new StackerError('NOT_FOUND', `manifest ${ref} not found in OCI layout ${goQuote(this.dir)}`)
    }
    const d = await this.getTag(ref)
    if (!d)
      throw new StackerError('NOT_FOUND', `reference ${goQuote(ref)} not found in OCI layout ${goQuote(this.dir)}`)
    return d
  }

  /** Points tag `name` at `desc`: removes any entry with that name and appends the new one
   *  (upstream's order rule). The stored descriptor carries the caller's annotations plus the ref
   *  name and nothing else. The manifest blob must exist. Atomic and serialised. */
  async setTag(name: string, desc: Descriptor): Promise<void> {
    validateRefName(name)
    parseDigest(desc.digest)
    if (!(await this.hasBlob(desc.digest))) {
      throw new StackerError('NOT_FOUND', `can't tag ${name}: blob ${desc.digest} is not in ${goQuote(this.dir)}`)
    }
    const entry: Descriptor = { mediaType: desc.mediaType, digest: desc.digest, size: desc.size }
    if (desc.platform) entry.platform = structuredClone(desc.platform)
    if (desc.urls) entry.urls = [...desc.urls]
    if (desc.artifactType !== undefined) entry.artifactType = desc.artifactType
    entry.annotations = { ...(desc.annotations ?? {}), [Annotations.refName]: name }
    await this.#updateIndex((index) => {
      index.manifests = index.manifests.filter((m) => m.annotations?.[Annotations.refName] !== name)
      index.manifests.push(entry)
      return true
    })
  }

  /** Removes tag `name`; false if there was none. */
  async removeTag(name: string): Promise<boolean> {
    let removed = false
    await this.#updateIndex((index) => {
      const before = index.manifests.length
      index.manifests = index.manifests.filter((m) => m.annotations?.[Annotations.refName] !== name)
      removed = index.manifests.length !== before
      return removed
    })
    return removed
  }

  /** Drops index entries that have no ref name (their blobs go at the next gc). */
  async dropUntagged(): Promise<void> {
    await this.#updateIndex((index) => {
      const before = index.manifests.length
      index.manifests = index.manifests.filter((m) => m.annotations?.[Annotations.refName] !== undefined)
      return index.manifests.length !== before
    })
  }

  /** Reads the image at `ref` (tag or digest). For an index, picks the manifest for `platform`
   *  (default: linux on this machine's architecture; a single-entry index is taken as is). */
  async readImage(ref: string, opts: { platform?: Platform } = {}): Promise<ImageRecord> {
    let descriptor = await this.resolve(ref)
    for (let depth = 0; ; depth++) {
      if (depth > 8) throw new StackerError('OCI_LAYOUT', `${ref}: image indexes nested too deeply`)
      const doc = await this.readJson<Record<string, unknown>>(descriptor.digest)
      if (isIndexMediaType(descriptor.mediaType) || Array.isArray(doc.manifests)) {
        descriptor = this.#pickPlatform(ref, doc as unknown as ImageIndex, opts.platform ?? hostPlatform())
        continue
      }
      if (!isManifestMediaType(descriptor.mediaType) && !(doc.config && Array.isArray(doc.layers))) {
        throw new StackerError('OCI_LAYOUT', `${ref} (${descriptor.digest}) is not an image manifest`)
      }
      const manifest = doc as unknown as Manifest
      if (!manifest.config || !isDigest(manifest.config.digest) || !Array.isArray(manifest.layers)) {
        throw new StackerError('OCI_LAYOUT', `${ref} (${descriptor.digest}) is not a valid image manifest`)
      }
      const config = await this.readJson<ImageConfig>(manifest.config.digest)
      return { descriptor, manifest, config }
    }
  }

  /** Writes `config` and a manifest over it (canonical JSON, so deterministic) and returns the
   *  manifest's descriptor. Does not tag. Every layer blob must already be stored, and the config
   *  must have one diff_id per layer. */
  async writeImage(opts: WriteImageOptions): Promise<Descriptor> {
    const diffIds = opts.config.rootfs?.diff_ids
    if (!Array.isArray(diffIds) || diffIds.length !== opts.layers.length) {
      throw new StackerError(
        'OCI_LAYOUT',
        `image config has ${diffIds?.length ?? 0} diff_ids for ${opts.layers.length} layers`,
      )
    }
    for (const l of opts.layers) {
      if (!(await this.hasBlob(l.digest))) {
        throw new StackerError('NOT_FOUND', `layer blob ${l.digest} is not in ${goQuote(this.dir)}`)
      }
    }
    const config = await this.putJson(MediaTypes.config, opts.config)
    const manifest: Manifest = { schemaVersion: 2, mediaType: MediaTypes.manifest, config, layers: opts.layers }
    if (opts.annotations && Object.keys(opts.annotations).length > 0) manifest.annotations = opts.annotations
    if (opts.subject) manifest.subject = opts.subject
    if (opts.artifactType !== undefined) manifest.artifactType = opts.artifactType
    return this.putJson(MediaTypes.manifest, manifest)
  }

  /** Removes blobs unreachable from index.json (tagged or not) and `keep`, following indexes ->
   *  manifests -> config, layers and subject, plus temp files left by dead writers. Spares blobs
   *  and temp files that writers in this process are working on. Throws (removing nothing) if a
   *  reachable manifest or index is corrupt. */
  async gc(opts: GcOptions = {}): Promise<GcResult> {
    return this.#state.indexLock.run(() =>
      this.#state.blobLock.run(async () => {
        const r = await collectGarbage(this, this.#state, opts.keep ?? [])
        if (r.removed.length > 0 || r.temp.length > 0)
          this.#logger.debug(`gc removed ${r.removed.length} blobs and ${r.temp.length} temp files from ${this.dir}`)
        return r
      }),
    )
  }

  #pickPlatform(ref: string, index: ImageIndex, wanted: Platform): Descriptor {
    const manifests = (index.manifests ?? []).filter((m) => m && isDigest(m.digest))
    const only = manifests.length === 1 ? manifests[0] : undefined
    if (only) return only
    const hit = manifests.find((m) => platformMatches(m.platform, wanted))
    if (!hit) {
      const p = `${wanted.os}/${wanted.architecture}${wanted.variant ? `/${wanted.variant}` : ''}`
      throw new StackerError('NOT_FOUND', `no image for platform ${p} in ${ref}`)
    }
    return hit
  }

  async #updateIndex(mutate: (index: ImageIndex) => boolean): Promise<void> {
    await this.#state.indexLock.run(async () => {
      const index = await this.readIndex()
      if (!mutate(index)) return
      await atomicWriteFile(join(this.dir, INDEX_FILE), canonicalJson(index))
    })
  }

  #readError(d: Digest, path: string, e: unknown): StackerError {
    if (e instanceof StackerError) return e
    if (isErrno(e, 'ENOENT')) {
      return new StackerError('NOT_FOUND', `blob ${d} not found in OCI layout ${goQuote(this.dir)}`, { cause: e })
    }
    return new StackerError('OCI_LAYOUT', `can't read blob ${d} (${path}): ${(e as Error).message}`, { cause: e })
  }
}

/**
 * Streams file `path`, which must hold blob `d`: the stream errors with DIGEST at the end if its
 * bytes have another digest (naming `opts.name`, default `path`). A read error is passed through
 * `opts.readError` when given. The caller consumes or destroys the stream.
 */
export function openVerifiedFile(
  path: string,
  d: Digest,
  opts: { name?: string; readError?: (e: unknown) => unknown } = {},
): Readable {
  async function* verified(): AsyncGenerator<Buffer> {
    const h = new Hasher(digestAlgorithm(d))
    try {
      for await (const chunk of createReadStream(path)) {
        h.update(chunk as Buffer)
        yield chunk as Buffer
      }
    } catch (e) {
      throw opts.readError ? opts.readError(e) : e
    }
    const actual = h.digest()
    if (actual !== d) throw corruptBlob(d, opts.name ?? path, actual)
  }
  return Readable.from(verified(), { objectMode: false })
}

function corruptBlob(d: Digest, path: string, actual: Digest): StackerError {
  return new StackerError('DIGEST', `blob ${d} is corrupt: ${path} has digest ${actual}`)
}

function sniffMediaType(buf: Buffer): string | undefined {
  try {
    const doc = JSON.parse(buf.toString('utf8')) as Record<string, unknown>
    if (typeof doc.mediaType === 'string') return doc.mediaType
    if (Array.isArray(doc.manifests)) return MediaTypes.index
    if (doc.config && Array.isArray(doc.layers)) return MediaTypes.manifest
  } catch {
    // Not JSON: not something a digest ref can name.
  }
  return undefined
}

async function statOrUndefined(path: string) {
  try {
    return await stat(path)
  } catch (e) {
    if (isErrno(e, 'ENOENT')) return undefined
    throw e
  }
}

/** Builds the layout in a sibling temp dir and renames it into place, so a crash never leaves a
 *  half-made layout that the next open would reject. Losing a creation race to another process is
 *  fine: its layout is used. */
async function createLayout(abs: string): Promise<void> {
  const parent = dirname(abs)
  await mkdir(parent, { recursive: true })
  const tmp = join(parent, `.${basename(abs)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`)
  const unregister = onCleanup(() => rm(tmp, { recursive: true, force: true }))
  try {
    await mkdir(join(tmp, 'blobs', 'sha256'), { recursive: true })
    await atomicWriteFile(join(tmp, LAYOUT_FILE), canonicalJson({ imageLayoutVersion: '1.0.0' }))
    const index: ImageIndex = { schemaVersion: 2, mediaType: MediaTypes.index, manifests: [] }
    await atomicWriteFile(join(tmp, INDEX_FILE), canonicalJson(index))
    try {
      // An empty dir is replaced as a missing one would be created (rename over an empty dir).
      await rename(tmp, abs)
    } catch (e) {
      if (!isErrno(e, 'ENOTEMPTY') && !isErrno(e, 'EEXIST')) throw e
    }
  } finally {
    unregister()
    await rm(tmp, { recursive: true, force: true })
  }
}
