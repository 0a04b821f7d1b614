import { type Digest, digestAlgorithm, Hasher, isDigest, type Logger, silentLogger, StackerError } from '@stacker/core'
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
import type { Credentials } from './auth-file.js'
import { RegistryAuth } from './auth.js'
import { isRetryable, isRetryableStatus, protocolError, statusError, subjectError } from './errors.js'
import { drain, header, parseChallenge, type RequestBody, type Response, readBody } from './http.js'
import { type ImageRef, registryHost } from './ref.js'
import { sleep, Transport } from './transport.js'
import { ChunkReader, PROGRESS_STEP, shortDigest, UploadProgress } from './upload.js'

/** How a RegistryClient talks to its registry: trust, credentials, retries, chunking, timeouts. */
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

/** What pushing a blob took: nothing (the registry had it), a cross-repository mount, or an upload. */
export type PushBlobResult = 'exists' | 'mounted' | 'uploaded'

/** A manifest as the registry served it: its descriptor and exact bytes (their digest is the
 *  descriptor's), and the index it was chosen from, if any. */
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

/** Blobs up to this size are uploaded in one PUT, larger ones in PATCH chunks of it (16 MiB). */
export const DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
const MANIFEST_ACCEPT = [
  MediaTypes.manifest,
  MediaTypes.index,
  MediaTypes.dockerManifest,
  MediaTypes.dockerManifestList,
].join(', ')
function mediaTypeOf(contentType: string | undefined): string | undefined {
  const t = contentType?.split(';')[0]?.trim()
  return t === '' ? undefined : t
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
  readonly #chunkSize: number
  readonly #transport: Transport
  readonly #auth: RegistryAuth
  #base: Promise<URL> | undefined

  constructor(ref: ImageRef, opts: RegistryClientOptions = {}) {
    this.ref = ref
    this.#insecure = opts.insecure ?? false
    this.#logger = opts.logger ?? silentLogger
    this.#chunkSize = Math.max(1, opts.chunkSize ?? DEFAULT_CHUNK_SIZE)
    this.#transport = new Transport(ref.registry, {
      insecure: this.#insecure,
      env: opts.env,
      logger: this.#logger,
      retries: Math.max(0, opts.retries ?? 3),
      retryDelayMs: opts.retryDelayMs ?? 500,
      userAgent: opts.userAgent ?? 'stacker-ts',
      timeoutMs: opts.timeoutMs ?? 60_000,
    })
    this.#auth = new RegistryAuth(ref, opts, this.#transport)
  }

  /** What messages say the client was doing: `pulling REF`, `pushing REF`. */
  #subject(action: Action): string {
    return `${action} ${this.ref}`
  }

  /** How often and how patiently callers that stream (pullImage) should retry a lost transfer. */
  get retryPolicy(): { retries: number; delayMs: number } {
    return { retries: this.#transport.opts.retries, delayMs: this.#transport.opts.retryDelayMs }
  }

  /** Finds the registry's base URL now (the `/v2/` probe, https then http when insecure), so that
   *  a first request made later does not wait for it. Every request does this itself when needed. */
  async connect(): Promise<void> {
    await this.#ensureBase('pulling')
  }

  /** Drops pooled connections. The client stays usable (new connections are opened as needed). */
  close(): void {
    this.#transport.close()
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
      throw protocolError(
        this.#subject('pulling'),
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
    if (status !== 200) throw await statusError(this.#subject('pulling'), res, `manifest ${reference}`)
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
    if (res.statusCode !== 200) throw await statusError(this.#subject('pulling'), res, `blob ${desc.digest}`)
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
        if (!isRetryable(e) || attempt >= this.#transport.opts.retries) throw e
        this.#logger.debug(`retrying upload of ${desc.digest}`, { attempt: attempt + 1 })
        await sleep(this.#transport.opts.retryDelayMs * 2 ** attempt)
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
      throw await statusError(this.#subject('pushing'), res, `manifest ${reference}`)
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
      throw await statusError(this.#subject(action), res, isDigest(reference) ? `manifest ${reference}` : '')
    let bytes: Buffer
    try {
      bytes = await readBody(res, MAX_MANIFEST_BYTES)
    } catch (e) {
      throw this.#transport.netError(this.#subject(action), e, undefined, `reading manifest ${reference}`)
    }
    const h = new Hasher(isDigest(reference) ? digestAlgorithm(reference) : 'sha256')
    h.update(bytes)
    const digest = h.digest()
    const headerDigest = header(res.headers, 'docker-content-digest')
    const want = isDigest(reference) ? reference : headerDigest?.startsWith('sha256:') ? headerDigest : undefined
    if (want !== undefined && want !== digest) {
      throw subjectError(this.#subject(action), 'DIGEST', `manifest ${want} does not match its digest (got ${digest})`)
    }
    if (expected && expected.size !== bytes.byteLength) {
      throw subjectError(
        this.#subject(action),
        'DIGEST',
        `manifest ${digest} is ${bytes.byteLength} bytes, the index says ${expected.size}`,
      )
    }
    let parsed: { mediaType?: unknown; schemaVersion?: unknown; manifests?: unknown; layers?: unknown }
    try {
      parsed = JSON.parse(bytes.toString('utf8'))
    } catch {
      throw protocolError(this.#subject(action), `manifest ${digest} is not valid JSON`)
    }
    const declared = typeof parsed?.mediaType === 'string' ? parsed.mediaType : undefined
    const mediaType =
      declared ??
      mediaTypeOf(header(res.headers, 'content-type')) ??
      (Array.isArray(parsed?.manifests) ? MediaTypes.index : MediaTypes.manifest)
    if (!isManifestMediaType(mediaType) && !isIndexMediaType(mediaType)) {
      throw protocolError(this.#subject(action), `unsupported manifest type ${mediaType}`)
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
      throw subjectError(
        this.#subject('pulling'),
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
    throw await statusError(this.#subject(action), res, `blob ${digest}`)
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
          throw subjectError(
            this.#subject('pulling'),
            'DIGEST',
            `blob ${desc.digest} is larger than its ${desc.size} bytes`,
          )
        }
        if (size - reported >= PROGRESS_STEP) {
          reported = size
          this.#logger.progress({ id, kind: 'pull', label, current: size, total: desc.size })
        }
        yield buf
      }
    } catch (e) {
      if (e instanceof StackerError) throw e
      throw this.#transport.netError(this.#subject('pulling'), e, undefined, `reading blob ${desc.digest}`)
    } finally {
      if (!res.body.readableEnded) res.body.destroy()
    }
    const got = h?.digest()
    if ((got !== undefined && got !== desc.digest) || size !== desc.size) {
      const what = got !== undefined ? `does not match its digest (got ${got})` : `is ${size} bytes, not ${desc.size}`
      throw subjectError(this.#subject('pulling'), 'DIGEST', `blob ${desc.digest} ${what}`)
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
    if (start.statusCode !== 202) throw await statusError(this.#subject('pushing'), start, `blob ${desc.digest}`)
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
          if (res.statusCode !== 202) throw await statusError(this.#subject('pushing'), res, `blob ${desc.digest}`)
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
      if (res.statusCode !== 201) throw await statusError(this.#subject('pushing'), res, `blob ${desc.digest}`)
      progress.done()
      return 'uploaded'
    } finally {
      await source.close()
    }
  }

  async #location(res: Response): Promise<URL> {
    const loc = header(res.headers, 'location')
    if (!loc) throw protocolError(this.#subject('pushing'), 'the registry sent no upload location')
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
        res = await this.#transport.sendRetrying(
          this.#subject(action),
          () => ({
            method: 'GET',
            url: new URL('/v2/', base),
            headers: { 'User-Agent': this.#transport.opts.userAgent },
            timeoutMs: this.#transport.opts.timeoutMs,
          }),
          last ? this.#transport.opts.retries : 0,
        )
      } catch (e) {
        if (last) throw e
        this.#logger.debug(`${base.origin} failed, trying plain http`)
        continue
      }
      await drain(res)
      const status = res.statusCode ?? 0
      if (status === 401) this.#auth.challenge = parseChallenge(header(res.headers, 'www-authenticate'))
      else if (isRetryableStatus(status)) throw await statusError(this.#subject(action), res, '')
      this.#logger.debug(`registry ${base.origin}`, { auth: this.#auth.challenge?.scheme ?? 'none' })
      return base
    }
    throw new StackerError('INTERNAL', 'unreachable')
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
      const res = await this.#transport.sendRetrying(
        this.#subject(spec.action),
        async () => {
          const headers: Record<string, string> = { 'User-Agent': this.#transport.opts.userAgent, ...spec.headers }
          // Credentials go to the registry only, never to a host it redirects to.
          const auth = sameOrigin ? await this.#auth.authorization(this.#subject(spec.action), scopes) : undefined
          sent = auth
          if (auth) headers.Authorization = auth
          const s = { method: spec.method, url: target, headers, timeoutMs: this.#transport.opts.timeoutMs }
          return spec.body ? { ...s, body: spec.body() } : s
        },
        replayable ? this.#transport.opts.retries : 0,
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
          (this.#auth.challenge?.scheme !== challenge.scheme || challenge.scheme === 'bearer')
        if (worthRetry) {
          reauthorized = true
          this.#auth.challenge = challenge
          await this.#auth.dropToken(scopes, sent)
          continue
        }
        throw await this.#auth.refused(this.#subject(spec.action), status)
      }
      if (spec.followRedirects && status >= 300 && status < 400 && status !== 304) {
        const loc = header(res.headers, 'location')
        await drain(res)
        if (!loc || ++redirects > 5) throw protocolError(this.#subject(spec.action), `too many redirects (${status})`)
        url = new URL(loc, target)
        continue
      }
      return res
    }
  }
}
