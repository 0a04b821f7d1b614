// Bases pulled from a registry (`from`, `--progress`): `type: docker` by tag
// and by digest, `type: oci` with a `docker://` URL, the manifest-digest cache (no blob fetched twice, a
// digest-pinned base contacts nothing, a stopped registry falls back to the cached base), auth.json
// lookup, one-line errors that leave the layouts untouched, and the progress display on and off a
// terminal. Debian's docker-registry runs on 127.0.0.1; a small proxy in this file counts requests,
// slows transfers down and corrupts a blob.
import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { execa } from 'execa'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  expectOk,
  fixtures,
  freePort,
  indexTags,
  type OciManifest,
  type Registry,
  readIndex,
  readManifest,
  seedRegistry,
  STACKER_BIN,
  type StackerResult,
  startRegistry,
  stacker,
  TEST_USER,
  type TempProject,
  tempProject,
  umociUnpack,
} from './helpers/index.js'

// ---------------------------------------------------------------------------------------------------
// A proxy in front of a registry: records requests, can slow bodies down and flip one byte of a blob.

interface ProxiedRequest {
  method: string
  path: string
}

interface Proxy {
  host: string
  requests: ProxiedRequest[]
  /** GETs of `/v2/<repo>/blobs/<digest>`, as digests. */
  blobGets(): string[]
  /** Flip one byte in the body of this blob's GET responses. */
  corrupt: string | undefined
  /** Send bodies in 64 KiB pieces with a pause between them, so a transfer takes a while. */
  slow: boolean
  close(): Promise<void>
}

async function startProxy(upstream: string): Promise<Proxy> {
  const [uhost, uport] = upstream.split(':')
  const requests: ProxiedRequest[] = []
  const state = { corrupt: undefined as string | undefined, slow: false }
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method ?? '', path: req.url ?? '' })
    const up = http.request(
      { host: uhost, port: Number(uport), method: req.method, path: req.url, headers: req.headers },
      (ures) => {
        res.writeHead(ures.statusCode ?? 502, ures.headers)
        const blob = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(req.url ?? '')?.[1]
        const corrupt = req.method === 'GET' && blob !== undefined && blob === state.corrupt
        if (!corrupt && !state.slow) {
          ures.pipe(res)
          return
        }
        void (async () => {
          let flipped = false
          for await (const c of ures) {
            const chunk = Buffer.from(c as Buffer)
            if (corrupt && !flipped && chunk.length > 0) {
              chunk[chunk.length >> 1] = (chunk[chunk.length >> 1] ?? 0) ^ 0xff
              flipped = true
            }
            if (!state.slow) res.write(chunk)
            else
              for (let i = 0; i < chunk.length; i += 64 << 10) {
                res.write(chunk.subarray(i, i + (64 << 10)))
                await sleep(15)
              }
          }
          res.end()
        })().catch(() => res.destroy())
      },
    )
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as AddressInfo).port
  return {
    host: `127.0.0.1:${port}`,
    requests,
    blobGets: () =>
      requests.flatMap((r) => {
        const m = r.method === 'GET' ? /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(r.path) : null
        return m?.[1] ? [m[1]] : []
      }),
    get corrupt() {
      return state.corrupt
    },
    set corrupt(d) {
      state.corrupt = d
    },
    get slow() {
      return state.slow
    },
    set slow(v) {
      state.slow = v
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

// ---------------------------------------------------------------------------------------------------
// Helpers.

/** The manifest of `docker://<ref>` as the registry has it (skopeo, not stacker), and its digest. */
async function remoteManifest(ref: string, creds?: string): Promise<{ digest: string; manifest: OciManifest }> {
  const args = ['inspect', '--raw', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), `docker://${ref}`]
  const r = await execa('skopeo', args, { reject: false, all: true, stripFinalNewline: false })
  if (r.exitCode !== 0) throw new Error(`skopeo inspect ${ref} failed:\n${r.all}`)
  return {
    digest: `sha256:${createHash('sha256').update(r.stdout).digest('hex')}`,
    manifest: JSON.parse(r.stdout) as OciManifest,
  }
}

/** A copy of the busybox fixture with one more layer holding `files`, tagged `latest` (made with umoci). */
async function derivedImage(dir: string, files: Record<string, string | Buffer>): Promise<string> {
  const layout = join(dir, 'layout')
  await cp(fixtures().busyboxLayout, layout, { recursive: true })
  const bundle = join(dir, 'bundle')
  const rootfs = await umociUnpack(layout, 'latest', bundle)
  for (const [p, content] of Object.entries(files)) {
    await mkdir(join(rootfs, p, '..'), { recursive: true })
    await writeFile(join(rootfs, p), content)
  }
  const r = await execa('umoci', ['repack', '--image', `${layout}:latest`, bundle], { reject: false, all: true })
  if (r.exitCode !== 0) throw new Error(`umoci repack failed:\n${r.all}`)
  await rm(bundle, { recursive: true, force: true })
  return layout
}

/** An environment that reads no auth file of this machine unless the test names one. */
function authEnv(home: string, extra: Record<string, string> = {}): Record<string, string> {
  return { HOME: home, REGISTRY_AUTH_FILE: '', XDG_RUNTIME_DIR: '', XDG_CONFIG_HOME: '', ...extra }
}

function authJson(entries: Record<string, { user: string; password: string }>): string {
  const auths: Record<string, { auth: string }> = {}
  for (const [k, v] of Object.entries(entries))
    auths[k] = { auth: Buffer.from(`${v.user}:${v.password}`).toString('base64') }
  return JSON.stringify({ auths })
}

function dockerLayer(name: string, url: string, run: string, type = 'docker'): string {
  return `${name}:\n  from:\n    type: ${type}\n    url: ${url}\n    insecure: true\n  run: ${run}\n`
}

/** Every file under dir, relative, sorted. */
async function filesUnder(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return []
  const out: string[] = []
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true }))
    if (!e.isDirectory()) out.push(relative(dir, join(e.parentPath, e.name)))
  return out.sort()
}

/** The stderr lines that are errors: one line each, as the design asks. */
function errorLines(r: StackerResult): string[] {
  return r.stderr.split('\n').filter((l) => l.startsWith('error:'))
}

/** Asserts a failed pull left no blob, tag or temp file in the base cache and no image in the output. */
async function expectNothingWritten(p: TempProject): Promise<void> {
  const bases = p.path('.stacker/layer-bases/oci')
  expect(await filesUnder(bases)).toEqual(existsSync(bases) ? ['index.json', 'oci-layout'] : [])
  if (existsSync(bases)) expect((await readIndex(bases)).manifests).toEqual([])
  if (existsSync(p.path('oci'))) {
    expect((await readIndex(p.path('oci'))).manifests).toEqual([])
    expect(await filesUnder(p.path('oci/blobs'))).toEqual([])
  }
}

/** Runs stacker under `script` so that its stdout and stderr are a terminal. Output is both, merged. */
async function stackerOnTty(args: string[], cwd: string, env: Record<string, string> = {}): Promise<StackerResult> {
  const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`
  const cmd = [process.execPath, STACKER_BIN, ...args].map(q).join(' ')
  const r = await execa('script', ['-q', '-e', '-c', cmd, '/dev/null'], {
    cwd,
    env,
    reject: false,
    input: '',
    timeout: 600_000,
  })
  return {
    stdout: String(r.stdout ?? ''),
    stderr: '',
    exitCode: r.exitCode ?? 1,
    signal: r.signal ?? undefined,
    timedOut: r.timedOut,
    command: cmd,
  }
}

// ---------------------------------------------------------------------------------------------------

let reg: Registry
let authReg: Registry
let scratch: string
let home: string
let bbDigest: string
let bbManifest: OciManifest
/** busybox plus a layer with 6 MiB of random bytes (so gzip can't shrink it) and /etc/extra. */
let bigLayout: string

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'stacker-e2e-registry-test-'))
  home = join(scratch, 'home')
  await mkdir(home)
  ;[reg, authReg, bigLayout] = await Promise.all([
    startRegistry(),
    startRegistry({ htpasswd: TEST_USER.htpasswd }),
    derivedImage(join(scratch, 'big'), { 'big.bin': randomBytes(6 << 20), 'etc/extra': 'extra\n' }),
  ])
  const creds = { user: TEST_USER.user, password: TEST_USER.password }
  await Promise.all([
    seedRegistry(fixtures().busyboxLayout, 'latest', reg.host, 'bb'),
    seedRegistry(bigLayout, 'latest', reg.host, 'big'),
    seedRegistry(fixtures().busyboxLayout, 'latest', authReg.host, 'team/bb', { creds }),
    seedRegistry(fixtures().busyboxLayout, 'latest', authReg.host, 'other/bb', { creds }),
  ])
  ;({ digest: bbDigest, manifest: bbManifest } = await remoteManifest(`${reg.host}/bb:latest`))
})

afterAll(async () => {
  await Promise.all([reg?.stop(), authReg?.stop()])
  if (scratch) await rm(scratch, { recursive: true, force: true })
})

let p: TempProject | undefined
let proxy: Proxy | undefined
afterEach(async () => {
  await proxy?.close()
  proxy = undefined
  if (p) {
    const dir = p.dir
    try {
      assertNoMountsUnder(dir)
    } finally {
      await p.cleanup()
      p = undefined
    }
  }
})

describe('docker:// bases', () => {
  it('builds from type docker by tag and by digest and from type oci with a docker:// URL; caches by digest', async () => {
    proxy = await startProxy(reg.host)
    const ref = `docker://${proxy.host}/bb`
    p = await tempProject({
      'stacker.yaml':
        dockerLayer('by-tag', `${ref}:latest`, 'echo tag > /which') +
        dockerLayer('by-digest', `${ref}@${bbDigest}`, 'echo digest > /which') +
        dockerLayer('oci-url', `${ref}:latest`, 'echo oci > /which', 'oci'),
    })
    const r = expectOk(await stacker(['build'], { cwd: p.dir, env: authEnv(home) }))
    // Not a terminal and no --progress: no progress lines.
    expect(r.stderr).not.toMatch(/Copying blob|Writing layer/)
    expect(r.stderr).toContain(`loading ${ref}:latest`)

    for (const [tag, which] of [
      ['by-tag', 'tag'],
      ['by-digest', 'digest'],
      ['oci-url', 'oci'],
    ] as const) {
      const rootfs = await umociUnpack(p.path('oci'), tag, p.path(`unpacked-${tag}`))
      expect(await readFile(join(rootfs, 'which'), 'utf8')).toBe(`${which}\n`)
      expect(existsSync(join(rootfs, 'bin/busybox'))).toBe(true)
      // The base's layers are the image's first layers, blob for blob.
      const m = await readManifest(p.path('oci'), tag)
      expect(m.layers.slice(0, bbManifest.layers.length).map((l) => l.digest)).toEqual(
        bbManifest.layers.map((l) => l.digest),
      )
      expect(m.layers).toHaveLength(bbManifest.layers.length + 1)
    }
    // The base is held once, by its manifest digest, and each blob was fetched exactly once even
    // though three layers wanted it at the same time.
    const held = (await readIndex(p.path('.stacker/layer-bases/oci'))).manifests.map((d) => d.digest)
    expect(new Set(held)).toEqual(new Set([bbDigest]))
    const gets = proxy.blobGets()
    expect([...gets].sort()).toEqual([bbManifest.config.digest, ...bbManifest.layers.map((l) => l.digest)].sort())

    // A rebuild whose tag still names the same digest fetches no blob; the digest-pinned base is not
    // even asked about. --progress would show any blob copied.
    proxy.requests.length = 0
    const again = expectOk(await stacker(['--progress', 'build'], { cwd: p.dir, env: authEnv(home) }))
    for (const l of ['by-tag', 'by-digest', 'oci-url']) expect(again.stderr).toContain(`found cached layer ${l}`)
    expect(again.stderr).not.toContain('Copying blob')
    expect(proxy.blobGets()).toEqual([])
    expect(proxy.requests.some((q) => q.path.endsWith('/manifests/latest'))).toBe(true)
    expect(proxy.requests.filter((q) => q.path.includes('/manifests/sha256:'))).toEqual([])
  })

  it('fetches only the new blobs when the tag moves, and rebuilds on the new base', async () => {
    proxy = await startProxy(reg.host)
    await seedRegistry(fixtures().busyboxLayout, 'latest', reg.host, 'moving')
    p = await tempProject({
      'stacker.yaml': dockerLayer('m', `docker://${proxy.host}/moving:latest`, 'ls /etc > /listing'),
    })
    expectOk(await stacker(['build'], { cwd: p.dir, env: authEnv(home) }))
    expect(await readFile(p.path('roots/m/overlay/listing'), 'utf8').catch(() => '')).not.toContain('extra')

    await seedRegistry(bigLayout, 'latest', reg.host, 'moving')
    const moved = await remoteManifest(`${reg.host}/moving:latest`)
    proxy.requests.length = 0
    const r = expectOk(await stacker(['build'], { cwd: p.dir, env: authEnv(home) }))
    expect(r.stderr).not.toContain('found cached layer m')
    const rootfs = await umociUnpack(p.path('oci'), 'm', p.path('unpacked'))
    expect((await readFile(join(rootfs, 'listing'), 'utf8')).split('\n')).toContain('extra')
    // busybox's layer was held already: only the new layer and the new config came over the wire.
    const busyboxLayer = bbManifest.layers.map((l) => l.digest)
    const fresh = [moved.manifest.config.digest, ...moved.manifest.layers.map((l) => l.digest)].filter(
      (d) => !busyboxLayer.includes(d),
    )
    expect([...proxy.blobGets()].sort()).toEqual(fresh.sort())
    expect(proxy.blobGets()).not.toContain(busyboxLayer[0])
  })

  it('goes on with the cached base when the registry is stopped, and says so', async () => {
    const own = await startRegistry()
    try {
      await seedRegistry(fixtures().busyboxLayout, 'latest', own.host, 'bb')
      const url = `docker://${own.host}/bb:latest`
      p = await tempProject({ 'stacker.yaml': dockerLayer('c', url, 'echo one > /one') })
      expectOk(await stacker(['build'], { cwd: p.dir, env: authEnv(home) }))
      await own.stop()

      // A changed run section, so the layer really is built again, on the cached base.
      await p.write('stacker.yaml', dockerLayer('c', url, 'echo two > /two'))
      const r = expectOk(await stacker(['build'], { cwd: p.dir, env: authEnv(home) }))
      expect(r.stderr).toContain(`using the cached copy of ${url} (${bbDigest})`)
      expect(r.stderr).toContain('connection refused')
      const rootfs = await umociUnpack(p.path('oci'), 'c', p.path('unpacked'))
      expect(await readFile(join(rootfs, 'two'), 'utf8')).toBe('two\n')
      expect(existsSync(join(rootfs, 'one'))).toBe(false)
      expect((await readManifest(p.path('oci'), 'c')).layers[0]?.digest).toBe(bbManifest.layers[0]?.digest)
    } finally {
      await own.stop()
    }
  })
})

describe('auth', () => {
  it('takes the longest matching auth.json entry, from REGISTRY_AUTH_FILE or XDG_RUNTIME_DIR', async () => {
    const good = { user: TEST_USER.user, password: TEST_USER.password }
    const bad = { user: TEST_USER.user, password: 'not-the-password' }
    p = await tempProject({
      'auth.json': authJson({ [authReg.host]: bad, [`${authReg.host}/team`]: good }),
      'run/containers/auth.json': authJson({ [authReg.host]: good }),
      'team.yaml': dockerLayer('team', `docker://${authReg.host}/team/bb:latest`, 'echo team > /team'),
      'other.yaml': dockerLayer('other', `docker://${authReg.host}/other/bb:latest`, 'echo other > /other'),
    })
    const withFile = authEnv(home, { REGISTRY_AUTH_FILE: p.path('auth.json') })
    // host/team beats host for team/bb ...
    expectOk(await stacker(['build', '-f', 'team.yaml'], { cwd: p.dir, env: withFile }))
    expect(await indexTags(p.path('oci'))).toEqual(['team'])
    // ... and for other/bb only host matches, whose password is wrong: a 401 naming the file.
    const denied = await stacker(['build', '-f', 'other.yaml'], { cwd: p.dir, env: withFile })
    expect(denied.exitCode).toBe(1)
    expect(errorLines(denied)).toHaveLength(1)
    expect(errorLines(denied)[0]).toContain(`docker://${authReg.host}/other/bb:latest`)
    expect(errorLines(denied)[0]).toContain('unauthorized (401)')
    expect(errorLines(denied)[0]).toContain(p.path('auth.json'))
    expect(denied.stderr).not.toContain('not-the-password')

    const viaXdg = authEnv(home, { XDG_RUNTIME_DIR: p.path('run') })
    expectOk(await stacker(['build', '-f', 'other.yaml'], { cwd: p.dir, env: viaXdg }))
    expect(await indexTags(p.path('oci'))).toEqual(['team', 'other'])
  })
})

describe('errors', () => {
  // Each: one `error:` line naming the reference, exit 1, and nothing in either layout.
  const cases: { name: string; url: () => Promise<string>; says: RegExp; env?: () => Record<string, string> }[] = [
    {
      name: 'unknown host',
      url: async () => 'docker://nohost.invalid/bb:latest',
      says: /unknown host nohost\.invalid/,
    },
    {
      name: 'refused connection',
      url: async () => `docker://127.0.0.1:${await freePort()}/bb:latest`,
      says: /connection refused/,
    },
    { name: '404 manifest', url: async () => `docker://${reg.host}/absent:latest`, says: /manifest unknown \(404\)/ },
    {
      name: '401 without credentials',
      url: async () => `docker://${authReg.host}/team/bb:latest`,
      says: /unauthorized \(401\), no credentials for 127\.0\.0\.1:\d+/,
    },
    {
      name: '401 with wrong credentials',
      url: async () => `docker://${authReg.host}/team/bb:latest`,
      says: /unauthorized \(401\) with the credentials of .*wrong-auth\.json/,
      env: () =>
        authEnv(home, {
          REGISTRY_AUTH_FILE: join(scratch, 'wrong-auth.json'),
        }),
    },
  ]

  beforeAll(async () => {
    await writeFile(
      join(scratch, 'wrong-auth.json'),
      authJson({ [authReg.host]: { user: TEST_USER.user, password: 'not-the-password' } }),
    )
  })

  for (const c of cases)
    it(`${c.name}: one line naming the reference, nothing written`, async () => {
      const url = await c.url()
      p = await tempProject({ 'stacker.yaml': dockerLayer('e', url, 'echo never > /never') })
      const r = await stacker(['build'], { cwd: p.dir, env: c.env?.() ?? authEnv(home) })
      expect(r.exitCode).toBe(1)
      const errs = errorLines(r)
      expect(errs).toHaveLength(1)
      expect(errs[0]).toContain(url)
      expect(errs[0]).toMatch(c.says)
      expect(r.stderr).not.toContain('not-the-password')
      expect(r.stdout).not.toContain('never')
      await expectNothingWritten(p)
    })

  it('a blob that does not match its digest: one line, and the cached layout is unchanged', async () => {
    proxy = await startProxy(reg.host)
    // A project that already holds another base, so "unchanged" means more than "empty".
    p = await tempProject({ 'stacker.yaml': dockerLayer('held', `docker://${proxy.host}/bb:latest`, 'echo a > /a') })
    expectOk(await stacker(['build'], { cwd: p.dir, env: authEnv(home) }))
    const bases = p.path('.stacker/layer-bases/oci')
    const before = { files: await filesUnder(bases), index: await readFile(join(bases, 'index.json'), 'utf8') }
    const outBefore = await readFile(p.path('oci/index.json'), 'utf8')

    const big = await remoteManifest(`${reg.host}/big:latest`)
    const victim = big.manifest.layers.at(-1)?.digest as string
    expect(bbManifest.layers.map((l) => l.digest)).not.toContain(victim)
    proxy.corrupt = victim
    const url = `docker://${proxy.host}/big:latest`
    await p.write('stacker.yaml', dockerLayer('bad', url, 'echo never > /never'))
    const r = await stacker(['build'], { cwd: p.dir, env: authEnv(home) })
    expect(r.exitCode).toBe(1)
    const errs = errorLines(r)
    expect(errs).toHaveLength(1)
    expect(errs[0]).toContain(url)
    expect(errs[0]).toContain(`blob ${victim} does not match its digest`)
    expect(proxy.blobGets()).toContain(victim)
    expect(await filesUnder(bases)).toEqual(before.files)
    expect(await readFile(join(bases, 'index.json'), 'utf8')).toBe(before.index)
    expect(await readFile(p.path('oci/index.json'), 'utf8')).toBe(outBefore)
  })
})

describe('progress', () => {
  it('prints plain Copying blob and Writing layer lines with --progress off a terminal, none with --no-progress', async () => {
    p = await tempProject({
      'stacker.yaml': dockerLayer('pr', `docker://${reg.host}/bb:latest`, 'echo p > /p'),
    })
    // Without either flag there are none (the first test checks that); both flags are accepted off a terminal.
    const off = expectOk(await stacker(['--no-progress', 'build'], { cwd: p.dir, env: authEnv(home) }))
    expect(off.stderr).not.toMatch(/Copying blob|Writing layer/)
    await stacker(['clean'], { cwd: p.dir })

    const r = expectOk(await stacker(['--progress', 'build'], { cwd: p.dir, env: authEnv(home) }))
    for (const l of bbManifest.layers)
      expect(r.stderr).toMatch(new RegExp(`^Copying blob ${l.digest.slice(0, 19)}.* done `, 'm'))
    expect(r.stderr).toMatch(/^Writing layer .* done /m)
    expect(r.stderr).not.toContain('\x1b[')
  })

  it('shows a live display with bytes and rate on a terminal, and nothing with --no-progress', async () => {
    proxy = await startProxy(reg.host)
    proxy.slow = true
    p = await tempProject({ 'stacker.yaml': dockerLayer('tty', `docker://${proxy.host}/big:latest`, 'ls -l /big.bin') })
    const r = await stackerOnTty(['build'], p.dir, authEnv(home))
    expect(r.exitCode, r.stdout).toBe(0)
    const big = await remoteManifest(`${reg.host}/big:latest`)
    const bigLayer = big.manifest.layers.at(-1)?.digest as string
    const short = bigLayer.slice(0, 19)
    // A line being redrawn (cursor up, erase) with a bar, bytes of a total and a rate ...
    expect(r.stdout).toContain('\x1b[1A\x1b[J')
    expect(r.stdout).toMatch(
      new RegExp(`Copying blob ${short} +\\d+\\.\\d MiB / 6\\.0 MiB +[\\d.]+ [KMG]?i?B/s +\\[=+`),
    )
    // ... and when it is done, a line that stays.
    expect(r.stdout).toMatch(new RegExp(`Copying blob ${short} done 6\\.0 MiB [\\d.]+ [KMG]?i?B/s`))

    proxy.slow = false
    await stacker(['clean'], { cwd: p.dir })
    const none = await stackerOnTty(['--no-progress', 'build'], p.dir, authEnv(home))
    expect(none.exitCode, none.stdout).toBe(0)
    expect(none.stdout).not.toMatch(/Copying blob|Writing layer/)
    expect(none.stdout).not.toContain('\x1b[1A')
    // --progress is accepted on a terminal too.
    await stacker(['clean'], { cwd: p.dir })
    const on = await stackerOnTty(['--progress', 'build'], p.dir, authEnv(home))
    expect(on.exitCode, on.stdout).toBe(0)
    expect(on.stdout).toContain(`Copying blob ${short}`)
  })
})
