import type { IncomingHttpHeaders } from 'node:http'
import { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
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
  body: Readable
}

/** The connections of one client: keep-alive, through the environment's proxy, trusting the system
 *  CAs and the registry's certs.d (or verifying nothing when `insecure`). Idle sockets do not keep
 *  the process alive; close() drops them at once. */
export class Agents {
  readonly dispatcher: NetDispatcher
  constructor(insecure: boolean, opts: { certsHost?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}) {
    this.dispatcher = new NetDispatcher({
      insecure,
      ...(opts.certsHost !== undefined ? { certsHost: opts.certsHost } : {}),
      ...(opts.env !== undefined ? { env: opts.env } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    })
  }
  close(): void {
    this.dispatcher.close().catch(() => {})
  }
}

/** Sends one request and resolves with the response head. Rejects with the connection's error
 *  (its `code` tells refused, unknown host, TLS, timeout...). */
export async function send(agents: Agents, spec: SendSpec): Promise<Response> {
  const body = spec.body
  const res = await agents.dispatcher.request({
    origin: spec.url.origin,
    path: `${spec.url.pathname}${spec.url.search}`,
    method: spec.method as Dispatcher.HttpMethod,
    headers: spec.headers,
    ...(body === undefined
      ? {}
      : { body: body instanceof Uint8Array ? body : body instanceof Readable ? body : Readable.from(body) }),
    headersTimeout: spec.timeoutMs,
    bodyTimeout: spec.timeoutMs,
  })
  return {
    statusCode: res.statusCode,
    statusMessage: (res as { statusText?: string }).statusText ?? '',
    headers: res.headers as IncomingHttpHeaders,
    body: res.body,
  }
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
