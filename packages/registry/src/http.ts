import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import https from 'node:https'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'

export type RequestBody = Uint8Array | AsyncIterable<Uint8Array>

export interface SendSpec {
  method: string
  url: URL
  headers: Record<string, string>
  body?: RequestBody
  timeoutMs: number
}

/** Keep-alive agents of one client; `insecure` turns off certificate verification. Idle sockets
 *  do not keep the process alive; close() drops them at once. */
export class Agents {
  readonly http: http.Agent
  readonly https: https.Agent
  constructor(insecure: boolean) {
    this.http = new http.Agent({ keepAlive: true })
    this.https = new https.Agent({ keepAlive: true, rejectUnauthorized: !insecure })
  }
  close(): void {
    this.http.destroy()
    this.https.destroy()
  }
}

/** Sends one request and resolves with the response head; the caller consumes or drains the body.
 *  Rejects with the socket's error (its `code` tells refused, unknown host, TLS, timeout...). */
export function send(agents: Agents, spec: SendSpec): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const isHttps = spec.url.protocol === 'https:'
    const mod = isHttps ? https : http
    const req = mod.request(spec.url, {
      method: spec.method,
      headers: spec.headers,
      agent: isHttps ? agents.https : agents.http,
      timeout: spec.timeoutMs,
    })
    req.on('response', resolve)
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
export async function readBody(res: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let n = 0
  for await (const chunk of res) {
    n += (chunk as Buffer).byteLength
    if (n > limit) {
      res.destroy()
      throw Object.assign(new Error(`response larger than ${limit} bytes`), { code: 'ETOOBIG' })
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

/** Discards a body so the connection can be reused (or drops it if the body is large). */
export async function drain(res: IncomingMessage): Promise<void> {
  // A parsed but unread response never emits 'end', and only 'end' hands the socket back to the
  // pool: left alone it stays referenced and keeps the process alive until the server hangs up.
  if (res.complete) {
    res.resume()
    return
  }
  try {
    let n = 0
    for await (const chunk of res) {
      n += (chunk as Buffer).byteLength
      if (n > 1 << 20) {
        res.destroy()
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
