import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import https from 'node:https'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { NetDispatcher } from './net.js'

export type RequestBody = Uint8Array | AsyncIterable<Uint8Array>

export interface SendSpec {
  method: string
  url: URL
  headers: Record<string, string>
  body?: RequestBody
  timeoutMs: number
}

/** A response head with its body stream; the caller consumes, drains or destroys the body. */
export interface Response {
  statusCode: number
  statusMessage: string
  headers: IncomingHttpHeaders
  body: IncomingMessage
}

type ProxyAgents = { http: http.Agent; https: http.Agent }

/** The connections of one client: node's keep-alive agents (node's native HTTP parser: a registry
 *  transfer is bound by copying bytes, and it copies least), through the environment's proxy with
 *  the proxy-agents packages (CONNECT tunnels for https, absolute-URI requests for http, as Go's
 *  net/http does), trusting the system CAs and the registry's certs.d, or verifying nothing when
 *  `insecure`. Idle sockets do not keep the process alive; close() drops them at once. */
export class Agents {
  readonly net: NetDispatcher
  readonly #insecure: boolean
  readonly #http = new http.Agent({ keepAlive: true })
  #https: https.Agent | undefined
  readonly #proxied = new Map<string, ProxyAgents>()

  constructor(insecure: boolean, opts: { certsHost?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}) {
    this.#insecure = insecure
    this.net = new NetDispatcher({
      insecure,
      ...(opts.certsHost !== undefined ? { certsHost: opts.certsHost } : {}),
      ...(opts.env !== undefined ? { env: opts.env } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    })
  }

  /** TLS options of a request to the registry (direct or tunnelled). */
  tls(): https.RequestOptions {
    return this.net.tlsOptions() as https.RequestOptions
  }

  /** The agent for a request to `url`. */
  async agentFor(url: URL): Promise<http.Agent> {
    const proxy = this.net.proxyFor(url)
    const secure = url.protocol === 'https:'
    if (!proxy) {
      if (!secure) return this.#http
      this.#https ??= new https.Agent({ keepAlive: true, ...(this.#insecure ? { rejectUnauthorized: false } : {}) })
      return this.#https
    }
    let p = this.#proxied.get(proxy.href)
    if (!p) {
      // Loaded only when a proxy is in use.
      const [{ HttpsProxyAgent }, { HttpProxyAgent }] = await Promise.all([
        import('https-proxy-agent'),
        import('http-proxy-agent'),
      ])
      p = {
        https: new HttpsProxyAgent(proxy, { keepAlive: true }) as unknown as http.Agent,
        http: new HttpProxyAgent(proxy, { keepAlive: true }) as unknown as http.Agent,
      }
      this.#proxied.set(proxy.href, p)
    }
    return secure ? p.https : p.http
  }

  close(): void {
    this.#http.destroy()
    this.#https?.destroy()
    for (const p of this.#proxied.values()) {
      p.http.destroy()
      p.https.destroy()
    }
  }
}

/** Sends one request and resolves with the response head. Rejects with the socket's error (its
 *  `code` tells refused, unknown host, TLS, timeout...). */
export async function send(agents: Agents, spec: SendSpec): Promise<Response> {
  const isHttps = spec.url.protocol === 'https:'
  const agent = await agents.agentFor(spec.url)
  const mod = isHttps ? https : http
  return new Promise((resolve, reject) => {
    const req = mod.request(spec.url, {
      method: spec.method,
      headers: spec.headers,
      agent,
      timeout: spec.timeoutMs,
      ...(isHttps ? agents.tls() : {}),
    })
    req.on('response', (res: IncomingMessage) =>
      resolve({
        statusCode: res.statusCode ?? 0,
        statusMessage: res.statusMessage ?? '',
        headers: res.headers,
        body: res,
      }),
    )
    req.on('error', reject)
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })))
    const body = spec.body
    if (body === undefined) req.end()
    else if (body instanceof Uint8Array) req.end(body)
    else {
      pipeline(body instanceof Readable ? body : Readable.from(body, { objectMode: false }), req).catch((e) => {
        req.destroy(e)
        reject(e)
      })
    }
  })
}

/** Reads a whole (small) body; rejects past `limit` bytes so a hostile server can't fill memory. */
export async function readBody(res: Response, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let n = 0
  for await (const chunk of res.body) {
    n += (chunk as Buffer).byteLength
    if (n > limit) {
      res.body.destroy()
      throw Object.assign(new Error(`response larger than ${limit} bytes`), { code: 'ETOOBIG' })
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

/** Discards a body so the connection can be reused (or drops it if the body is large). */
export async function drain(res: Response): Promise<void> {
  // A parsed but unread response never emits 'end', and only 'end' hands the socket back to the
  // pool: left alone it stays referenced and keeps the process alive until the server hangs up.
  if (res.body.complete) {
    res.body.resume()
    return
  }
  try {
    let n = 0
    for await (const chunk of res.body) {
      n += (chunk as Buffer).byteLength
      if (n > 1 << 20) {
        res.body.destroy()
        return
      }
    }
  } catch {
    // A body we don't want can fail as it likes.
  }
}

export function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name.toLowerCase()]
  return Array.isArray(v) ? v[0] : v
}

export interface Challenge {
  scheme: string
  params: Record<string, string>
}

/** Parses `WWW-Authenticate` (the first challenge; registries send one). */
export function parseChallenge(value: string | undefined): Challenge | undefined {
  if (!value) return undefined
  const m = /^\s*([A-Za-z][A-Za-z0-9_-]*)\s*(.*)$/s.exec(value)
  if (!m) return undefined
  const params: Record<string, string> = {}
  const re = /([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)/g
  for (const p of (m[2] ?? '').matchAll(re)) {
    const key = (p[1] ?? '').toLowerCase()
    params[key] = p[3] !== undefined ? p[3].replace(/\\(.)/g, '$1') : (p[2] ?? '')
  }
  return { scheme: (m[1] ?? '').toLowerCase(), params }
}
