import {
  type Digest,
  digestAlgorithm,
  Hasher,
  isDigest,
  type Logger,
  StackerError,
  type StackerErrorCode,
  silentLogger,
} from '@stacker/core'
import {
  type Descriptor,
  hostPlatform,
  type ImageIndex,
  isIndexMediaType,
  isManifestMediaType,
  MediaTypes,
  type Platform,
  platformMatches,
} from '@stacker/oci'
import { type Credentials, type CredentialsEntry, lookupAuthEntry } from './auth-file.js'
import {
  Agents,
  type Challenge,
  drain,
  header,
  parseChallenge,
  type RequestBody,
  type Response,
  readBody,
  send,
} from './http.js'
import { describeProxy } from './net.js'
import { type ImageRef, registryHost } from './ref.js'

export interface RegistryClientOptions {
  /** Allows plain http (tried after https) and TLS without certificate verification. */
  insecure?: boolean
  /** From --username/--password; wins over auth files. */
  credentials?: Credentials
  /** How messages name `credentials` (default `--username`); the password is never shown. */
  credentialsSource?: string
  /** An auth file searched first (see authFilePaths); `env` replaces process.env for the search. */
  authFile?: string
  env?: NodeJS.ProcessEnv
  logger?: Logger
  /** Retries after a connection error or a 5xx/429 (default 3). */
  retries?: number
  /** First backoff delay, doubled on each retry (default 500 ms). */
  retryDelayMs?: number
  userAgent?: string
  /** Blobs larger than this are uploaded in PATCH chunks of this size, smaller ones in one PUT
   *  (default 16 MiB). */
  chunkSize?: number
  /** A socket idle this long fails the request (default 60 s). */
  timeoutMs?: number
}

export type PushBlobResult = 'exists' | 'mounted' | 'uploaded'

export interface ManifestResult {
  /** The image manifest (for an index, the entry chosen for the platform). */
  descriptor: Descriptor
  bytes: Buffer
  /** The index the manifest was chosen from, when the reference named one. */
  index?: { descriptor: Descriptor; bytes: Buffer }
}

type Action = 'pulling' | 'pushing'
type Access = 'pull' | 'push'

interface CallSpec {
  action: Action
  method: string
  /** A path below the registry's base URL, or an absolute URL (an upload location). */
  url: string | URL
  access: Access
  extraScopes?: string[]
  headers?: Record<string, string>
  /** Called for each attempt. */
  body?: () => RequestBody
  /** False for a body that can be sent only once: no retries, no second try after a 401. */
  replayable?: boolean
  followRedirects?: boolean
}

export const DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
const MANIFEST_ACCEPT = [
  MediaTypes.manifest,
  MediaTypes.index,
  MediaTypes.dockerManifest,
  MediaTypes.dockerManifestList,
].join(', ')
const PROGRESS_STEP = 1 << 20

const retryableErrors = new WeakSet<object>()

/** True for an error worth another try: a lost connection, a timeout, a 5xx. */
export function isRetryable(e: unknown): boolean {
  return typeof e === 'object' && e !== null && retryableErrors.has(e)
}

function markRetryable<E extends object>(e: E): E {
  retryableErrors.add(e)
  return e
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

function isRetryableStatus(status: number): boolean {
  return status === 429 || status === 500 || status === 502 || status === 503 || status === 504
}

function errnoCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code
  return typeof c === 'string' ? c : undefined
}

const TLS_CODES = new Set([
  'EPROTO',
  'ERR_SSL_WRONG_VERSION_NUMBER',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
])

function oneLine(s: string, max = 200): string {
  const flat = s.replace(/\s+/g, ' ').trim()
  return flat.length > max ? `${flat.slice(0, max)}...` : flat
}

function mediaTypeOf(contentType: string | undefined): string | undefined {
  const t = contentType?.split(';')[0]?.trim()
  return t === '' ? undefined : t
}

function shortDigest(d: Digest): string {
  return d.slice(0, d.indexOf(':') + 13)
}

/** `/v2/<repo>/...` with the repository's slashes kept. */
function repoPath(repository: string, rest: string): string {
  return `/v2/${repository.split('/').map(encodeURIComponent).join('/')}/${rest}`
}

/**
 * A client of one repository of an OCI distribution registry. It learns the registry's scheme and
 * auth challenge with a `GET /v2/` on first use, then authenticates every request (Basic with the
 * credentials, or a Bearer token fetched with them for the needed scope). Requests without a body
 * that can't be replayed are retried with backoff after connection errors and 5xx. Every error is a
 * one-line StackerError naming the reference; credentials and tokens appear in none of them, nor in
 * log lines. Call close() to drop idle connections early (they never keep the process alive).
 */
export class RegistryClient {
  readonly ref: ImageRef
  readonly #insecure: boolean
  readonly #logger: Logger
  readonly #retries: number
  readonly #retryDelayMs: number
  readonly #userAgent: string
  readonly #chunkSize: number
  readonly #timeoutMs: number
  readonly #opts: RegistryClientOptions
  readonly #agents: Agents
  #base: Promise<URL> | undefined
  #challenge: Challenge | undefined
  #creds: Promise<CredentialsEntry | undefined> | undefined
  readonly #tokens = new Map<string, Promise<string>>()

  constructor(ref: ImageRef, opts: RegistryClientOptions = {}) {
    this.ref = ref
    this.#opts = opts
    this.#insecure = opts.insecure ?? false
    this.#logger = opts.logger ?? silentLogger
    this.#retries = Math.max(0, opts.retries ?? 3)
    this.#retryDelayMs = opts.retryDelayMs ?? 500
    this.#userAgent = opts.userAgent ?? 'stacker-ts'
    this.#chunkSize = Math.max(1, opts.chunkSize ?? DEFAULT_CHUNK_SIZE)
    this.#timeoutMs = opts.timeoutMs ?? 60_000
    this.#agents = new Agents(this.#insecure, {
      certsHost: ref.registry,
      ...(opts.env !== undefined ? { env: opts.env } : {}),
      timeoutMs: this.#timeoutMs,
    })
  }

  /** How often and how patiently callers that stream (pullImage) should retry a lost transfer. */
  get retryPolicy(): { retries: number; delayMs: number } {
    return { retries: this.#retries, delayMs: this.#retryDelayMs }
  }

  /** Drops pooled connections. The client stays usable (new connections are opened as needed). */
  close(): void {
    this.#agents.close()
  }

  /** Resolves a tag or digest to the manifest descriptor and raw bytes; for an index, picks the
   *  platform (default: linux on this machine's architecture). Digests are verified. */
  async getManifest(reference: string, opts: { platform?: Platform } = {}): Promise<ManifestResult> {
    const top = await this.#fetchManifest('pulling', reference)
    if (!isIndexMediaType(top.descriptor.mediaType)) return top
    const wanted = opts.platform ?? hostPlatform()
    const entry = this.#pickPlatform(top.bytes, wanted)
    const child = await this.#fetchManifest('pulling', entry.digest, entry)
    if (!isManifestMediaType(child.descriptor.mediaType)) {
      throw this.#error(
        'pulling',
        'REGISTRY',
        `${entry.digest} in the index is a ${child.descriptor.mediaType}, not an image manifest`,
      )
    }
    const descriptor: Descriptor = { ...child.descriptor }
    if (entry.platform) descriptor.platform = entry.platform
    return { descriptor, bytes: child.bytes, index: top }
  }

  /** Fetches a manifest or index by tag or digest as it is, without choosing a platform. */
  async getRawManifest(reference: string): Promise<ManifestResult> {
    return this.#fetchManifest('pulling', reference)
  }

  /** The descriptor of a tag or digest, or undefined if the registry doesn't have it. */
  async headManifest(reference: string): Promise<Descriptor | undefined> {
    const res = await this.#call({
      action: 'pulling',
      method: 'HEAD',
      url: repoPath(this.ref.repository, `manifests/${encodeURIComponent(reference)}`),
      access: 'pull',
      headers: { Accept: MANIFEST_ACCEPT },
    })
    await drain(res)
    const status = res.statusCode ?? 0
    if (status === 404) return undefined
    if (status !== 200) throw await this.#statusError('pulling', res, `manifest ${reference}`)
    const digest = header(res.headers, 'docker-content-digest')
    const size = Number(header(res.headers, 'content-length'))
    const mediaType = mediaTypeOf(header(res.headers, 'content-type'))
    if (digest && isDigest(digest) && Number.isSafeInteger(size) && mediaType) return { mediaType, digest, size }
    // Without those headers only the body tells.
    return (await this.#fetchManifest('pulling', reference)).descriptor
  }

  /** Streams a blob. The stream checks size and digest as it goes and errors (DIGEST) before its
   *  end if the content does not match, so a consumer that commits only on a clean end never keeps
   *  bad bytes. The consumer must read it to the end or break out of the loop (which closes it).
   *  `consumerVerifies`: the consumer checks the digest itself before it keeps anything (a layout
   *  writer given the digest, which hashes off the main thread): the stream then checks the size
   *  only, so the bytes are not hashed twice. */
  async fetchBlob(desc: Descriptor, opts: { consumerVerifies?: boolean } = {}): Promise<AsyncIterable<Uint8Array>> {
    const res = await this.#call({
      action: 'pulling',
      method: 'GET',
      url: repoPath(this.ref.repository, `blobs/${desc.digest}`),
      access: 'pull',
      followRedirects: true,
    })
    if (res.statusCode !== 200) throw await this.#statusError('pulling', res, `blob ${desc.digest}`)
    return this.#verifiedBody(res, desc, !opts.consumerVerifies)
  }

  async hasBlob(digest: Digest): Promise<boolean> {
    return this.#hasBlob('pulling', 'pull', digest)
  }

  /**
   * Makes the blob exist in the repository: nothing if it does already (HEAD), a cross-repository
   * mount from `mountFrom` if the registry can, else an upload, one PUT up to the chunk size and
   * PATCH chunks above it. `open` is called once per attempt and must yield the blob's bytes.
   * Retried as a whole after connection errors and 5xx.
   */
  async pushBlob(
    desc: Descriptor,
    open: () => AsyncIterable<Uint8Array>,
    opts: { mountFrom?: string } = {},
  ): Promise<PushBlobResult> {
    const mountFrom = opts.mountFrom !== this.ref.repository ? opts.mountFrom : undefined
    const extraScopes = mountFrom ? [`repository:${mountFrom}:pull`] : []
    if (await this.#hasBlob('pushing', 'push', desc.digest, extraScopes)) return 'exists'
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#uploadOnce(desc, open, mountFrom, extraScopes)
      } catch (e) {
        if (!isRetryable(e) || attempt >= this.#retries) throw e
        this.#logger.debug(`retrying upload of ${desc.digest}`, { attempt: attempt + 1 })
        await sleep(this.#retryDelayMs * 2 ** attempt)
      }
    }
  }

  /** Stores a manifest or index under a tag or its digest. Returns its descriptor. */
  async putManifest(reference: string, bytes: Buffer, mediaType: string): Promise<Descriptor> {
    const res = await this.#call({
      action: 'pushing',
      method: 'PUT',
      url: repoPath(this.ref.repository, `manifests/${encodeURIComponent(reference)}`),
      access: 'push',
      headers: { 'Content-Type': mediaType, 'Content-Length': String(bytes.byteLength) },
      body: () => bytes,
    })
    if (res.statusCode !== 201 && res.statusCode !== 200) {
      throw await this.#statusError('pushing', res, `manifest ${reference}`)
    }
    await drain(res)
    const digest = new Hasher(isDigest(reference) ? digestAlgorithm(reference) : 'sha256')
    digest.update(bytes)
    return { mediaType, digest: digest.digest(), size: bytes.byteLength }
  }

  // --- manifests --------------------------------------------------------------------------

  async #fetchManifest(action: Action, reference: string, expected?: Descriptor): Promise<ManifestResult> {
    const res = await this.#call({
      action,
      method: 'GET',
      url: repoPath(this.ref.repository, `manifests/${encodeURIComponent(reference)}`),
      access: 'pull',
      headers: { Accept: MANIFEST_ACCEPT },
    })
    if (res.statusCode !== 200)
      throw await this.#statusError(action, res, isDigest(reference) ? `manifest ${reference}` : '')
    let bytes: Buffer
    try {
      bytes = await readBody(res, MAX_MANIFEST_BYTES)
    } catch (e) {
      throw this.#netError(action, e, `reading manifest ${reference}`)
    }
    const h = new Hasher(isDigest(reference) ? digestAlgorithm(reference) : 'sha256')
    h.update(bytes)
    const digest = h.digest()
    const headerDigest = header(res.headers, 'docker-content-digest')
    const want = isDigest(reference) ? reference : headerDigest?.startsWith('sha256:') ? headerDigest : undefined
    if (want !== undefined && want !== digest) {
      throw this.#error(action, 'DIGEST', `manifest ${want} does not match its digest (got ${digest})`)
    }
    if (expected && expected.size !== bytes.byteLength) {
      throw this.#error(
        action,
        'DIGEST',
        `manifest ${digest} is ${bytes.byteLength} bytes, the index says ${expected.size}`,
      )
    }
    let parsed: { mediaType?: unknown; schemaVersion?: unknown; manifests?: unknown; layers?: unknown }
    try {
      parsed = JSON.parse(bytes.toString('utf8'))
    } catch {
      throw this.#error(action, 'REGISTRY', `manifest ${digest} is not valid JSON`)
    }
    const declared = typeof parsed?.mediaType === 'string' ? parsed.mediaType : undefined
    const mediaType =
      declared ??
      mediaTypeOf(header(res.headers, 'content-type')) ??
      (Array.isArray(parsed?.manifests) ? MediaTypes.index : MediaTypes.manifest)
    if (!isManifestMediaType(mediaType) && !isIndexMediaType(mediaType)) {
      throw this.#error(action, 'REGISTRY', `unsupported manifest type ${mediaType}`)
    }
    return { descriptor: { mediaType, digest, size: bytes.byteLength }, bytes }
  }

  #pickPlatform(bytes: Buffer, wanted: Platform): Descriptor {
    const index = JSON.parse(bytes.toString('utf8')) as ImageIndex
    const manifests = (Array.isArray(index.manifests) ? index.manifests : []).filter(
      (m) => m && typeof m.digest === 'string' && isDigest(m.digest),
    )
    const hit =
      manifests.find((m) => platformMatches(m.platform, wanted)) ??
      (manifests.length === 1 && !manifests[0]?.platform ? manifests[0] : undefined)
    if (!hit) {
      throw this.#error(
        'pulling',
        'NOT_FOUND',
        `no image found in manifest list for architecture ${wanted.architecture}, variant ${JSON.stringify(wanted.variant ?? '')}, OS ${wanted.os}`,
      )
    }
    return hit
  }

  // --- blobs ------------------------------------------------------------------------------

  async #hasBlob(action: Action, access: Access, digest: Digest, extraScopes: string[] = []): Promise<boolean> {
    const res = await this.#call({
      action,
      method: 'HEAD',
      url: repoPath(this.ref.repository, `blobs/${digest}`),
      access,
      extraScopes,
      followRedirects: true,
    })
    await drain(res)
    if (res.statusCode === 200) return true
    if (res.statusCode === 404) return false
    throw await this.#statusError(action, res, `blob ${digest}`)
  }

  async *#verifiedBody(res: Response, desc: Descriptor, hash: boolean): AsyncGenerator<Uint8Array> {
    const h = hash ? new Hasher(digestAlgorithm(desc.digest)) : undefined
    const id = desc.digest
    const label = shortDigest(desc.digest)
    let reported = 0
    let size = 0
    try {
      for await (const chunk of res.body) {
        const buf = chunk as Buffer
        h?.update(buf)
        size += buf.byteLength
        if (size > desc.size) {
          throw this.#error('pulling', 'DIGEST', `blob ${desc.digest} is larger than its ${desc.size} bytes`)
        }
        if (size - reported >= PROGRESS_STEP) {
          reported = size
          this.#logger.progress({ id, kind: 'pull', label, current: size, total: desc.size })
        }
        yield buf
      }
    } catch (e) {
      if (e instanceof StackerError) throw e
      throw this.#netError('pulling', e, `reading blob ${desc.digest}`)
    } finally {
      if (!res.body.readableEnded) res.body.destroy()
    }
    const got = h?.digest()
    if ((got !== undefined && got !== desc.digest) || size !== desc.size) {
      const what = got !== undefined ? `does not match its digest (got ${got})` : `is ${size} bytes, not ${desc.size}`
      throw this.#error('pulling', 'DIGEST', `blob ${desc.digest} ${what}`)
    }
    this.#logger.progress({ id, kind: 'pull', label, current: size, total: desc.size, done: true })
  }

  async #uploadOnce(
    desc: Descriptor,
    open: () => AsyncIterable<Uint8Array>,
    mountFrom: string | undefined,
    extraScopes: string[],
  ): Promise<PushBlobResult> {
    const uploads = repoPath(this.ref.repository, 'blobs/uploads/')
    const start = await this.#call({
      action: 'pushing',
      method: 'POST',
      url: mountFrom
        ? `${uploads}?mount=${encodeURIComponent(desc.digest)}&from=${encodeURIComponent(mountFrom)}`
        : uploads,
      access: 'push',
      extraScopes,
      headers: { 'Content-Length': '0' },
    })
    await drain(start)
    if (start.statusCode === 201 && mountFrom) {
      this.#logger.debug(`mounted ${desc.digest} from ${mountFrom}`)
      this.#logger.progress({
        id: desc.digest,
        kind: 'push',
        label: shortDigest(desc.digest),
        current: desc.size,
        total: desc.size,
        done: true,
      })
      return 'mounted'
    }
    if (start.statusCode !== 202) throw await this.#statusError('pushing', start, `blob ${desc.digest}`)
    let location = await this.#location(start)

    const progress = new UploadProgress(this.#logger, desc)
    const source = new ChunkReader(open())
    try {
      if (desc.size > this.#chunkSize) {
        for (let offset = 0; offset < desc.size; ) {
          const n = Math.min(this.#chunkSize, desc.size - offset)
          const chunk = source.take(n, progress)
          const res = await this.#call({
            action: 'pushing',
            method: 'PATCH',
            url: location,
            access: 'push',
            headers: {
              'Content-Type': 'application/octet-stream',
              'Content-Length': String(n),
              'Content-Range': `${offset}-${offset + n - 1}`,
            },
            body: () => chunk,
            replayable: false,
          })
          await drain(res)
          if (res.statusCode !== 202) throw await this.#statusError('pushing', res, `blob ${desc.digest}`)
          location = await this.#location(res)
          offset += n
        }
        await source.expectEnd(desc)
      }
      const url = new URL(location)
      url.searchParams.set('digest', desc.digest)
      const monolithic = desc.size <= this.#chunkSize
      const body = monolithic ? source.take(desc.size, progress) : undefined
      const res = await this.#call({
        action: 'pushing',
        method: 'PUT',
        url,
        access: 'push',
        headers: {
          'Content-Type': 'application/octet-stream',
          'Content-Length': String(monolithic ? desc.size : 0),
        },
        ...(body ? { body: () => body, replayable: false } : {}),
      })
      await drain(res)
      if (monolithic) await source.expectEnd(desc)
      if (res.statusCode !== 201) throw await this.#statusError('pushing', res, `blob ${desc.digest}`)
      progress.done()
      return 'uploaded'
    } finally {
      await source.close()
    }
  }

  async #location(res: Response): Promise<URL> {
    const loc = header(res.headers, 'location')
    if (!loc) throw this.#error('pushing', 'REGISTRY', 'the registry sent no upload location')
    return new URL(loc, await this.#ensureBase('pushing'))
  }

  // --- transport --------------------------------------------------------------------------

  /** The registry's base URL, found once: https, or http after https failed when insecure. */
  #ensureBase(action: Action): Promise<URL> {
    if (!this.#base) {
      const p = this.#ping(action)
      this.#base = p
      p.catch(() => {
        if (this.#base === p) this.#base = undefined
      })
    }
    return this.#base
  }

  async #ping(action: Action): Promise<URL> {
    const host = registryHost(this.ref.registry)
    const schemes = this.#insecure ? ['https', 'http'] : ['https']
    for (const [i, scheme] of schemes.entries()) {
      const last = i === schemes.length - 1
      const base = new URL(`${scheme}://${host}`)
      let res: Response
      try {
        res = await this.#sendRetrying(
          action,
          () => ({
            method: 'GET',
            url: new URL('/v2/', base),
            headers: { 'User-Agent': this.#userAgent },
            timeoutMs: this.#timeoutMs,
          }),
          last ? this.#retries : 0,
        )
      } catch (e) {
        if (last) throw e
        this.#logger.debug(`${base.origin} failed, trying plain http`)
        continue
      }
      await drain(res)
      const status = res.statusCode ?? 0
      if (status === 401) this.#challenge = parseChallenge(header(res.headers, 'www-authenticate'))
      else if (isRetryableStatus(status)) throw await this.#statusError(action, res, '')
      this.#logger.debug(`registry ${base.origin}`, { auth: this.#challenge?.scheme ?? 'none' })
      return base
    }
    throw new StackerError('INTERNAL', 'unreachable')
  }

  /** Sends a request; connection errors and 5xx are retried with backoff up to `retries` times.
   *  Resolves with any other response (the last 5xx when retries are used up). */
  async #sendRetrying(
    action: Action,
    build: () => Promise<Parameters<typeof send>[1]> | Parameters<typeof send>[1],
    retries: number,
  ): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      const spec = await build()
      let res: Response
      try {
        res = await send(this.#agents, spec)
      } catch (e) {
        const err = this.#netError(action, e, undefined, spec.url)
        if (isRetryable(err) && attempt < retries) {
          this.#logger.debug(`${spec.method} ${spec.url.origin}${spec.url.pathname}: ${err.message}, retrying`)
          await sleep(this.#retryDelayMs * 2 ** attempt)
          continue
        }
        throw err
      }
      const status = res.statusCode ?? 0
      this.#logger.debug(`${spec.method} ${spec.url.origin}${spec.url.pathname} ${status}`)
      if (isRetryableStatus(status) && attempt < retries) {
        await drain(res)
        await sleep(this.#retryDelayMs * 2 ** attempt)
        continue
      }
      return res
    }
  }

  async #call(spec: CallSpec): Promise<Response> {
    const base = await this.#ensureBase(spec.action)
    let url = typeof spec.url === 'string' ? new URL(spec.url, base) : spec.url
    const scopes = [
      `repository:${this.ref.repository}:${spec.access === 'push' ? 'pull,push' : 'pull'}`,
      ...(spec.extraScopes ?? []),
    ]
    const replayable = spec.replayable !== false
    let reauthorized = false
    let sent: string | undefined
    for (let redirects = 0; ; ) {
      const target = url
      const sameOrigin = target.origin === base.origin
      const res = await this.#sendRetrying(
        spec.action,
        async () => {
          const headers: Record<string, string> = { 'User-Agent': this.#userAgent, ...spec.headers }
          // Credentials go to the registry only, never to a host it redirects to.
          const auth = sameOrigin ? await this.#authorization(spec.action, scopes) : undefined
          sent = auth
          if (auth) headers.Authorization = auth
          const s = { method: spec.method, url: target, headers, timeoutMs: this.#timeoutMs }
          return spec.body ? { ...s, body: spec.body() } : s
        },
        replayable ? this.#retries : 0,
      )
      const status = res.statusCode ?? 0
      if (status === 401 || status === 403) {
        const challenge = parseChallenge(header(res.headers, 'www-authenticate'))
        await drain(res)
        // A new challenge, or a bearer token that lacks scope or expired, deserves one more try.
        const worthRetry =
          status === 401 &&
          sameOrigin &&
          replayable &&
          !reauthorized &&
          challenge !== undefined &&
          (this.#challenge?.scheme !== challenge.scheme || challenge.scheme === 'bearer')
        if (worthRetry) {
          reauthorized = true
          this.#challenge = challenge
          await this.#dropToken(scopes.join(' '), sent)
          continue
        }
        throw await this.#authError(spec.action, status)
      }
      if (spec.followRedirects && status >= 300 && status < 400 && status !== 304) {
        const loc = header(res.headers, 'location')
        await drain(res)
        if (!loc || ++redirects > 5) throw this.#error(spec.action, 'REGISTRY', `too many redirects (${status})`)
        url = new URL(loc, target)
        continue
      }
      return res
    }
  }

  async #credentials(): Promise<CredentialsEntry | undefined> {
    if (!this.#creds) {
      const o = this.#opts
      this.#creds = o.credentials
        ? Promise.resolve({ credentials: o.credentials, source: o.credentialsSource ?? '--username', key: '' })
        : lookupAuthEntry(this.ref.registry, this.ref.repository, {
            ...(o.authFile !== undefined ? { authFile: o.authFile } : {}),
            ...(o.env !== undefined ? { env: o.env } : {}),
          })
    }
    return this.#creds
  }

  async #authorization(action: Action, scopes: string[]): Promise<string | undefined> {
    const ch = this.#challenge
    if (!ch) return undefined
    const entry = await this.#credentials()
    if (ch.scheme === 'basic') return entry ? basic(entry.credentials) : undefined
    if (ch.scheme !== 'bearer') return undefined
    const key = scopes.join(' ')
    // Blobs go up in parallel: they share one token request per scope rather than racing.
    let token = this.#tokens.get(key)
    if (!token) {
      const p = this.#fetchToken(action, ch, scopes, entry)
      token = p
      this.#tokens.set(key, p)
      p.catch(() => {
        if (this.#tokens.get(key) === p) this.#tokens.delete(key)
      })
    }
    return `Bearer ${await token}`
  }

  /** Forgets the token of `key` if it is the one a refused request carried; one that requests in
   *  parallel fetched meanwhile (or are fetching) is kept. */
  async #dropToken(key: string, sent: string | undefined): Promise<void> {
    const cached = this.#tokens.get(key)
    if (!cached || sent === undefined) return
    const value = await cached.catch(() => undefined)
    if (this.#tokens.get(key) === cached && (value === undefined || sent === `Bearer ${value}`))
      this.#tokens.delete(key)
  }

  async #fetchToken(
    action: Action,
    ch: Challenge,
    scopes: string[],
    entry: CredentialsEntry | undefined,
  ): Promise<string> {
    const realm = ch.params.realm
    let url: URL
    try {
      url = new URL(realm ?? '')
    } catch {
      throw this.#error(action, 'AUTH', `the registry's bearer challenge has no valid realm`)
    }
    if (url.protocol !== 'https:' && entry && !this.#insecure) {
      throw this.#error(action, 'AUTH', `refusing to send credentials to ${url.origin} over plain http`)
    }
    if (ch.params.service) url.searchParams.set('service', ch.params.service)
    for (const s of scopes) url.searchParams.append('scope', s)
    const res = await this.#sendRetrying(
      action,
      () => {
        const headers: Record<string, string> = { 'User-Agent': this.#userAgent }
        if (entry) headers.Authorization = basic(entry.credentials)
        return { method: 'GET', url, headers, timeoutMs: this.#timeoutMs }
      },
      this.#retries,
    )
    const status = res.statusCode ?? 0
    if (status === 401 || status === 403) {
      await drain(res)
      throw await this.#authError(action, status)
    }
    if (status !== 200) throw await this.#statusError(action, res, `token service ${url.host}`)
    let token: unknown
    try {
      const json = JSON.parse((await readBody(res, 1 << 20)).toString('utf8')) as Record<string, unknown>
      token = json.token ?? json.access_token
    } catch (e) {
      if (e instanceof StackerError) throw e
    }
    if (typeof token !== 'string' || token === '') {
      throw this.#error(action, 'AUTH', `token service ${url.host} sent no token`)
    }
    return token
  }

  // --- errors -----------------------------------------------------------------------------

  #error(action: Action, code: StackerErrorCode, detail: string, opts: { hint?: string; cause?: unknown } = {}) {
    return new StackerError(code, `${action} ${this.ref}: ${detail}`, opts)
  }

  async #authError(action: Action, status: number): Promise<StackerError> {
    const what = status === 403 ? 'denied (403)' : `unauthorized (${status})`
    const entry = await this.#credentials().catch(() => undefined)
    if (!entry) {
      return this.#error(action, 'AUTH', `${what}, no credentials for ${this.ref.registry}`, {
        hint: `pass --username/--password or add ${this.ref.registry} to an auth.json`,
      })
    }
    const source = entry.key ? `${entry.source} (${entry.key})` : entry.source
    return this.#error(action, 'AUTH', `${what} with the credentials of ${source}`)
  }

  async #statusError(action: Action, res: Response, what: string): Promise<StackerError> {
    const status = res.statusCode ?? 0
    let message: string | undefined
    try {
      const body = await readBody(res, 64 * 1024)
      const errors = (JSON.parse(body.toString('utf8')) as { errors?: { message?: unknown }[] }).errors
      const m = errors?.[0]?.message
      if (typeof m === 'string' && m !== '') message = oneLine(m)
    } catch {
      // Not a registry error document (or a HEAD response): the status says enough.
    }
    message ??= oneLine(res.statusMessage || 'request failed')
    if (status === 404 && what.startsWith('blob ')) message = 'blob unknown'
    const detail = `${what ? `${what}: ` : ''}${message} (${status})`
    const err = this.#error(action, status === 404 ? 'NOT_FOUND' : 'REGISTRY', detail)
    return isRetryableStatus(status) ? markRetryable(err) : err
  }

  #netError(action: Action, e: unknown, what?: string, url?: URL): StackerError {
    if (e instanceof StackerError) return e
    // undici reports a socket failure as UND_ERR_SOCKET with the socket's own error as its cause.
    const cause = (e as { cause?: unknown } | null)?.cause
    let code = errnoCode(e)
    if (code === 'UND_ERR_SOCKET' && errnoCode(cause) !== undefined) code = errnoCode(cause)
    const proxy = url ? this.#agents.net.proxyFor(url) : undefined
    const host = url?.hostname ?? registryHost(this.ref.registry).replace(/:\d+$/, '')
    const prefix = what ? `${what}: ` : ''
    let detail: string
    let retryable = true
    let hint: string | undefined
    switch (code) {
      case 'ECONNREFUSED':
        detail = 'connection refused'
        break
      case 'ENOTFOUND':
        detail = `unknown host ${host}`
        retryable = false
        break
      case 'EAI_AGAIN':
        detail = `unknown host ${host} (temporary DNS failure)`
        break
      case 'ECONNRESET':
      case 'EPIPE':
      case 'ECONNABORTED':
        detail = 'connection lost'
        break
      case 'ETIMEDOUT':
      case 'UND_ERR_CONNECT_TIMEOUT':
      case 'UND_ERR_HEADERS_TIMEOUT':
      case 'UND_ERR_BODY_TIMEOUT':
        detail = 'timed out'
        break
      case 'UND_ERR_SOCKET':
      case 'UND_ERR_CLOSED':
        detail = 'connection lost'
        break
      case 'UND_ERR_ABORTED':
        // The proxy answered CONNECT with something other than 200 (undici's message has the status).
        detail = proxy
          ? `the proxy ${describeProxy(proxy)} refused the tunnel${/\((\d{3})\)/.exec((e as Error).message)?.[0] ? ` ${/\((\d{3})\)/.exec((e as Error).message)?.[0]}` : ''}`
          : 'request aborted'
        retryable = false
        break
      case 'EHOSTUNREACH':
      case 'ENETUNREACH':
        detail = `host ${host} unreachable`
        break
      default:
        retryable = false
        if (code && (TLS_CODES.has(code) || code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS'))) {
          detail = `TLS error: ${tlsReason(e as Error)}`
          hint = 'use --skip-tls for a registry without a verified certificate'
        } else {
          detail = oneLine(e instanceof Error ? e.message : String(e))
        }
    }
    // A failure to reach the proxy is not the registry's: say so, naming the proxy (never its credentials).
    if (proxy && (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN'))
      detail = `proxy ${describeProxy(proxy)}: ${detail.replace(` ${host}`, ` ${proxy.hostname}`)}`
    const err = this.#error(action, 'REGISTRY', `${prefix}${detail}`, { cause: e, ...(hint ? { hint } : {}) })
    return retryable ? markRetryable(err) : err
  }
}

/** OpenSSL's reason without its file and line noise; a plain-http server is named as such. */
function tlsReason(e: Error): string {
  const reason = /SSL routines:[^:]*:([^:]+):/.exec(e.message)?.[1] ?? oneLine(e.message)
  return reason === 'wrong version number' ? `${reason} (the server does not speak TLS)` : reason
}

function basic(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`, 'utf8').toString('base64')}`
}

/** Reports upload progress in steps so a large blob does not flood the logger. */
class UploadProgress {
  #current = 0
  #reported = 0
  readonly #logger: Logger
  readonly #desc: Descriptor
  constructor(logger: Logger, desc: Descriptor) {
    this.#logger = logger
    this.#desc = desc
  }
  add(n: number): void {
    this.#current += n
    if (this.#current - this.#reported >= PROGRESS_STEP) {
      this.#reported = this.#current
      this.#emit(false)
    }
  }
  done(): void {
    this.#emit(true)
  }
  #emit(done: boolean): void {
    const d = this.#desc
    this.#logger.progress({
      id: d.digest,
      kind: 'push',
      label: shortDigest(d.digest),
      current: this.#current,
      total: d.size,
      ...(done ? { done } : {}),
    })
  }
}

/** Cuts one byte stream into consecutive pieces of exact sizes, without copying more than needed. */
class ChunkReader {
  readonly #it: AsyncIterator<Uint8Array>
  #pending: Uint8Array | undefined
  #ended = false

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]()
  }

  async *take(n: number, progress: UploadProgress): AsyncGenerator<Uint8Array> {
    let left = n
    while (left > 0) {
      let chunk = this.#pending
      this.#pending = undefined
      if (!chunk) {
        if (this.#ended) break
        const r = await this.#it.next()
        if (r.done) {
          this.#ended = true
          break
        }
        chunk = r.value
      }
      if (chunk.byteLength > left) {
        this.#pending = chunk.subarray(left)
        chunk = chunk.subarray(0, left)
      }
      left -= chunk.byteLength
      progress.add(chunk.byteLength)
      yield chunk
    }
    if (left > 0) throw new StackerError('DIGEST', `blob source ended ${left} bytes short`)
  }

  /** Fails if the source has bytes beyond the descriptor's size. */
  async expectEnd(desc: Descriptor): Promise<void> {
    if (this.#pending && this.#pending.byteLength > 0) {
      throw new StackerError('DIGEST', `blob ${desc.digest} is larger than its ${desc.size} bytes`)
    }
    if (this.#ended) return
    for (;;) {
      const r = await this.#it.next()
      if (r.done) break
      if (r.value.byteLength > 0) {
        throw new StackerError('DIGEST', `blob ${desc.digest} is larger than its ${desc.size} bytes`)
      }
    }
    this.#ended = true
  }

  async close(): Promise<void> {
    if (!this.#ended) {
      this.#ended = true
      await this.#it.return?.()
    }
  }
}
