// Authentication to one registry: the credentials of the reference (given, or found in auth files
// and credential helpers), the registry's challenge (Basic, or Bearer tokens per scope), and the
// errors of refused requests. Credentials and tokens appear in no message.
import { KeptResults, StackerError } from '@stacker/core'
import { type Credentials, type CredentialsEntry, lookupAuthEntry } from './auth-file.js'
import { statusError, subjectError } from './errors.js'
import { type Challenge, drain, readBody } from './http.js'
import type { ImageRef } from './ref.js'
import type { Transport } from './transport.js'

/** Where the credentials of a reference come from. */
export interface AuthOptions {
  /** From --username/--password; wins over auth files. */
  credentials?: Credentials | undefined
  /** How messages name `credentials` (default `--username`); the password is never shown. */
  credentialsSource?: string | undefined
  /** An auth file searched first; `env` replaces process.env for the search. */
  authFile?: string | undefined
  env?: NodeJS.ProcessEnv | undefined
}

/** The Authorization header value of Basic credentials. */
export function basicAuthorization(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`, 'utf8').toString('base64')}`
}

/** What one client knows of its registry's authentication. */
export class RegistryAuth {
  /** The registry's challenge, learnt from a 401 (undefined: the registry asked for none). */
  challenge: Challenge | undefined
  readonly #ref: ImageRef
  readonly #opts: AuthOptions
  readonly #transport: Transport
  #creds: Promise<CredentialsEntry | undefined> | undefined
  readonly #tokens = new KeptResults<string, string>()

  constructor(ref: ImageRef, opts: AuthOptions, transport: Transport) {
    this.#ref = ref
    this.#opts = opts
    this.#transport = transport
  }

  /** The credentials for the reference, looked up once. */
  credentials(): Promise<CredentialsEntry | undefined> {
    if (!this.#creds) {
      const o = this.#opts
      this.#creds = o.credentials
        ? Promise.resolve({ credentials: o.credentials, source: o.credentialsSource ?? '--username', key: '' })
        : lookupAuthEntry(this.#ref.registry, this.#ref.repository, {
            ...(o.authFile !== undefined ? { authFile: o.authFile } : {}),
            ...(o.env !== undefined ? { env: o.env } : {}),
          })
    }
    return this.#creds
  }

  /** The Authorization header for a request needing `scopes`, if the challenge asks for one. */
  async authorization(subject: string, scopes: string[]): Promise<string | undefined> {
    const ch = this.challenge
    if (!ch) return undefined
    const entry = await this.credentials()
    if (ch.scheme === 'basic') return entry ? basicAuthorization(entry.credentials) : undefined
    if (ch.scheme !== 'bearer') return undefined
    const key = scopes.join(' ')
    // Blobs go up in parallel: they share one token request per scope rather than racing.
    return `Bearer ${await this.#tokens.run(key, () => this.#fetchToken(subject, ch, scopes, entry))}`
  }

  /** Forgets the token of `scopes` if it is the one a refused request carried (`sent`); one that
   *  requests in parallel fetched meanwhile (or are fetching) is kept. */
  async dropToken(scopes: string[], sent: string | undefined): Promise<void> {
    const key = scopes.join(' ')
    const cached = this.#tokens.get(key)
    if (!cached || sent === undefined) return
    const value = await cached.catch(() => undefined)
    if (value === undefined || sent === `Bearer ${value}`) this.#tokens.forget(key, cached)
  }

  /** The error of a request refused with `status` (401 or 403), naming where the credentials sent
   *  came from, or how to give some. */
  async refused(subject: string, status: number): Promise<StackerError> {
    const what = status === 403 ? 'denied (403)' : `unauthorized (${status})`
    const entry = await this.credentials().catch(() => undefined)
    const registry = this.#ref.registry
    if (!entry) {
      return subjectError(subject, 'AUTH', `${what}, no credentials for ${registry}`, {
        hint: `pass --username/--password or add ${registry} to an auth.json`,
      })
    }
    const source = entry.key ? `${entry.source} (${entry.key})` : entry.source
    return subjectError(subject, 'AUTH', `${what} with the credentials of ${source}`)
  }

  async #fetchToken(
    subject: string,
    ch: Challenge,
    scopes: string[],
    entry: CredentialsEntry | undefined,
  ): Promise<string> {
    const t = this.#transport.opts
    let url: URL
    try {
      url = new URL(ch.params.realm ?? '')
    } catch {
      throw subjectError(subject, 'AUTH', `the registry's bearer challenge has no valid realm`)
    }
    if (url.protocol !== 'https:' && entry && !t.insecure) {
      throw subjectError(subject, 'AUTH', `refusing to send credentials to ${url.origin} over plain http`)
    }
    if (ch.params.service) url.searchParams.set('service', ch.params.service)
    for (const s of scopes) url.searchParams.append('scope', s)
    const res = await this.#transport.sendRetrying(
      subject,
      () => {
        const headers: Record<string, string> = { 'User-Agent': t.userAgent }
        if (entry) headers.Authorization = basicAuthorization(entry.credentials)
        return { method: 'GET', url, headers, timeoutMs: t.timeoutMs }
      },
      t.retries,
    )
    const status = res.statusCode ?? 0
    if (status === 401 || status === 403) {
      await drain(res)
      throw await this.refused(subject, status)
    }
    if (status !== 200) throw await statusError(subject, res, `token service ${url.host}`)
    let token: unknown
    try {
      const json = JSON.parse((await readBody(res, 1 << 20)).toString('utf8')) as Record<string, unknown>
      token = json.token ?? json.access_token
    } catch (e) {
      if (e instanceof StackerError) throw e
    }
    if (typeof token !== 'string' || token === '') {
      throw subjectError(subject, 'AUTH', `token service ${url.host} sent no token`)
    }
    return token
  }
}
