import {
  canonicalJson,
  type Digest,
  digestHex,
  Hasher,
  isDigest,
  type Logger,
  StackerError,
  sha256Digest,
} from '@stacker/core'
import type { Descriptor, Manifest } from '@stacker/oci'
import type { BlobCheck, ImageRef, RegistryClient } from '@stacker/registry'
import type { Layer } from '@stacker/stackerfile'
import type { BuildContext, BuiltLayer } from './context.js'
import { outputProjections } from './image.js'
import { type Projection, projectContent } from './projections.js'
import { outputKey, type OutputType } from './types.js'

/** The artifactType of a cache artifact's manifest. */
export const CACHE_ARTIFACT_TYPE = 'application/vnd.stacker.cache.v1'
/** The media type of a cache record (the artifact's config blob). */
export const CACHE_RECORD_MEDIA_TYPE = 'application/vnd.stacker.cache.record.v1+json'
const MANIFEST_MEDIA_TYPE = 'application/vnd.oci.image.manifest.v1+json'
const MAX_RECORD_BYTES = 4 << 20
/** The output type whose blob of a layer's own content is always pushed: another machine
 *  extracts it to materialise the layer's filesystem. */
const MATERIALISE_OUTPUT: OutputType = { type: 'tar', verity: false }

/** A blob and the digest of its uncompressed tar. */
export interface RecordBlob {
  descriptor: Descriptor
  diffId: Digest
}

/** One projection (see projections.ts) an output of the layer is made of. */
export interface RecordProjection extends RecordBlob {
  /** The content id it projects. */
  content: string
  /** The output key (`tar+false`, `squashfs+true`, ...). */
  output: string
  uncompressed: boolean
  allowEmpty: boolean
}

/**
 * What a build of one layer produced, keyed by its (portable) cache key: enough for another machine
 * to use the layer without running it. It holds digests, content ids and generated labels, never a
 * host path, a build_env value or a credential. The format is documented in the registry package's
 * README.
 */
export interface CacheRecord {
  schemaVersion: 1
  key: Digest
  layer: string
  platform: { os: string; architecture: string }
  /** The layer's filesystem: content ids, bottom to top. */
  chain: string[]
  /** The content id of the layer's own diff (the top of `chain`), or null. */
  ownContent: string | null
  /** The gzip tar of `ownContent`, whose diffId the content id is derived from. */
  ownContentBlob: RecordBlob | null
  generatedLabels: Array<[string, string]>
  projections: RecordProjection[]
  /** The outputs made on the machine that pushed, by output key: digests for comparison. */
  outputs: Record<string, { manifest: Digest; config: Digest }>
}

export interface RemoteCacheOptions {
  cacheTo: string[]
  cacheFrom: string[]
  /** A failed push fails the build (else it is a warning). */
  cacheToRequired: boolean
}

/** The tag of the cache artifact for `key`. */
export function cacheTag(key: Digest): string {
  return `cache-${digestHex(key)}`
}

/** Parses a `--cache-to`/`--cache-from` value: `docker://host[:port]/repository`, no tag. */
async function parseCacheRef(value: string, flag: string): Promise<ImageRef> {
  const { makeRef, parseImageRef } = await import('@stacker/registry')
  const text = value.startsWith('docker://') ? value : `docker://${value}`
  let ref: ImageRef
  try {
    ref = parseImageRef(text)
  } catch (e) {
    throw new StackerError('USAGE', `invalid ${flag} ${JSON.stringify(value)}: ${(e as Error).message}`)
  }
  const rest = text.slice('docker://'.length)
  if (ref.digest !== undefined || /:[^/]*$/.test(rest.slice(rest.indexOf('/') + 1)))
    throw new StackerError(
      'USAGE',
      `invalid ${flag} ${JSON.stringify(value)}: expected docker://host[:port]/repository without a tag`,
    )
  // Tags are the cache's own (cacheTag): the repository alone names the cache in messages.
  return makeRef(ref.registry, ref.repository)
}

class Endpoint {
  readonly ref: ImageRef
  readonly label: string
  #client: Promise<RegistryClient> | undefined
  #ready: Promise<RegistryClient> | undefined
  readonly #logger: Logger
  /** Set after a failure that will repeat for every layer (unreachable, refused credentials). */
  disabled = false

  constructor(ref: ImageRef, logger: Logger) {
    this.ref = ref
    this.label = `docker://${ref.registry}/${ref.repository}`
    this.#logger = logger
  }

  client(): Promise<RegistryClient> {
    this.#client ??= (async () => {
      const { isLoopbackRegistry, pushTarget, readRegistriesConf, RegistryClient } = await import('@stacker/registry')
      const insecure = pushTarget(this.ref, readRegistriesConf()).insecure || isLoopbackRegistry(this.ref.registry)
      return new RegistryClient(this.ref, { insecure, logger: this.#logger, retries: 2, retryDelayMs: 250 })
    })()
    return this.#client
  }

  /** The client once the registry answered its probe; a failure is kept (the caller disables the
   *  endpoint on it, so it is not asked again). */
  ready(): Promise<RegistryClient> {
    this.#ready ??= this.client().then(async (c) => {
      await c.connect()
      return c
    })
    return this.#ready
  }

  async close(): Promise<void> {
    if (this.#client) (await this.#client).close()
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

function isDescriptor(v: unknown): v is Descriptor {
  return (
    isObject(v) &&
    typeof v.mediaType === 'string' &&
    typeof v.digest === 'string' &&
    isDigest(v.digest) &&
    typeof v.size === 'number' &&
    Number.isSafeInteger(v.size) &&
    v.size >= 0 &&
    (v.annotations === undefined || isObject(v.annotations))
  )
}

function isRecordBlob(v: unknown): v is RecordBlob {
  return isObject(v) && isDescriptor(v.descriptor) && typeof v.diffId === 'string' && isDigest(v.diffId)
}

const CONTENT_ID = /^[A-Za-z0-9_.-]{1,200}$/

/** A parsed record of the right shape for `key`, or a reason why not. */
function checkRecord(v: unknown, key: Digest): CacheRecord | string {
  if (!isObject(v) || v.schemaVersion !== 1) return 'not a cache record of a known version'
  if (v.key !== key) return 'the record is for another key'
  const chain = v.chain
  if (!Array.isArray(chain) || !chain.every((c) => typeof c === 'string' && CONTENT_ID.test(c))) return 'bad chain'
  const own = v.ownContent
  if (own !== null && (typeof own !== 'string' || chain.at(-1) !== own)) return 'bad ownContent'
  if (own !== null && !isRecordBlob(v.ownContentBlob)) return 'no blob for the own content'
  if (!isObject(v.platform) || typeof v.platform.os !== 'string' || typeof v.platform.architecture !== 'string')
    return 'no platform'
  if (
    !Array.isArray(v.generatedLabels) ||
    !v.generatedLabels.every((l) => Array.isArray(l) && l.length === 2 && l.every((x) => typeof x === 'string'))
  )
    return 'bad generatedLabels'
  if (
    !Array.isArray(v.projections) ||
    !v.projections.every(
      (p) =>
        isRecordBlob(p) &&
        typeof (p as unknown as RecordProjection).content === 'string' &&
        CONTENT_ID.test((p as unknown as RecordProjection).content) &&
        typeof (p as unknown as RecordProjection).output === 'string' &&
        typeof (p as unknown as RecordProjection).uncompressed === 'boolean' &&
        typeof (p as unknown as RecordProjection).allowEmpty === 'boolean',
    )
  )
    return 'bad projections'
  if (!isObject(v.outputs)) return 'bad outputs'
  return v as unknown as CacheRecord
}

/** A record found for a layer, with where it came from. */
export interface FoundRecord {
  record: CacheRecord
  endpoint: Endpoint
}

/**
 * The shared build cache of one build: after each layer is built (or found in the local cache),
 * its record and blobs are pushed to every `--cache-to` repository, in the background; before a
 * layer that missed the local cache is run, the `--cache-from` repositories are asked for a record
 * of its key. Faults never fail the build (unless `--cache-to-required` for pushes): one warning
 * line, and the layer is built locally. A repository that cannot be reached, or refuses the
 * credentials, is not asked again in this build.
 */
export class RemoteCache {
  readonly #from: Endpoint[]
  readonly #to: Endpoint[]
  readonly #required: boolean
  readonly #logger: Logger
  readonly #pushes: Array<Promise<void>> = []
  #failure: StackerError | undefined

  private constructor(from: Endpoint[], to: Endpoint[], required: boolean, logger: Logger) {
    this.#from = from
    this.#to = to
    this.#required = required
    this.#logger = logger
  }

  static async create(opts: RemoteCacheOptions, logger: Logger): Promise<RemoteCache | undefined> {
    if (opts.cacheTo.length === 0 && opts.cacheFrom.length === 0) {
      if (opts.cacheToRequired) throw new StackerError('USAGE', '--cache-to-required needs --cache-to')
      return undefined
    }
    const from = await Promise.all(
      opts.cacheFrom.map(async (v) => new Endpoint(await parseCacheRef(v, '--cache-from'), logger)),
    )
    const to = await Promise.all(
      opts.cacheTo.map(async (v) => new Endpoint(await parseCacheRef(v, '--cache-to'), logger)),
    )
    if (opts.cacheToRequired && to.length === 0) throw new StackerError('USAGE', '--cache-to-required needs --cache-to')
    return new RemoteCache(from, to, opts.cacheToRequired, logger)
  }

  get pulls(): boolean {
    return this.#from.length > 0
  }

  // --- pull ---------------------------------------------------------------------------------

  /** Probes the `--cache-from` registries in the background, so that the first layer to ask one
   *  does not wait for the connection (while its imports are hashed, say). Failures are reported
   *  by find(). */
  warm(): void {
    for (const endpoint of this.#from) if (!endpoint.disabled) endpoint.ready().catch(() => {})
  }

  /** The record of `key` in the first `--cache-from` repository that has one for this layer's
   *  platform, or undefined (after a warning when something was wrong). */
  async find(layer: Layer, key: Digest, log: Logger): Promise<FoundRecord | undefined> {
    for (const endpoint of this.#from) {
      if (endpoint.disabled) continue
      let manifest: Manifest
      try {
        const client = await endpoint.ready()
        const desc = await client.headManifest(cacheTag(key))
        if (!desc) continue
        const m = await client.getRawManifest(desc.digest)
        manifest = JSON.parse(m.bytes.toString('utf8')) as Manifest
      } catch (e) {
        // Layers asking at once may fail together: one line says it.
        if (!endpoint.disabled)
          log.warn(`remote cache ${endpoint.label} unavailable, building without it: ${errorText(e)}`)
        endpoint.disabled = true
        continue
      }
      try {
        const record = await this.#readRecord(endpoint, manifest, key)
        const want = `${layer.os}/${layer.arch}`
        const got = `${record.platform.os}/${record.platform.architecture}`
        if (got !== want) {
          log.warn(
            `remote cached layer ${layer.name} in ${endpoint.label} is for ${got}, not ${want}; building it locally`,
          )
          return undefined
        }
        return { record, endpoint }
      } catch (e) {
        log.warn(
          `remote cached layer ${layer.name} in ${endpoint.label} is unusable (${errorText(e)}); building it locally`,
        )
        return undefined
      }
    }
    return undefined
  }

  async #readRecord(endpoint: Endpoint, manifest: Manifest, key: Digest): Promise<CacheRecord> {
    const config = (manifest as { config?: unknown }).config
    if (!isDescriptor(config) || config.mediaType !== CACHE_RECORD_MEDIA_TYPE)
      throw new StackerError('REGISTRY', 'the tag is not a stacker cache artifact', {
        detail: { reason: 'protocol', retryable: false },
      })
    if (config.size > MAX_RECORD_BYTES)
      throw new StackerError('REGISTRY', 'the cache record is too large', {
        detail: { reason: 'protocol', retryable: false },
      })
    const client = await endpoint.client()
    const chunks: Uint8Array[] = []
    for await (const c of await client.fetchBlob(config)) chunks.push(c)
    let parsed: unknown
    try {
      parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    } catch {
      throw new StackerError('REGISTRY', 'the cache record is not valid JSON', {
        detail: { reason: 'protocol', retryable: false },
      })
    }
    const r = checkRecord(parsed, key)
    if (typeof r === 'string')
      throw new StackerError('REGISTRY', r, { detail: { reason: 'protocol', retryable: false } })
    return r
  }

  /** Copies `blobs` from the record's repository into the build's layout (each verified by
   *  digest and size before it is committed, see stageBlob), three at a time. Blobs already there
   *  are skipped. A blob in `diffIds` (a gzip tar) must also decompress to that digest, checked as
   *  it streams. */
  async fetchBlobs(
    ctx: BuildContext,
    found: FoundRecord,
    blobs: readonly Descriptor[],
    diffIds: ReadonlyMap<string, Digest> = new Map(),
  ): Promise<void> {
    const client = await found.endpoint.client()
    const { stageBlob } = await import('@stacker/registry')
    const { createGunzip } = await import('node:zlib')
    const todo: Descriptor[] = []
    const seen = new Set<string>()
    for (const d of blobs) {
      if (seen.has(d.digest)) continue
      seen.add(d.digest)
      if (!(await ctx.layout.hasBlob(d.digest))) todo.push(d)
    }
    let next = 0
    const worker = async () => {
      while (next < todo.length) {
        const d = todo[next++] as Descriptor
        const diffId = diffIds.get(d.digest)
        if (diffId && !/\+gzip$/.test(d.mediaType) && !d.mediaType.endsWith('.gzip'))
          throw new StackerError('REGISTRY', `blob ${d.digest} is a ${d.mediaType}, not a gzip tar`, {
            detail: { reason: 'protocol', retryable: false },
          })
        const w = await stageBlob(
          client,
          ctx.layout,
          d,
          diffId ? { check: () => diffIdCheck(createGunzip, d, diffId) } : {},
        )
        await w.commit()
      }
    }
    await Promise.all([worker(), worker(), worker()])
  }

  // --- push ---------------------------------------------------------------------------------

  /** Pushes `b`'s record and blobs to every `--cache-to` repository, in the background (see flush). */
  schedulePush(ctx: BuildContext, b: BuiltLayer, log: Logger): void {
    for (const endpoint of this.#to) {
      if (endpoint.disabled) continue
      const p = this.#push(ctx, b, endpoint).catch((e) => {
        const err =
          e instanceof StackerError
            ? e
            : new StackerError('REGISTRY', errorText(e), { cause: e, detail: { reason: 'protocol', retryable: false } })
        const message = `couldn't push the cache of ${b.layer.name} to ${endpoint.label}: ${err.message}`
        if (this.#required) {
          this.#failure ??= new StackerError(err.code, message, { cause: err })
          return
        }
        // A registry that refuses one layer refuses the next: say it once.
        if (endpoint.disabled) return
        endpoint.disabled = true
        log.warn(`${message}; the build goes on without it`)
      })
      this.#pushes.push(p)
    }
  }

  /** Waits for the pushes scheduled so far; with `--cache-to-required`, fails with the first
   *  push that failed. */
  async flush(): Promise<void> {
    while (this.#pushes.length) await Promise.all(this.#pushes.splice(0))
    if (this.#failure) throw this.#failure
  }

  async close(): Promise<void> {
    for (const e of [...this.#from, ...this.#to]) await e.close()
  }

  async #push(ctx: BuildContext, b: BuiltLayer, endpoint: Endpoint): Promise<void> {
    const client = await endpoint.client()
    const tag = cacheTag(b.entry.key)
    if (await client.headManifest(tag)) {
      ctx.logger.debug(`${endpoint.label} has the cache of ${b.layer.name} already`)
      return
    }
    const record = await makeRecord(ctx, b)
    const blobs = new Map<string, Descriptor>()
    if (record.ownContentBlob) blobs.set(record.ownContentBlob.descriptor.digest, record.ownContentBlob.descriptor)
    for (const p of record.projections) blobs.set(p.descriptor.digest, p.descriptor)
    const list = [...blobs.values()]
    let next = 0
    const worker = async () => {
      while (next < list.length) {
        const d = list[next++] as Descriptor
        await client.pushBlob(d, () => ctx.layout.openBlob(d.digest))
      }
    }
    await Promise.all([worker(), worker(), worker()])
    const recordBytes = Buffer.from(canonicalJson(record))
    const recordDesc: Descriptor = {
      mediaType: CACHE_RECORD_MEDIA_TYPE,
      digest: sha256Digest(recordBytes),
      size: recordBytes.byteLength,
    }
    await client.pushBlob(recordDesc, async function* () {
      yield recordBytes
    })
    const manifest = {
      schemaVersion: 2,
      mediaType: MANIFEST_MEDIA_TYPE,
      artifactType: CACHE_ARTIFACT_TYPE,
      config: recordDesc,
      layers: list,
      annotations: { 'io.stackeroci.cache.layer': b.layer.name },
    }
    await client.putManifest(tag, Buffer.from(canonicalJson(manifest)), MANIFEST_MEDIA_TYPE)
    ctx.logger.debug(`pushed the cache of ${b.layer.name} to ${endpoint.label}:${tag}`)
  }
}

/** The record of a built layer: its chain, the blob of its own content, and the projections of
 *  every output type this build makes. */
async function makeRecord(ctx: BuildContext, b: BuiltLayer): Promise<CacheRecord> {
  const e = b.entry
  let ownContentBlob: RecordBlob | null = null
  if (e.ownContent !== null) {
    const p = await projectContent(ctx, e.ownContent, MATERIALISE_OUTPUT)
    if (!p) throw new StackerError('INTERNAL', `no tar of the content of ${b.layer.name}`)
    ownContentBlob = blobOf(p)
  }
  const projections: RecordProjection[] = []
  const outputs: CacheRecord['outputs'] = {}
  if (!b.layer.buildOnly) {
    for (const out of ctx.outputs) {
      const k = outputKey(out)
      for (const u of await outputProjections(ctx, b, out))
        projections.push({
          content: u.id,
          output: k,
          uncompressed: !!u.opts.uncompressed,
          allowEmpty: !!u.opts.allowEmpty,
          ...blobOf(u.projection),
        })
      const desc = e.outputs[k]
      if (desc) {
        const m = await ctx.layout.readJson<Manifest>(desc.digest)
        outputs[k] = { manifest: desc.digest, config: m.config.digest }
      }
    }
  }
  return {
    schemaVersion: 1,
    key: e.key,
    layer: b.layer.name,
    platform: { os: b.layer.os, architecture: b.layer.arch },
    chain: [...e.chain],
    ownContent: e.ownContent,
    ownContentBlob,
    generatedLabels: e.generatedLabels.map(([k, v]) => [k, v]),
    projections,
    outputs,
  }
}

const CHECK_BUFFER = 32 << 20

/** Gunzips and hashes a copy of a download; its end() fails unless the uncompressed bytes have
 *  digest `diffId`. */
function diffIdCheck(createGunzip: typeof import('node:zlib').createGunzip, d: Descriptor, diffId: Digest): BlobCheck {
  // Large output chunks: with zlib's default 16 KiB, handing each one back costs more than hashing it.
  const gunzip = createGunzip({ chunkSize: 1 << 20 })
  const h = new Hasher()
  let failure: unknown
  const done = new Promise<void>((resolve, reject) => {
    gunzip.on('data', (c: Buffer) => h.update(c))
    gunzip.on('end', resolve)
    gunzip.on('error', (e) => {
      failure ??= e
      reject(e)
    })
  })
  done.catch(() => {})
  return {
    async write(chunk) {
      if (failure !== undefined) return
      gunzip.write(chunk)
      // The download goes on while zlib (on the thread pool) catches up, up to a bound on memory.
      if (gunzip.writableLength > CHECK_BUFFER)
        await Promise.race([new Promise<void>((r) => gunzip.once('drain', r)), done.catch(() => {})])
    },
    async end() {
      try {
        gunzip.end()
        await done
      } catch (e) {
        throw new StackerError('DIGEST', `blob ${d.digest} is not a valid gzip stream`, { cause: e })
      }
      const got = h.digest()
      if (got !== diffId) throw new StackerError('DIGEST', `blob ${d.digest} uncompresses to ${got}, not ${diffId}`)
    },
    abort() {
      gunzip.destroy()
    },
  }
}

function blobOf(p: Projection): RecordBlob {
  return { descriptor: p.descriptor, diffId: p.diffId }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e)
}
