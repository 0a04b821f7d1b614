import { readdirSync, readFileSync, statSync } from 'node:fs'
import { homedir } from 'node:os'
import { isIP } from 'node:net'
import { join } from 'node:path'
import tls, { type SecureContext } from 'node:tls'
import type { buildConnector, Dispatcher } from 'undici'

/** Where containers/image looks for per-registry certificates, in order (the first that has a
 *  directory for the host wins); the home one is first, as containers/image has it for every user. */
export function certsDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  return [
    join(env.HOME || homedir(), '.config', 'containers', 'certs.d'),
    '/etc/containers/certs.d',
    '/etc/docker/certs.d',
  ]
}

/** Go's defaults on Linux (crypto/x509 root_linux.go): the first bundle file that exists. */
const SYSTEM_CA_FILES = [
  '/etc/ssl/certs/ca-certificates.crt',
  '/etc/pki/tls/certs/ca-bundle.crt',
  '/etc/ssl/ca-bundle.pem',
  '/etc/pki/tls/cacert.pem',
  '/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem',
  '/etc/ssl/cert.pem',
]
const SYSTEM_CA_DIRS = ['/etc/ssl/certs', '/etc/pki/tls/certs']

const PEM_RE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g

function pems(text: string): string[] {
  return text.match(PEM_RE) ?? []
}

function readIfFile(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
}

function dirPems(dir: string): string[] {
  let names: string[]
  try {
    names = readdirSync(dir).sort()
  } catch {
    return []
  }
  const out: string[] = []
  for (const n of names) {
    const text = readIfFile(join(dir, n))
    if (text !== undefined) out.push(...pems(text))
  }
  return out
}

/** Where an extra CA file (`NODE_EXTRA_CA_CERTS`) that cannot be loaded is reported, in node's own
 *  words; the default writes to stderr. */
export type TrustWarning = (message: string) => void

/**
 * The CA certificates every TLS connection trusts: node's bundled roots, the system store as Go
 * reads it (`SSL_CERT_FILE`, else the first of Go's bundle files; `SSL_CERT_DIR`'s directories,
 * else Go's default directories only when no bundle file exists), and `NODE_EXTRA_CA_CERTS`
 * (passing `ca` to a connection would otherwise drop it). Duplicates are dropped.
 */
export function trustedCas(env: NodeJS.ProcessEnv = process.env, warn: TrustWarning = defaultWarn): string[] {
  const key = (pem: string) => pem.replace(/\s+/g, '')
  const seen = new Set<string>()
  const out: string[] = []
  const add = (list: readonly string[]) => {
    for (const pem of list) {
      const k = key(pem)
      if (seen.has(k)) continue
      seen.add(k)
      out.push(pem)
    }
  }
  add(tls.rootCertificates)
  const file = env.SSL_CERT_FILE
    ? env.SSL_CERT_FILE
    : SYSTEM_CA_FILES.find((f) => {
        try {
          return statSync(f).isFile()
        } catch {
          return false
        }
      })
  const bundle = file !== undefined ? readIfFile(file) : undefined
  if (bundle !== undefined) add(pems(bundle))
  const dirs = env.SSL_CERT_DIR ? env.SSL_CERT_DIR.split(':').filter((d) => d !== '') : bundle ? [] : SYSTEM_CA_DIRS
  for (const d of dirs) add(dirPems(d))
  const extra = env.STACKER_EXTRA_CA_CERTS || env.NODE_EXTRA_CA_CERTS
  if (extra) {
    try {
      add(pems(readFileSync(extra, 'utf8')))
    } catch (e) {
      // node's own words for the same fault, as the launcher prints them.
      warn(`Warning: Ignoring extra certs from \`${extra}\`, load failed: ${(e as Error).message}`)
    }
  }
  return out
}

function defaultWarn(message: string): void {
  process.stderr.write(`${message}\n`)
}

/** Certificates for one registry host from its certs.d directory, as containers/image reads them:
 *  `*.crt` are CAs (added to the trusted ones), `NAME.cert` with `NAME.key` a client certificate. */
export interface HostCerts {
  dir: string
  cas: string[]
  cert?: string
  key?: string
}

/** The certs.d directory of `hostPort` (`host[:port]`), the first of certsDirs() that has one, read;
 *  undefined when none has. */
export function hostCerts(hostPort: string, env: NodeJS.ProcessEnv = process.env): HostCerts | undefined {
  for (const base of certsDirs(env)) {
    const dir = join(base, hostPort)
    let names: string[]
    try {
      names = readdirSync(dir).sort()
    } catch {
      continue
    }
    const out: HostCerts = { dir, cas: [] }
    for (const n of names) {
      if (n.endsWith('.crt')) out.cas.push(...pems(readFileSync(join(dir, n), 'utf8')))
      else if (n.endsWith('.cert')) {
        const keyFile = join(dir, `${n.slice(0, -'.cert'.length)}.key`)
        const key = readIfFile(keyFile)
        if (key === undefined) continue
        out.cert = readFileSync(join(dir, n), 'utf8')
        out.key = key
      }
    }
    return out
  }
  return undefined
}

// --- proxies ----------------------------------------------------------------------------------

interface NoProxyEntry {
  kind: 'domain' | 'suffix' | 'ip' | 'cidr'
  value: string
  port: number
  bits?: number
}

/** The proxy settings of the environment, read as Go's net/http does (golang.org/x/net's
 *  httpproxy): `HTTPS_PROXY` for https URLs and `HTTP_PROXY` for http ones (upper case first, then
 *  lower case), a scheme-less value meaning http://; `NO_PROXY` lists hosts that go direct. */
export interface ProxyConfig {
  httpProxy: string | undefined
  httpsProxy: string | undefined
  noProxy: string
}

function envAny(env: NodeJS.ProcessEnv, ...names: string[]): string | undefined {
  for (const n of names) {
    const v = env[n]
    if (v !== undefined && v !== '') return v
  }
  return undefined
}

/** Reads ProxyConfig from `env`. */
export function proxyConfig(env: NodeJS.ProcessEnv = process.env): ProxyConfig {
  return {
    httpProxy: envAny(env, 'HTTP_PROXY', 'http_proxy'),
    httpsProxy: envAny(env, 'HTTPS_PROXY', 'https_proxy'),
    noProxy: envAny(env, 'NO_PROXY', 'no_proxy') ?? '',
  }
}

function proxyUrl(value: string): URL {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`
  return new URL(withScheme)
}

function parseNoProxy(value: string): NoProxyEntry[] | '*' {
  const out: NoProxyEntry[] = []
  for (const raw of value.split(',')) {
    let p = raw.trim().toLowerCase()
    if (p === '') continue
    if (p === '*') return '*'
    const cidr = /^(.+)\/(\d+)$/.exec(p)
    if (cidr && isIP(cidr[1] ?? '') !== 0) {
      out.push({ kind: 'cidr', value: cidr[1] ?? '', bits: Number(cidr[2]), port: 0 })
      continue
    }
    if (isIP(p) !== 0 || isIP(p.replace(/^\[|\]$/g, '')) !== 0) {
      out.push({ kind: 'ip', value: p.replace(/^\[|\]$/g, ''), port: 0 })
      continue
    }
    let port = 0
    const hp = /^(.*):(\d+)$/.exec(p)
    if (hp) {
      p = hp[1] ?? ''
      port = Number(hp[2])
      const bare = p.replace(/^\[|\]$/g, '')
      if (isIP(bare) !== 0) {
        out.push({ kind: 'ip', value: bare, port })
        continue
      }
    }
    if (p.startsWith('*.')) p = p.slice(1)
    if (p.startsWith('.')) out.push({ kind: 'suffix', value: p, port })
    else out.push({ kind: 'domain', value: p, port })
  }
  return out
}

function ipBytes(ip: string): number[] | undefined {
  if (isIP(ip) === 4) return ip.split('.').map(Number)
  if (isIP(ip) !== 6) return undefined
  const [head = '', tail = ''] = ip.split('::')
  const parse = (s: string) => (s === '' ? [] : s.split(':'))
  const h = parse(head)
  const t = parse(ip.includes('::') ? tail : '')
  const groups = [...h, ...new Array(8 - h.length - t.length).fill('0'), ...t]
  return groups.flatMap((g) => {
    const n = Number.parseInt(g, 16)
    return [n >> 8, n & 0xff]
  })
}

function inCidr(ip: string, net: string, bits: number): boolean {
  const a = ipBytes(ip)
  const b = ipBytes(net)
  if (!a || !b || a.length !== b.length) return false
  for (let i = 0; i < bits; i++) {
    const byte = i >> 3
    const mask = 0x80 >> (i & 7)
    if (((a[byte] ?? 0) & mask) !== ((b[byte] ?? 0) & mask)) return false
  }
  return true
}

function isLoopback(host: string): boolean {
  if (host === 'localhost') return true
  if (isIP(host) === 4) return host.startsWith('127.')
  return host === '::1'
}

/** The proxy for `url`, or undefined to connect directly. As Go's: localhost and loopback
 *  addresses are never proxied; `NO_PROXY` takes `*`, host names (matching the name and its
 *  subdomains; a leading `.` or `*.` for subdomains only), IP addresses, CIDR ranges, each with an
 *  optional `:port`. */
export function proxyFor(url: URL, config: ProxyConfig): URL | undefined {
  const value = url.protocol === 'https:' ? config.httpsProxy : url.protocol === 'http:' ? config.httpProxy : undefined
  if (value === undefined) return undefined
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase()
  if (isLoopback(host)) return undefined
  const port = Number(url.port) || (url.protocol === 'https:' ? 443 : 80)
  const entries = parseNoProxy(config.noProxy)
  if (entries === '*') return undefined
  for (const e of entries) {
    if (e.port !== 0 && e.port !== port) continue
    switch (e.kind) {
      case 'ip':
        if (isIP(host) !== 0 && ipBytes(host)?.join('.') === ipBytes(e.value)?.join('.')) return undefined
        break
      case 'cidr':
        if (isIP(host) !== 0 && inCidr(host, e.value, e.bits ?? 0)) return undefined
        break
      case 'domain':
        if (host === e.value || host.endsWith(`.${e.value}`)) return undefined
        break
      case 'suffix':
        if (host.endsWith(e.value)) return undefined
        break
    }
  }
  return proxyUrl(value)
}

/** A proxy URL for messages: scheme, host and port, never its credentials. */
export function describeProxy(url: URL): string {
  return `${url.protocol}//${url.host}`
}

// --- dispatchers ------------------------------------------------------------------------------

/** How a NetDispatcher connects: whose certs.d applies, whether certificates are checked, the
 *  environment that names proxies and CA files, and the idle timeout. */
export interface DispatcherOptions {
  /** Certificates are not verified. */
  insecure?: boolean
  /** `host[:port]` whose certs.d directory applies (a registry). */
  certsHost?: string
  env?: NodeJS.ProcessEnv
  /** A socket idle this long fails the request (ms). */
  timeoutMs?: number
  warn?: TrustWarning
}

const contexts = new Map<string, SecureContext>()
let casMemo: { key: string; cas: string[] } | undefined

function envKey(env: NodeJS.ProcessEnv): string {
  return JSON.stringify([env.SSL_CERT_FILE, env.SSL_CERT_DIR, env.NODE_EXTRA_CA_CERTS, env.STACKER_EXTRA_CA_CERTS])
}

/** One secure context per trust (system, or system plus a host's certs.d): building one parses
 *  every certificate, so it is done once per process, not per connection. */
function tlsOptions(opts: DispatcherOptions): { rejectUnauthorized: false } | { secureContext: SecureContext } {
  const env = opts.env ?? process.env
  if (opts.insecure) return { rejectUnauthorized: false }
  const host = opts.certsHost !== undefined ? hostCerts(opts.certsHost, env) : undefined
  const key = `${envKey(env)}|${host?.dir ?? ''}`
  let ctx = contexts.get(key)
  if (!ctx) {
    const ek = envKey(env)
    if (casMemo?.key !== ek) casMemo = { key: ek, cas: trustedCas(env, opts.warn) }
    const ca = host ? [...casMemo.cas, ...host.cas] : casMemo.cas
    ctx = tls.createSecureContext({
      ca,
      ...(host?.cert !== undefined && host.key !== undefined ? { cert: host.cert, key: host.key } : {}),
    })
    contexts.set(key, ctx)
  }
  return { secureContext: ctx }
}

type Undici = typeof import('undici')
let undiciModule: Promise<Undici> | undefined
// undici takes a good part of a no-op build's start-up to load: it loads on the first request.
const loadUndici = (): Promise<Undici> => {
  const p = undiciModule ?? (import('undici') as unknown as Promise<Undici>)
  undiciModule = p
  return p
}

/**
 * The network settings of a client: keep-alive connections that trust the CAs of trustedCas()
 * (plus the host's certs.d), and requests through the environment's proxy (see proxyFor) with
 * undici's ProxyAgent, which tunnels with CONNECT. The environment is read once, when this is
 * made; undici and the certificates load on the first request. close() drops idle connections.
 */
export class NetDispatcher {
  readonly #opts: DispatcherOptions
  readonly #config: ProxyConfig
  #dispatcher: Promise<Dispatcher> | undefined

  constructor(opts: DispatcherOptions = {}) {
    this.#opts = opts
    this.#config = proxyConfig(opts.env ?? process.env)
  }

  /** The proxy a request to `url` goes through, if any. */
  proxyFor(url: URL): URL | undefined {
    return proxyFor(url, this.#config)
  }

  /** TLS options for a connection to the host: the shared secure context of the trusted CAs
   *  (and the host's certs.d), or no verification when insecure. */
  tlsOptions(): { rejectUnauthorized: false } | { secureContext: SecureContext } {
    return tlsOptions(this.#opts)
  }

  /** The undici dispatcher: direct or proxied per request origin. */
  dispatcher(): Promise<Dispatcher> {
    this.#dispatcher ??= loadUndici().then((u) => makeDispatcher(u, this.#opts, (url) => this.proxyFor(url)))
    return this.#dispatcher
  }

  /** Undici's `request` through dispatcher(). */
  async request(opts: Dispatcher.RequestOptions): Promise<Dispatcher.ResponseData> {
    return (await this.dispatcher()).request(opts)
  }

  /** Undici's fetch through dispatcher(). */
  async fetch(url: string | URL, init: RequestInit = {}): Promise<Response> {
    const [u, dispatcher] = await Promise.all([loadUndici(), this.dispatcher()])
    return (await u.fetch(url, { ...init, dispatcher } as never)) as unknown as Response
  }

  /** Drops pooled connections; the dispatcher stays usable (new connections open as needed). */
  async close(): Promise<void> {
    const d = this.#dispatcher
    this.#dispatcher = undefined
    if (d) await (await d).destroy().catch(() => {})
  }
}

function makeDispatcher(u: Undici, opts: DispatcherOptions, proxyOf: (url: URL) => URL | undefined): Dispatcher {
  const timeout = opts.timeoutMs
  const connectOptions = (): buildConnector.BuildOptions => ({
    ...(tlsOptions(opts) as buildConnector.BuildOptions),
    ...(timeout !== undefined ? { timeout } : {}),
  })
  const agentOptions = () => ({
    ...(timeout !== undefined ? { headersTimeout: timeout, bodyTimeout: timeout } : {}),
    connect: connectOptions(),
  })
  let direct: Dispatcher | undefined
  const proxied = new Map<string, Dispatcher>()
  const pick = (origin: string | URL | undefined): Dispatcher => {
    const url = typeof origin === 'string' ? new URL(origin) : (origin ?? new URL('http://invalid'))
    const proxy = proxyOf(url)
    if (!proxy) {
      direct ??= new u.Agent(agentOptions())
      return direct
    }
    let agent = proxied.get(proxy.href)
    if (!agent) {
      agent = new u.ProxyAgent({
        ...agentOptions(),
        uri: proxy.href,
        // The target's TLS goes through the tunnel with the same trust as a direct connection.
        requestTls: connectOptions(),
        // http targets as absolute-URI requests, https ones through CONNECT, as Go's net/http does:
        // proxies commonly refuse CONNECT to ports other than 443.
        proxyTunnel: false,
        ...(opts.insecure ? { proxyTls: { rejectUnauthorized: false } } : {}),
      })
      proxied.set(proxy.href, agent)
    }
    return agent
  }
  const all = () => [...(direct ? [direct] : []), ...proxied.values()]
  class Routing extends u.Dispatcher {
    override dispatch(o: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandlers): boolean {
      return pick(o.origin).dispatch(o, handler)
    }
    override close(): Promise<void>
    override close(callback: () => void): void
    override close(callback?: () => void): Promise<void> | void {
      const p = Promise.all(all().map((d) => d.close())).then(() => {})
      if (!callback) return p
      p.then(callback, callback)
    }
    override destroy(): Promise<void>
    override destroy(err: Error | null): Promise<void>
    override destroy(callback: () => void): void
    override destroy(err: Error | null, callback: () => void): void
    override destroy(a?: unknown, b?: unknown): Promise<void> | void {
      const err = a instanceof Error ? a : null
      const callback = typeof a === 'function' ? a : typeof b === 'function' ? b : undefined
      const p = Promise.all(all().map((d) => d.destroy(err))).then(() => {})
      if (!callback) return p
      p.then(callback as () => void, callback as () => void)
    }
  }
  return new Routing()
}

let shared: NetDispatcher | undefined

/** The process's settings for plain http(s) downloads (imports, tar bases): the environment's
 *  proxies and trust, read on first use. */
export function sharedDispatcher(): NetDispatcher {
  shared ??= new NetDispatcher()
  return shared
}

/** undici's fetch through sharedDispatcher(). */
export function netFetch(url: string | URL, init: RequestInit = {}): Promise<Response> {
  return sharedDispatcher().fetch(url, init)
}
