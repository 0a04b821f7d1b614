// Requests to one registry: connection pooling and proxies (http.ts), retries with backoff after
// connection errors and retryable statuses, and the errors of failed requests (errors.ts).
import type { Logger } from '@stacker/core'
import type { StackerError } from '@stacker/core'
import { isRetryable, isRetryableStatus, netError } from './errors.js'
import { Agents, drain, type Response, send, type SendSpec } from './http.js'
import { describeProxy } from './net.js'
import { registryHost } from './ref.js'

/** Waits `ms` milliseconds. */
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** How a Transport behaves; every field is set (RegistryClient fills in the defaults). */
export interface TransportOptions {
  insecure: boolean
  env?: NodeJS.ProcessEnv | undefined
  logger: Logger
  retries: number
  retryDelayMs: number
  userAgent: string
  timeoutMs: number
}

/** Sends the requests of one registry's clients. */
export class Transport {
  readonly agents: Agents
  readonly opts: TransportOptions
  readonly #registry: string

  constructor(registry: string, opts: TransportOptions) {
    this.#registry = registry
    this.opts = opts
    this.agents = new Agents(opts.insecure, {
      certsHost: registry,
      ...(opts.env !== undefined ? { env: opts.env } : {}),
      timeoutMs: opts.timeoutMs,
    })
  }

  /** Drops pooled connections; new ones are opened as needed. */
  close(): void {
    this.agents.close()
  }

  /** Sends a request built by `build` (called once per attempt); connection errors and retryable
   *  statuses are retried with backoff up to `retries` times. Resolves with any other response (the
   *  last retryable one when retries are used up); errors are about `subject` (`pulling REF`). */
  async sendRetrying(subject: string, build: () => Promise<SendSpec> | SendSpec, retries: number): Promise<Response> {
    const { logger, retryDelayMs } = this.opts
    for (let attempt = 0; ; attempt++) {
      const spec = await build()
      let res: Response
      try {
        res = await send(this.agents, spec)
      } catch (e) {
        const err = this.netError(subject, e, spec.url)
        if (isRetryable(err) && attempt < retries) {
          logger.debug(`${spec.method} ${spec.url.origin}${spec.url.pathname}: ${err.message}, retrying`)
          await sleep(retryDelayMs * 2 ** attempt)
          continue
        }
        throw err
      }
      const status = res.statusCode ?? 0
      logger.debug(`${spec.method} ${spec.url.origin}${spec.url.pathname} ${status}`)
      if (isRetryableStatus(status) && attempt < retries) {
        await drain(res)
        await sleep(retryDelayMs * 2 ** attempt)
        continue
      }
      return res
    }
  }

  /** The error of a request to `url` (default: the registry) that failed below HTTP. */
  netError(subject: string, e: unknown, url?: URL, what?: string): StackerError {
    const proxy = url ? this.agents.net.proxyFor(url) : undefined
    const host = url?.hostname ?? registryHost(this.#registry).replace(/:\d+$/, '')
    return netError(
      subject,
      e,
      { host, ...(proxy ? { proxy: { name: describeProxy(proxy), host: proxy.hostname } } : {}) },
      what,
    )
  }
}
