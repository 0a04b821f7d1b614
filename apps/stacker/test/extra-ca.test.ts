// bin/stacker run as an executable moves NODE_EXTRA_CA_CERTS out of node's way (node would parse the
// file before any script runs) and trusts the file itself, for every TLS client connection. Two copies
// of bin/stacker run a probe instead of the CLI: one as the compiled files (dist/main.js, an ES module
// that imports node:https up front), one as a current bundle (dist/bundle/stacker.cjs, which requires
// built-ins on first use). The probe connects to an https server whose certificate a CA made here signs.
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const APP = resolve(import.meta.dirname, '..')

// Modes, one per process so each starts with no TLS module loaded: `env` prints what a child process
// sees; `fetch` and `https` connect to the url first through that API.
const PROBE = `
async function probe([mode, url]) {
  const attempt = async (f) => { try { return await f() } catch (e) { return 'error: ' + (e.cause?.code ?? e.code ?? e.message) } }
  const get = (https, options) => new Promise((res, rej) => {
    https.get(url, options, (r) => { let s = ''; r.on('data', (d) => { s += d }); r.on('end', () => res(s)) }).on('error', rej)
  })
  const out = {}
  if (mode === 'env') {
    const { execFileSync } = require('node:child_process')
    out.child = execFileSync('sh', ['-c', 'echo "$NODE_EXTRA_CA_CERTS|\${STACKER_EXTRA_CA_CERTS-unset}"'], { encoding: 'utf8' }).trim()
  }
  if (mode === 'fetch') out.fetch = await attempt(async () => (await fetch(url)).text())
  if (mode === 'https') {
    const https = require('node:https')
    const tls = require('node:tls')
    out.https = await attempt(() => get(https, {}))
    out.again = await attempt(() => get(https, { agent: false }))
    // Options that shape the context itself: the extra certificates join through \`ca\`.
    out.ciphers = await attempt(() => get(https, { agent: false, ciphers: 'DEFAULT' }))
    // A caller's own \`ca\` is all it trusts.
    out.ownCa = await attempt(() => get(https, { agent: false, ca: tls.rootCertificates[0] }))
    const { port } = new URL(url)
    out.positional = await attempt(() => new Promise((res, rej) => {
      const s = tls.connect(Number(port), '127.0.0.1', () => { res(String(s.authorized)); s.destroy() })
      s.on('error', rej)
    }))
  }
  process.stdout.write(JSON.stringify(out))
}
`

let dir: string
let ca: string
let url: string
let server: https.Server
/** bin/stacker of each kind of app, and a symlink to the compiled one. */
const bins = { compiled: '', bundled: '', link: '' }

async function makeApp(name: string, bundled: boolean): Promise<string> {
  const app = join(dir, name)
  await mkdir(join(app, 'bin'), { recursive: true })
  await mkdir(join(app, 'dist', 'bundle'), { recursive: true })
  await copyFile(join(APP, 'bin', 'stacker'), join(app, 'bin', 'stacker'))
  await chmod(join(app, 'bin', 'stacker'), 0o755)
  await copyFile(join(APP, 'package.json'), join(app, 'package.json'))
  await copyFile(join(APP, 'dist', 'launcher.js'), join(app, 'dist', 'launcher.js'))
  if (bundled) {
    await writeFile(join(app, 'dist', 'bundle', 'stacker.cjs'), `${PROBE}\nexports.main = probe\n`)
    const st = await stat(join(app, 'package.json'))
    await writeFile(
      join(app, 'dist', 'bundle', 'inputs.json'),
      JSON.stringify([['package.json', st.size, Math.round(st.mtimeMs)]]),
    )
  } else {
    // As the compiled CLI: node:https is imported before main runs.
    const header = `import { createRequire } from 'node:module'\nimport 'node:https'\nconst require = createRequire(import.meta.url)\n`
    await writeFile(join(app, 'dist', 'main.js'), `${header}${PROBE}\nexport const main = probe\n`)
  }
  return join(app, 'bin', 'stacker')
}

async function openssl(args: string[]): Promise<void> {
  await execa('openssl', args, { cwd: dir })
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stacker-extra-ca-'))
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
    '/CN=test CA',
  ])
  await openssl([
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'srv.key',
    '-out',
    'srv.csr',
    '-subj',
    '/CN=127.0.0.1',
  ])
  await writeFile(join(dir, 'srv.ext'), 'subjectAltName=IP:127.0.0.1\n')
  await openssl([
    'x509',
    '-req',
    '-in',
    'srv.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'srv.pem',
    '-days',
    '2',
    '-extfile',
    'srv.ext',
  ])
  ca = join(dir, 'ca.pem')
  server = https.createServer(
    { cert: await readFile(join(dir, 'srv.pem')), key: await readFile(join(dir, 'srv.key')) },
    (_, res) => res.end('ok'),
  )
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/`
  bins.compiled = await makeApp('compiled', false)
  bins.bundled = await makeApp('bundled', true)
  bins.link = join(dir, 'elsewhere', 'stacker')
  await mkdir(join(dir, 'elsewhere'))
  await symlink(bins.compiled, bins.link)
}, 60_000)

afterAll(async () => {
  if (server) {
    server.closeAllConnections()
    await new Promise((r) => server.close(r))
  }
  await rm(dir, { recursive: true, force: true })
})

/** Runs the executable itself (sh first), NODE_EXTRA_CA_CERTS set to `extra` or unset. */
async function probe(bin: string, args: string[], extra: string | undefined, viaNode = false) {
  const env = { NODE_EXTRA_CA_CERTS: extra, STACKER_EXTRA_CA_CERTS: undefined }
  const r = await execa(viaNode ? process.execPath : bin, viaNode ? [bin, ...args] : args, { env, reject: false })
  if (r.exitCode !== 0) throw new Error(`${r.command} exited ${r.exitCode}: ${r.stderr}`)
  return { out: JSON.parse(r.stdout) as Record<string, string>, stderr: r.stderr }
}

describe('bin/stacker with NODE_EXTRA_CA_CERTS', () => {
  it('is a sh script that starts node, also through a symlink', async () => {
    expect((await readFile(bins.compiled, 'utf8')).split('\n')[0]).toBe('#!/bin/sh')
    const r = await execa(bins.link, ['--version'], { env: { NODE_EXTRA_CA_CERTS: ca } })
    expect(r.stdout).toMatch(/^stacker version \d/)
    const viaNode = await execa(process.execPath, [bins.link, '--version'])
    expect(viaNode.stdout).toBe(r.stdout)
  })

  it('gives child processes the variable as the user set it', async () => {
    for (const bin of [bins.compiled, bins.bundled, bins.link]) {
      expect((await probe(bin, ['env', url], ca)).out.child).toBe(`${ca}|unset`)
      expect((await probe(bin, ['env', url], undefined)).out.child).toBe('|unset')
    }
  })

  it('makes fetch and node:https trust the extra CA, on either kind of install', async () => {
    for (const bin of [bins.compiled, bins.bundled]) {
      const { out, stderr } = await probe(bin, ['https', url], ca)
      expect(out).toEqual({
        https: 'ok',
        again: 'ok',
        ciphers: 'ok',
        ownCa: expect.stringMatching(/^error: /),
        positional: 'true',
      })
      expect(stderr).toBe('')
      expect((await probe(bin, ['fetch', url], ca)).out).toEqual({ fetch: 'ok' })
      // Run by node itself, node loads the file.
      expect((await probe(bin, ['fetch', url], ca, true)).out).toEqual({ fetch: 'ok' })
    }
  })

  it('trusts only the default roots without it', async () => {
    for (const bin of [bins.compiled, bins.bundled]) {
      const { out } = await probe(bin, ['https', url], undefined)
      expect(out.https).toBe('error: UNABLE_TO_VERIFY_LEAF_SIGNATURE')
      expect(out.positional).toBe('error: UNABLE_TO_VERIFY_LEAF_SIGNATURE')
      expect((await probe(bin, ['fetch', url], undefined)).out.fetch).toBe('error: UNABLE_TO_VERIFY_LEAF_SIGNATURE')
    }
  })

  it('reads the file on the first TLS connection only, and warns once as node does when it cannot', async () => {
    const missing = join(dir, 'missing.pem')
    // node would warn at start-up, before any command runs.
    const version = await execa(bins.compiled, ['--version'], { env: { NODE_EXTRA_CA_CERTS: missing } })
    expect(version.stderr).toBe('')
    const env = await probe(bins.bundled, ['env', url], missing)
    expect(env.stderr).toBe('')
    for (const bin of [bins.compiled, bins.bundled]) {
      const { out, stderr } = await probe(bin, ['https', url], missing)
      expect(out.https).toBe('error: UNABLE_TO_VERIFY_LEAF_SIGNATURE')
      expect(stderr).toBe(
        `Warning: Ignoring extra certs from \`${missing}\`, load failed: ENOENT: no such file or directory, open '${missing}'`,
      )
    }
  })
})
