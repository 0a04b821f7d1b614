import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { gunzipSync } from 'node:zlib'
import { type Digest, onCleanup, sha256Digest } from '@stacker/core'
import { type Descriptor, MediaTypes, newImageConfig, type OciLayout } from '@stacker/oci'

const exec = promisify(execFile)

/** Runs a tool; rejects with its stderr. */
export async function run(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await exec(cmd, args, { maxBuffer: 64 << 20 })
    return stdout
  } catch (e) {
    const err = e as { stderr?: string; message: string }
    throw new Error(`${cmd} ${args.join(' ')}: ${err.stderr || err.message}`)
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port
      srv.close(() => resolve(port))
    })
  })
}

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix))
}

export interface TestRegistry {
  host: string
  stop(): Promise<void>
}

/** Debian's docker-registry on a free loopback port, storage in a temp dir; `htpasswd` turns on
 *  basic auth. Resolves once it answers. */
export async function startRegistry(opts: { htpasswd?: string; tls?: boolean } = {}): Promise<TestRegistry> {
  const dir = await tempDir('stacker-registry-')
  const port = await freePort()
  const auth = opts.htpasswd ? `auth:\n  htpasswd:\n    realm: test-realm\n    path: ${join(dir, 'htpasswd')}\n` : ''
  if (opts.htpasswd) await writeFile(join(dir, 'htpasswd'), `${opts.htpasswd}\n`)
  const tls = opts.tls ? `  tls:\n    certificate: ${join(dir, 'cert.pem')}\n    key: ${join(dir, 'key.pem')}\n` : ''
  if (opts.tls) {
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-keyout',
      join(dir, 'key.pem'),
      '-out',
      join(dir, 'cert.pem'),
    ])
  }
  await writeFile(
    join(dir, 'config.yml'),
    `version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${join(dir, 'data')}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${port}
${tls}${auth}`,
  )
  const child: ChildProcess = spawn('/usr/bin/docker-registry', ['serve', join(dir, 'config.yml')], {
    stdio: 'ignore',
  })
  const exited = new Promise<void>((r) => child.once('exit', () => r()))
  const stop = async () => {
    unregister()
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    await exited
    await rm(dir, { recursive: true, force: true })
  }
  const unregister = onCleanup(stop)
  const host = `127.0.0.1:${port}`
  for (let i = 0; ; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const get = opts.tls ? https.get : http.get
      const req = get(`${opts.tls ? 'https' : 'http'}://${host}/v2/`, { rejectUnauthorized: false }, (res) => {
        res.resume()
        resolve(true)
      })
      req.on('error', () => resolve(false))
    })
    if (ok) break
    if (i > 100 || child.exitCode !== null) {
      await stop()
      throw new Error('docker-registry did not start')
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  return { host, stop }
}

export interface ProxyRequest {
  method: string
  path: string
  status: number
}

/** An HTTP proxy in front of a registry that records requests and can misbehave on demand. */
export interface TestProxy {
  host: string
  requests: ProxyRequest[]
  /** GETs of this blob get one byte flipped. */
  corrupt: Digest | undefined
  /** The next this-many requests get a 503 without reaching the registry. */
  fail503: number
  /** Requires bearer tokens from the proxy's own /token service, which wants these credentials. */
  bearer: { username: string; password: string } | undefined
  /** The scopes asked of /token, one string per token request. */
  tokenScopes: string[]
  blobGets(): string[]
  close(): Promise<void>
}

export async function startProxy(upstream: string): Promise<TestProxy> {
  const [uhost, uport] = upstream.split(':')
  const state: TestProxy = {
    host: '',
    requests: [],
    corrupt: undefined,
    fail503: 0,
    bearer: undefined,
    tokenScopes: [],
    blobGets: () =>
      state.requests.filter((r) => r.method === 'GET' && /\/blobs\/sha256:/.test(r.path)).map((r) => r.path),
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((r) => server.close(() => r()))
    },
  }
  const server = http.createServer((req, res) => {
    const entry = { method: req.method ?? '', path: req.url ?? '', status: 0 }
    state.requests.push(entry)
    if (state.fail503 > 0) {
      state.fail503--
      entry.status = 503
      req.resume()
      res.writeHead(503, { 'Content-Type': 'text/plain' })
      res.end('try later')
      return
    }
    if (state.bearer && !bearerOk(state, req, res, entry)) return
    const up = http.request(
      { host: uhost, port: Number(uport), method: req.method, path: req.url, headers: req.headers },
      (ures) => {
        entry.status = ures.statusCode ?? 0
        res.writeHead(ures.statusCode ?? 502, ures.headers)
        const flip = state.corrupt && req.method === 'GET' && req.url?.endsWith(`/blobs/${state.corrupt}`)
        let first = true
        ures.on('data', (chunk: Buffer) => {
          if (flip && first && chunk.length > 0) {
            chunk = Buffer.from(chunk)
            chunk[0] = (chunk[0] ?? 0) ^ 0xff
          }
          first = false
          res.write(chunk)
        })
        ures.on('end', () => res.end())
      },
    )
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  state.host = `127.0.0.1:${(server.address() as net.AddressInfo).port}`
  return state
}

/** Builds an image in `layout` from files (one layer each entry of `layers`) and tags it. */
export async function buildImage(
  layout: OciLayout,
  tag: string,
  layers: Record<string, Buffer | string>[],
  opts: { architecture?: string; gzip?: boolean } = {},
): Promise<Descriptor> {
  const descs: Descriptor[] = []
  const diffIds: Digest[] = []
  for (const files of layers) {
    const dir = await tempDir('stacker-layer-')
    try {
      await mkdir(join(dir, 'root'))
      for (const [name, content] of Object.entries(files)) await writeFile(join(dir, 'root', name), content)
      const gzip = opts.gzip ?? true
      const out = join(dir, gzip ? 'layer.tar.gz' : 'layer.tar')
      await run('tar', [
        gzip ? '-czf' : '-cf',
        out,
        '--numeric-owner',
        '--owner=0',
        '--group=0',
        '-C',
        join(dir, 'root'),
        '.',
      ])
      const info = await layout.putBlobFromFile(out)
      const raw = await readFile(out)
      diffIds.push(sha256Digest(gzip ? gunzipSync(raw) : raw))
      descs.push({
        mediaType: gzip ? MediaTypes.layerTarGzip : MediaTypes.layerTar,
        digest: info.digest,
        size: info.size,
      })
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }
  const config = newImageConfig({ architecture: opts.architecture ?? 'amd64', os: 'linux' })
  config.rootfs = { type: 'layers', diff_ids: diffIds }
  const desc = await layout.writeImage({ config, layers: descs })
  await layout.setTag(tag, desc)
  return desc
}

/** The digest of what `skopeo inspect --raw` returns. */
export async function skopeoRawDigest(url: string, creds?: string): Promise<Digest> {
  const args = ['inspect', '--raw', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), url]
  const raw = await run('skopeo', args)
  return `sha256:${createHash('sha256').update(raw).digest('hex')}`
}

export async function listBlobs(dir: string): Promise<string[]> {
  try {
    return (await readdir(join(dir, 'blobs', 'sha256'))).sort()
  } catch {
    return []
  }
}

export async function listTemp(dir: string): Promise<string[]> {
  try {
    return await readdir(join(dir, '.tmp'))
  } catch {
    return []
  }
}

/** A toy token service: the token is the granted scopes, and a request needs a token whose scope
 *  names its repository with push for anything that writes. */
function bearerOk(state: TestProxy, req: http.IncomingMessage, res: http.ServerResponse, entry: ProxyRequest): boolean {
  const url = new URL(req.url ?? '/', 'http://x')
  const creds = state.bearer!
  if (url.pathname === '/token') {
    req.resume()
    const scopes = url.searchParams.getAll('scope')
    state.tokenScopes.push(scopes.join(' '))
    const expected = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`
    entry.status = req.headers.authorization === expected ? 200 : 401
    res.writeHead(entry.status, { 'Content-Type': 'application/json' })
    res.end(
      entry.status === 200
        ? JSON.stringify({ token: Buffer.from(JSON.stringify(scopes)).toString('base64url') })
        : '{}',
    )
    return false
  }
  const repo = /^\/v2\/(.+?)\/(manifests|blobs|tags)\//.exec(url.pathname)?.[1]
  if (!repo) return true
  const action = req.method === 'GET' || req.method === 'HEAD' ? 'pull' : 'push'
  let granted: string[] = []
  const auth = req.headers.authorization ?? ''
  if (auth.startsWith('Bearer ')) {
    try {
      granted = JSON.parse(Buffer.from(auth.slice(7), 'base64url').toString('utf8')) as string[]
    } catch {}
  }
  const ok = granted.some((s) => s.startsWith(`repository:${repo}:`) && s.split(':')[2]?.split(',').includes(action))
  if (ok) return true
  req.resume()
  entry.status = 401
  res.writeHead(401, {
    'Content-Type': 'application/json',
    'WWW-Authenticate': `Bearer realm="http://${state.host}/token",service="test",scope="repository:${repo}:${action}"`,
  })
  res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
  return false
}
