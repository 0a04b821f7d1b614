// Extra CA certificates (NODE_EXTRA_CA_CERTS) with the stacker executable run directly, as users run
// it: its sh part hands the file to the CLI instead of node (which would parse it at every start), and
// every TLS connection the CLI makes must still trust it: the registry client (node:https) and fetch
// (https imports, a stacker.yaml given by URL). A CA made here signs the certificate of a TLS
// docker-registry and of a node https server on 127.0.0.1.
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execa } from 'execa'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  expectOk,
  fixtures,
  indexTags,
  type Registry,
  readIndex,
  type StackerResult,
  seedRegistry,
  startRegistry,
  stacker,
  type TempProject,
  tempProject,
  umociUnpack,
} from './helpers/index.js'

let certs: string
let caPem: string
let registry: Registry
let server: https.Server
let serverUrl: string
const projects: TempProject[] = []

async function openssl(args: string[]): Promise<void> {
  const r = await execa('openssl', args, { cwd: certs, reject: false, all: true })
  if (r.exitCode !== 0) throw new Error(`openssl ${args.join(' ')} failed:\n${r.all}`)
}

beforeAll(async () => {
  certs = await mkdtemp(join(tmpdir(), 'stacker-e2e-ca-'))
  const subj = (cn: string) => ['-subj', `/CN=${cn}`]
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
    ...subj('stacker e2e CA'),
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
    ...subj('127.0.0.1'),
  ])
  await execa('sh', ['-c', 'printf "subjectAltName=IP:127.0.0.1\\n" > server.ext'], { cwd: certs })
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
  caPem = join(certs, 'ca.pem')
  const tls = { cert: join(certs, 'server.pem'), key: join(certs, 'server.key') }

  registry = await startRegistry({ tls })
  await seedRegistry(fixtures().busyboxLayout, 'latest', registry.host, 'busybox')

  const files: Record<string, string> = {
    '/hello.txt': 'hello over tls\n',
    '/stacker.yaml': `byurl:\n  from:\n    type: oci\n    url: ${fixtures().BUSYBOX_OCI}\n  run: echo by-url > /by-url\n`,
  }
  server = https.createServer({ cert: await readFile(tls.cert), key: await readFile(tls.key) }, (req, res) => {
    const body = files[req.url ?? '']
    if (body === undefined) {
      res.writeHead(404).end()
      return
    }
    res.writeHead(200, { 'content-length': Buffer.byteLength(body) })
    res.end(req.method === 'HEAD' ? undefined : body)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  serverUrl = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
}, 120_000)

afterAll(async () => {
  await registry?.stop()
  if (server) {
    server.closeAllConnections()
    await new Promise((r) => server.close(r))
  }
  if (certs) await rm(certs, { recursive: true, force: true })
})

afterEach(async () => {
  for (const p of projects.splice(0)) await p.cleanup()
})

async function project(files: Record<string, string>): Promise<TempProject> {
  const p = await tempProject(files)
  projects.push(p)
  return p
}

/** No auth file of this machine is read; NODE_EXTRA_CA_CERTS is the given file, or unset. */
function env(home: string, ca: string | undefined): Record<string, string | undefined> {
  return { HOME: home, REGISTRY_AUTH_FILE: '', XDG_RUNTIME_DIR: '', XDG_CONFIG_HOME: '', NODE_EXTRA_CA_CERTS: ca }
}

const fromRegistry = () =>
  `img:\n  from:\n    type: docker\n    url: docker://${registry.host}/busybox:latest\n  run: echo pulled > /pulled\n`

function errorLines(r: StackerResult): string[] {
  return r.stderr.split('\n').filter((l) => l.startsWith('error:'))
}

describe('NODE_EXTRA_CA_CERTS with the stacker executable', () => {
  it('makes a TLS registry with a certificate from that CA usable as a base, without --skip-tls', async () => {
    const p = await project({ 'stacker.yaml': fromRegistry() })
    const r = expectOk(await stacker(['build'], { cwd: p.dir, env: env(p.dir, caPem), direct: true }))
    expect(r.stderr).not.toContain('Warning')
    expect(await indexTags(p.path('oci'))).toEqual(['img'])
    const root = await umociUnpack(p.path('oci'), 'img', p.path('check'))
    expect(await readFile(join(root, 'pulled'), 'utf8')).toBe('pulled\n')
  })

  it('without it, the pull fails with one line naming the certificate problem', async () => {
    const p = await project({ 'stacker.yaml': fromRegistry() })
    const r = await stacker(['build'], { cwd: p.dir, env: env(p.dir, undefined), direct: true })
    expect(r.exitCode).not.toBe(0)
    const errors = errorLines(r)
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatch(/certificate/i)
    expect(errors[0]).toContain(registry.host)
  })

  it('makes an https import and a stacker.yaml given by https URL work', async () => {
    const p = await project({
      'stacker.yaml': `img:\n  from:\n    type: oci\n    url: ${fixtures().BUSYBOX_OCI}\n  imports:\n    - ${serverUrl}/hello.txt\n  run: cp /stacker/imports/hello.txt /hello.txt\n`,
    })
    expectOk(await stacker(['build'], { cwd: p.dir, env: env(p.dir, caPem), direct: true }))
    const root = await umociUnpack(p.path('oci'), 'img', p.path('check'))
    expect(await readFile(join(root, 'hello.txt'), 'utf8')).toBe('hello over tls\n')

    const q = await project({})
    expectOk(
      await stacker(['build', '-f', `${serverUrl}/stacker.yaml`], { cwd: q.dir, env: env(q.dir, caPem), direct: true }),
    )
    expect((await readIndex(q.path('oci'))).manifests).toHaveLength(1)

    // The import is fetched again on a fresh build, and fails without the CA.
    const bad = await project({ 'stacker.yaml': await readFile(p.path('stacker.yaml'), 'utf8') })
    const r = await stacker(['build'], { cwd: bad.dir, env: env(bad.dir, undefined), direct: true })
    expect(r.exitCode).not.toBe(0)
    expect(errorLines(r)).toHaveLength(1)
  })

  it('reads the file only for a TLS connection, and warns as node does when it cannot', async () => {
    const missing = join(certs, 'missing.pem')
    // node itself would warn at start-up, before any command runs.
    const version = expectOk(await stacker(['--version'], { env: { NODE_EXTRA_CA_CERTS: missing }, direct: true }))
    expect(version.stderr).toBe('')
    const p = await project({ 'stacker.yaml': fromRegistry() })
    const r = await stacker(['build'], { cwd: p.dir, env: env(p.dir, missing), direct: true })
    expect(r.exitCode).not.toBe(0)
    const warnings = r.stderr.split('\n').filter((l) => l.startsWith('Warning:'))
    expect(warnings).toEqual([
      expect.stringMatching(/^Warning: Ignoring extra certs from `.*missing\.pem`, load failed: /),
    ])
    expect(errorLines(r)[0]).toMatch(/certificate/i)
  })
})
