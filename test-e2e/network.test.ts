// The network features of CI machines: HTTP(S)_PROXY and NO_PROXY (either case) for registry
// traffic and http imports, the system CA store (SSL_CERT_FILE) and containers' certs.d, credential
// helpers (credHelpers, credsStore) in auth.json, registries.conf mirrors and `insecure`, auth.json
// credentials and X-Checksum-Sha256 for http imports. The proxy is a CONNECT tunnel written here that
// resolves `*.example.invalid` names (which nothing else can) to local servers, so a build that
// reaches one went through it.
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  expectOk,
  fixtures,
  projectsPerTest,
  type Registry,
  type StackerResult,
  seedRegistry,
  startRegistry,
  stacker,
  TEST_USER,
  umociUnpack,
} from './helpers/index.js'

const project = projectsPerTest()

interface TunnelProxy {
  url: string
  /** `host:port` of every CONNECT and every forwarded request, in order. */
  connects: string[]
  close(): Promise<void>
}

const resolveInvalid = (host: string) => (host.endsWith('.example.invalid') ? '127.0.0.1' : host)

/** A proxy: CONNECT tunnels (https) and absolute-URI requests (http), with `NAME.example.invalid`
 *  resolved to 127.0.0.1. */
async function startTunnelProxy(): Promise<TunnelProxy> {
  const connects: string[] = []
  const sockets = new Set<net.Socket>()
  const server = http.createServer((req, res) => {
    let target: URL
    try {
      target = new URL(req.url ?? '')
    } catch {
      res.writeHead(400).end()
      return
    }
    connects.push(target.host)
    const headers = { ...req.headers }
    delete headers['proxy-connection']
    const up = http.request(
      {
        host: resolveInvalid(target.hostname),
        port: Number(target.port) || 80,
        method: req.method,
        path: `${target.pathname}${target.search}`,
        headers,
      },
      (ures) => {
        res.writeHead(ures.statusCode ?? 502, ures.headers)
        ures.pipe(res)
      },
    )
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    const target = req.url ?? ''
    connects.push(target)
    const [host, port] = target.split(':')
    const upstream = net.connect(Number(port), resolveInvalid(host ?? ''))
    sockets.add(client)
    sockets.add(upstream)
    upstream.on('connect', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      if (head.length) upstream.write(head)
      upstream.pipe(client)
      client.pipe(upstream)
    })
    const end = () => {
      client.destroy()
      upstream.destroy()
    }
    upstream.on('error', end)
    client.on('error', end)
    upstream.on('close', end)
    client.on('close', end)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connects,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy()
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

interface FileServer {
  port: number
  url: string
  requests: Array<{ path: string; authorization: string | undefined }>
  close(): Promise<void>
}

/** Serves fixed files over http; `auth` protects paths under a prefix; `checksum` sends that
 *  X-Checksum-Sha256 for every file. */
async function startFileServer(
  files: Record<string, string>,
  opts: { auth?: { prefix: string; user: string; password: string }; checksum?: string } = {},
): Promise<FileServer> {
  const requests: FileServer['requests'] = []
  const server = http.createServer((req, res) => {
    const path = req.url ?? ''
    requests.push({ path, authorization: req.headers.authorization })
    if (opts.auth && path.startsWith(opts.auth.prefix)) {
      const want = `Basic ${Buffer.from(`${opts.auth.user}:${opts.auth.password}`).toString('base64')}`
      if (req.headers.authorization !== want) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="e2e"' }).end()
        return
      }
    }
    const body = files[path]
    if (body === undefined) {
      res.writeHead(404).end()
      return
    }
    res.writeHead(200, {
      'content-length': Buffer.byteLength(body),
      ...(opts.checksum ? { 'x-checksum-sha256': opts.checksum } : {}),
    })
    res.end(req.method === 'HEAD' ? undefined : body)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as AddressInfo).port
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

/** No auth file, registries.conf or proxy of this machine is read; HOME is the project. */
function cleanEnv(home: string, extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    HOME: home,
    REGISTRY_AUTH_FILE: '',
    XDG_RUNTIME_DIR: '',
    XDG_CONFIG_HOME: '',
    CONTAINERS_REGISTRIES_CONF: join(home, 'no-registries.conf'),
    HTTP_PROXY: undefined,
    HTTPS_PROXY: undefined,
    NO_PROXY: undefined,
    http_proxy: undefined,
    https_proxy: undefined,
    no_proxy: undefined,
    ...extra,
  }
}

const BB = () => fixtures().BUSYBOX_OCI

function dockerBase(name: string, url: string, run: string, insecure = false): string {
  return `${name}:\n  from:\n    type: docker\n    url: ${url}\n${insecure ? '    insecure: true\n' : ''}  run: ${run}\n`
}

function errorLines(r: StackerResult): string[] {
  return r.stderr.split('\n').filter((l) => l.startsWith('error:'))
}

async function readRoot(p: { path(rel: string): string }, tag: string, file: string): Promise<string> {
  const root = await umociUnpack(p.path('oci'), tag, p.path(`check-${tag}`))
  return readFile(join(root, file), 'utf8')
}

/** Every file under `dir` whose bytes contain `needle` (relative paths). */
async function filesContaining(dir: string, needle: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (d: string, rel: string) => {
    let entries: import('node:fs').Dirent[]
    try {
      entries = await readdir(d, { withFileTypes: true })
    } catch {
      return
    }
    for (const e of entries) {
      const abs = join(d, e.name)
      const r = rel ? `${rel}/${e.name}` : e.name
      if (e.isDirectory()) await walk(abs, r)
      else if (e.isFile() && (await readFile(abs)).includes(needle)) out.push(r)
    }
  }
  await walk(dir, '')
  return out
}

let plain: Registry
let authed: Registry

beforeAll(async () => {
  plain = await startRegistry()
  authed = await startRegistry({ htpasswd: TEST_USER.htpasswd })
  await seedRegistry(fixtures().busyboxLayout, 'latest', plain.host, 'busybox')
  await seedRegistry(fixtures().busyboxLayout, 'latest', authed.host, 'busybox', {
    creds: { user: TEST_USER.user, password: TEST_USER.password },
  })
}, 120_000)

afterAll(async () => {
  await plain?.stop()
  await authed?.stop()
})

describe('proxies', () => {
  let proxy: TunnelProxy
  let files: FileServer
  beforeAll(async () => {
    proxy = await startTunnelProxy()
    files = await startFileServer({ '/hello.txt': 'hello through the proxy\n' })
  })
  afterAll(async () => {
    await proxy?.close()
    await files?.close()
  })

  it('sends registry traffic (HTTPS_PROXY, HTTP_PROXY) and http imports (http_proxy) through the proxy', async () => {
    const port = plain.host.split(':')[1]
    const regName = `registry.example.invalid:${port}`
    const fileName = `files.example.invalid:${files.port}`
    const p = await project({
      'stacker.yaml': `img:\n  from:\n    type: docker\n    url: docker://${regName}/busybox:latest\n    insecure: true\n  imports:\n    - http://${fileName}/hello.txt\n  run: cp /stacker/imports/hello.txt /hello\n`,
    })
    proxy.connects.length = 0
    const r = await stacker(['build'], {
      cwd: p.dir,
      env: cleanEnv(p.dir, { HTTPS_PROXY: proxy.url, HTTP_PROXY: undefined, http_proxy: proxy.url }),
    })
    expectOk(r)
    expect(await readRoot(p, 'img', 'hello')).toBe('hello through the proxy\n')
    // https was tried first (a CONNECT tunnel), then plain http (absolute-URI requests), as for any
    // insecure registry; the http import as absolute-URI requests.
    expect(new Set(proxy.connects)).toEqual(new Set([regName, fileName]))
    expect(files.requests.some((q) => q.path === '/hello.txt')).toBe(true)
  })

  it('connects directly to NO_PROXY hosts (either case) and to loopback, whatever the proxy settings', async () => {
    const port = plain.host.split(':')[1]
    const p = await project({
      'stacker.yaml': dockerBase('img', `docker://registry.example.invalid:${port}/busybox:latest`, 'echo x', true),
    })
    for (const noProxy of [{ NO_PROXY: '.example.invalid' }, { no_proxy: 'registry.example.invalid' }]) {
      proxy.connects.length = 0
      const r = await stacker(['build'], {
        cwd: p.dir,
        env: cleanEnv(p.dir, { HTTPS_PROXY: proxy.url, HTTP_PROXY: proxy.url, ...noProxy }),
      })
      // Direct, the name resolves nowhere.
      expect(r.exitCode).toBe(1)
      expect(errorLines(r)).toEqual([expect.stringContaining('unknown host registry.example.invalid')])
      expect(proxy.connects).toEqual([])
    }
    // Loopback is never proxied (as Go's net/http does it): the registry answers directly.
    const q = await project({
      'stacker.yaml': dockerBase('img', `docker://${plain.host}/busybox:latest`, 'echo direct > /d', true),
    })
    proxy.connects.length = 0
    expectOk(
      await stacker(['build'], { cwd: q.dir, env: cleanEnv(q.dir, { HTTPS_PROXY: proxy.url, HTTP_PROXY: proxy.url }) }),
    )
    expect(proxy.connects).toEqual([])
    expect(await readRoot(q, 'img', 'd')).toBe('direct\n')
  })

  it('names the proxy (without its credentials) when it cannot be reached', async () => {
    const p = await project({
      'stacker.yaml': dockerBase('img', 'docker://registry.example.invalid:5000/busybox:latest', 'echo x'),
    })
    const closed = await startTunnelProxy()
    const dead = new URL(closed.url)
    await closed.close()
    const r = await stacker(['build'], {
      cwd: p.dir,
      env: cleanEnv(p.dir, { HTTPS_PROXY: `http://puser:ppass-secret@${dead.host}` }),
    })
    expect(r.exitCode).toBe(1)
    expect(errorLines(r)).toEqual([expect.stringContaining(`proxy http://${dead.host}: connection refused`)])
    expect(r.stderr + r.stdout).not.toContain('ppass-secret')
  })
})

describe('trust', () => {
  let certs: string
  let tlsRegistry: Registry
  beforeAll(async () => {
    certs = await mkdtemp(join(tmpdir(), 'stacker-e2e-net-ca-'))
    const openssl = async (args: string[]) => {
      const r = await execa('openssl', args, { cwd: certs, reject: false, all: true })
      if (r.exitCode !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.all}`)
    }
    await openssl([
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      'ca.key',
      '-out',
      'ca.pem',
      '-days',
      '2',
      '-subj',
      '/CN=net e2e CA',
    ])
    await openssl([
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      'server.key',
      '-out',
      'server.csr',
      '-subj',
      '/CN=127.0.0.1',
    ])
    await writeFile(join(certs, 'server.ext'), 'subjectAltName=IP:127.0.0.1\n')
    await openssl([
      'x509',
      '-req',
      '-in',
      'server.csr',
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      'server.pem',
      '-days',
      '2',
      '-extfile',
      'server.ext',
    ])
    tlsRegistry = await startRegistry({ tls: { cert: join(certs, 'server.pem'), key: join(certs, 'server.key') } })
    await seedRegistry(fixtures().busyboxLayout, 'latest', tlsRegistry.host, 'busybox')
  }, 120_000)
  afterAll(async () => {
    await tlsRegistry?.stop()
    if (certs) await rm(certs, { recursive: true, force: true })
  })

  it('trusts SSL_CERT_FILE in addition to the bundled roots, and certs.d/HOST/*.crt for that registry only', async () => {
    const yaml = dockerBase('img', `docker://${tlsRegistry.host}/busybox:latest`, 'echo tls > /t')
    const p = await project({ 'stacker.yaml': yaml })
    const untrusted = await stacker(['build'], { cwd: p.dir, env: cleanEnv(p.dir) })
    expect(untrusted.exitCode).toBe(1)
    expect(errorLines(untrusted)).toEqual([expect.stringMatching(/certificate/i)])

    expectOk(await stacker(['build'], { cwd: p.dir, env: cleanEnv(p.dir, { SSL_CERT_FILE: join(certs, 'ca.pem') }) }))
    expect(await readRoot(p, 'img', 't')).toBe('tls\n')

    const q = await project({ 'stacker.yaml': yaml })
    const hostDir = join(q.dir, '.config', 'containers', 'certs.d', tlsRegistry.host)
    await mkdir(hostDir, { recursive: true })
    await writeFile(join(hostDir, 'ca.crt'), await readFile(join(certs, 'ca.pem')))
    expectOk(await stacker(['build'], { cwd: q.dir, env: cleanEnv(q.dir) }))
    expect(await readRoot(q, 'img', 't')).toBe('tls\n')
  })
})

describe('credentials', () => {
  it('asks credHelpers, then credsStore (docker-credential-NAME get), and never shows what they answer', async () => {
    const p = await project({
      'stacker.yaml': dockerBase('img', `docker://${authed.host}/busybox:latest`, 'echo authed > /a', true),
    })
    const bin = p.path('bin')
    await mkdir(bin, { recursive: true })
    const helper = (name: string) =>
      writeFile(
        join(bin, `docker-credential-${name}`),
        `#!/bin/sh\nread server\necho "$1 $server" >> ${p.path(`${name}.calls`)}\nprintf '{"ServerURL":"%s","Username":"${TEST_USER.user}","Secret":"${TEST_USER.password}"}' "$server"\n`,
        { mode: 0o755 },
      )
    await helper('e2ehelper')
    await helper('e2estore')
    await writeFile(
      join(bin, 'docker-credential-nothing'),
      `#!/bin/sh\necho "credentials not found in native keychain"\nexit 1\n`,
      { mode: 0o755 },
    )
    const path = `${bin}:${process.env.PATH}`
    const run = async (auth: unknown) => {
      await writeFile(p.path('auth.json'), JSON.stringify(auth))
      return stacker(['build', '--no-cache'], {
        cwd: p.dir,
        env: cleanEnv(p.dir, { PATH: path, REGISTRY_AUTH_FILE: p.path('auth.json') }),
      })
    }
    const good = Buffer.from(`${TEST_USER.user}:${TEST_USER.password}`).toString('base64')
    const bad = Buffer.from(`${TEST_USER.user}:wrong`).toString('base64')

    // credHelpers names the helper for this registry; it wins over a wrong auths entry.
    const r1 = expectOk(
      await run({ credHelpers: { [authed.host]: 'e2ehelper' }, auths: { [authed.host]: { auth: bad } } }),
    )
    expect(await readFile(p.path('e2ehelper.calls'), 'utf8')).toContain(`get ${authed.host}`)
    expect(await readRoot(p, 'img', 'a')).toBe('authed\n')

    // credsStore serves every registry without a credHelpers entry.
    const r2 = expectOk(await run({ credsStore: 'e2estore', auths: { [authed.host]: {} } }))
    expect(await readFile(p.path('e2estore.calls'), 'utf8')).toContain(`get ${authed.host}`)

    // A helper without credentials for the registry: the auths entry is used.
    const r3 = expectOk(await run({ credsStore: 'nothing', auths: { [authed.host]: { auth: good } } }))

    // A helper that is not installed: one line naming it.
    const r4 = await run({ credHelpers: { [authed.host]: 'absent' } })
    expect(r4.exitCode).toBe(1)
    expect(errorLines(r4)).toEqual([expect.stringContaining('credential helper docker-credential-absent not found')])

    for (const r of [r1, r2, r3, r4]) {
      expect(r.stdout + r.stderr).not.toContain(TEST_USER.password)
      expect(r.stdout + r.stderr).not.toContain(good)
    }
    // Nor in anything the builds wrote (cache records, layouts, roots' records).
    for (const dir of ['.stacker', 'oci']) {
      expect(await filesContaining(p.path(dir), TEST_USER.password)).toEqual([])
      expect(await filesContaining(p.path(dir), good)).toEqual([])
    }
  })

  it('sends auth.json credentials with http imports (longest prefix) and checks X-Checksum-Sha256 against hash', async () => {
    const body = 'secret payload\n'
    const sum = (await import('node:crypto')).createHash('sha256').update(body).digest('hex')
    const server = await startFileServer(
      { '/team/private/file.txt': body },
      { auth: { prefix: '/team', user: TEST_USER.user, password: TEST_USER.password } },
    )
    const wrongSum = await startFileServer({ '/f.txt': body }, { checksum: 'ab'.repeat(32) })
    try {
      const good = Buffer.from(`${TEST_USER.user}:${TEST_USER.password}`).toString('base64')
      const bad = Buffer.from(`${TEST_USER.user}:nope`).toString('base64')
      const p = await project({
        'stacker.yaml': `img:\n  from:\n    type: oci\n    url: ${BB()}\n  imports:\n    - path: ${server.url}/team/private/file.txt\n      hash: ${sum}\n  run: cp /stacker/imports/file.txt /f\n`,
        'auth.json': JSON.stringify({
          auths: { [`127.0.0.1:${server.port}`]: { auth: bad }, [`127.0.0.1:${server.port}/team`]: { auth: good } },
        }),
      })
      const r = expectOk(
        await stacker(['build'], { cwd: p.dir, env: cleanEnv(p.dir, { REGISTRY_AUTH_FILE: p.path('auth.json') }) }),
      )
      expect(await readRoot(p, 'img', 'f')).toBe(body)
      expect(server.requests.at(-1)?.authorization).toBe(`Basic ${good}`)
      expect(r.stdout + r.stderr).not.toContain(TEST_USER.password)

      const q = await project({
        'stacker.yaml': `img:\n  from:\n    type: oci\n    url: ${BB()}\n  imports:\n    - path: ${wrongSum.url}/f.txt\n      hash: ${sum}\n  run: echo x\n`,
      })
      const w = await stacker(['build'], { cwd: q.dir, env: cleanEnv(q.dir) })
      expect(w.exitCode).toBe(1)
      expect(errorLines(w)).toEqual([
        expect.stringContaining(
          `The requested hash of ${wrongSum.url}/f.txt import is different than the actual hash: ${sum} != ${'ab'.repeat(32)}`,
        ),
      ])
    } finally {
      await server.close()
      await wrongSum.close()
    }
  })
})

describe('registries.conf', () => {
  it('pulls through a mirror first, and makes a registry marked insecure usable over plain http', async () => {
    const p = await project({
      'stacker.yaml': dockerBase(
        'img',
        'docker://primary.example.invalid/library/busybox:latest',
        'echo mirrored > /m',
      ),
      'registries.conf': `[[registry]]\nlocation = "primary.example.invalid/library"\n\n[[registry.mirror]]\nlocation = "${plain.host}"\ninsecure = true\n`,
    })
    const r = expectOk(
      await stacker(['build'], {
        cwd: p.dir,
        env: cleanEnv(p.dir, { CONTAINERS_REGISTRIES_CONF: p.path('registries.conf') }),
      }),
    )
    expect(r.stderr).not.toContain('error')
    expect(await readRoot(p, 'img', 'm')).toBe('mirrored\n')

    // Without `insecure`, a plain-http registry fails TLS; with it, it works.
    const q = await project({
      'stacker.yaml': dockerBase('img', `docker://${plain.host}/busybox:latest`, 'echo plain > /p'),
    })
    const strict = await stacker(['build'], { cwd: q.dir, env: cleanEnv(q.dir) })
    expect(strict.exitCode).toBe(1)
    expect(errorLines(strict)).toHaveLength(1)
    await writeFile(q.path('registries.conf'), `[[registry]]\nlocation = "${plain.host}"\ninsecure = true\n`)
    expectOk(
      await stacker(['build'], {
        cwd: q.dir,
        env: cleanEnv(q.dir, { CONTAINERS_REGISTRIES_CONF: q.path('registries.conf') }),
      }),
    )
    expect(await readRoot(q, 'img', 'p')).toBe('plain\n')

    // A broken file is one line naming it.
    await writeFile(q.path('registries.conf'), '[[registry]\nlocation = \n')
    const broken = await stacker(['build', '--no-cache'], {
      cwd: q.dir,
      env: cleanEnv(q.dir, { CONTAINERS_REGISTRIES_CONF: q.path('registries.conf') }),
    })
    expect(broken.exitCode).toBe(1)
    expect(errorLines(broken)).toEqual([
      expect.stringContaining(`invalid registries.conf ${q.path('registries.conf')}`),
    ])
  })
})
