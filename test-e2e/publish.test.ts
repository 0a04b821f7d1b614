// `stacker publish` (upstream's bats "publish"): naming for docker and
// oci destinations, several tags and layer types (`-squashfs`/`-erofs` suffixes), --show-only, --image,
// -d/-p search, build_only layers skipped, stale layers refused unless --force, the usage errors, basic
// auth, cross-repository blob mounts (through a logging proxy). What was pushed is read back with skopeo
// and umoci, and squashfs images are used as a base.
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  blobPath,
  expectOk,
  fixtures,
  manifestDescriptor,
  type OciManifest,
  type Registry,
  readManifest,
  seedRegistry,
  type StackerResult,
  startRegistry,
  stacker,
  TEST_USER,
  type TempProject,
  tempProject,
  umociLs,
  umociUnpack,
  unsquashfsList,
} from './helpers/index.js'

const STACKERFILE = `base:
  from:
    type: oci
    url: \${{BUSYBOX_OCI}}
  run: |
    mkdir -p /srv/data
    echo one > /srv/data/one
    echo two > /srv/data/two
    ln -s data/two /srv/link
bo:
  build_only: true
  from:
    type: built
    tag: base
  run: echo bo > /bo
app:
  from:
    type: built
    tag: bo
  run: |
    echo app > /app
    rm /srv/data/one
`

const SUB = (name: string): string =>
  `${name}:\n  from:\n    type: oci\n    url: \${{BUSYBOX_OCI}}\n  run: echo ${name} > /${name}\n`

const NS = 'io.stackeroci'
const TYPES = ['tar', 'squashfs', 'erofs'] as const
const suffix = (t: (typeof TYPES)[number]): string => (t === 'tar' ? '' : `-${t}`)

let p: TempProject
let reg: Registry
let authReg: Registry
let scratch: string
let sub: string[]

function env(): Record<string, string> {
  // No auth file of this machine is read.
  return { HOME: join(scratch, 'home'), REGISTRY_AUTH_FILE: '', XDG_RUNTIME_DIR: '', XDG_CONFIG_HOME: '' }
}

function run(args: string[], cwd = p.dir): Promise<StackerResult> {
  return stacker(args, { cwd, env: env() })
}

function errorLines(r: StackerResult): string[] {
  return r.stderr.split('\n').filter((l) => l.startsWith('error:'))
}

async function skopeo(args: string[]): Promise<string> {
  const r = await execa('skopeo', args, { reject: false, all: true, stripFinalNewline: false })
  if (r.exitCode !== 0) throw new Error(`skopeo ${args.join(' ')} failed:\n${r.all}`)
  return r.stdout
}

/** The raw manifest the registry holds, and the digest of its bytes. */
async function remote(ref: string, creds?: string): Promise<{ digest: string; manifest: OciManifest }> {
  const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), ref])
  return { digest: `sha256:${createHash('sha256').update(raw).digest('hex')}`, manifest: JSON.parse(raw) }
}

async function catalog(r: Registry): Promise<string[]> {
  const res = await fetch(`${r.url}/v2/_catalog`)
  return ((await res.json()) as { repositories?: string[] }).repositories ?? []
}

/** path -> type, mode, owner, size, content hash or link target, for every entry of a rootfs. */
async function tree(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  for (const e of await readdir(root, { recursive: true, withFileTypes: true })) {
    const full = join(e.parentPath, e.name)
    const st = await lstat(full)
    let what = ''
    if (st.isFile())
      what = createHash('sha256')
        .update(await readFile(full))
        .digest('hex')
    else if (st.isSymbolicLink()) what = `-> ${await readlink(full)}`
    out.set(
      relative(root, full),
      `${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.isDirectory() ? '' : st.size} ${what}`,
    )
  }
  return out
}

/** A proxy in front of a registry that records every request (method, path with query, status). */
interface LoggingProxy {
  host: string
  requests: { method: string; url: URL; status: number }[]
  close(): Promise<void>
}

async function startLoggingProxy(upstream: string): Promise<LoggingProxy> {
  const [uhost, uport] = upstream.split(':')
  const requests: LoggingProxy['requests'] = []
  const server = http.createServer((req, res) => {
    const up = http.request(
      { host: uhost, port: Number(uport), method: req.method, path: req.url, headers: req.headers },
      (ures) => {
        requests.push({
          method: req.method ?? '',
          url: new URL(req.url ?? '/', 'http://x'),
          status: ures.statusCode ?? 0,
        })
        res.writeHead(ures.statusCode ?? 502, ures.headers)
        ures.pipe(res)
      },
    )
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

/** What the proxy saw of blob `digest` in repository `repo`: mount attempts (by source repository)
 *  and uploads of its bytes (PATCH to, or PUT with `?digest=` to, an upload session). */
function blobTraffic(proxy: LoggingProxy, repo: string, digest: string): { mounts: string[]; uploads: number } {
  const uploads = `/v2/${repo}/blobs/uploads/`
  const mine = proxy.requests.filter((r) => r.url.pathname.startsWith(uploads))
  const mounts = mine
    .filter((r) => r.method === 'POST' && r.url.searchParams.get('mount') === digest)
    .map((r) => `${r.url.searchParams.get('from')} ${r.status}`)
  const sessions = new Set(
    mine.filter((r) => r.method === 'PUT' && r.url.searchParams.get('digest') === digest).map((r) => r.url.pathname),
  )
  const uploaded = mine.filter((r) => (r.method === 'PATCH' || r.method === 'PUT') && sessions.has(r.url.pathname))
  return { mounts, uploads: uploaded.length }
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'stacker-e2e-publish-test-'))
  ;[reg, authReg, p] = await Promise.all([
    startRegistry(),
    startRegistry({ htpasswd: TEST_USER.htpasswd }),
    tempProject({
      'stacker.yaml': STACKERFILE,
      'tree/sub1/stacker.yaml': SUB('one'),
      'tree/sub2/stacker.yaml': SUB('two'),
    }),
  ])
  const subst = ['--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`]
  const types = TYPES.flatMap((t) => ['--layer-type', t])
  expectOk(await run(['build', ...subst, ...types]))
  expectOk(await run(['recursive-build', '-d', 'tree', ...subst]))
  sub = ['--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`]
})

afterAll(async () => {
  await Promise.all([reg?.stop(), authReg?.stop()])
  if (p) {
    try {
      assertNoMountsUnder(p.dir)
    } finally {
      await p.cleanup()
    }
  }
  if (scratch) await rm(scratch, { recursive: true, force: true })
})

describe('--show-only', () => {
  it('prints upstream’s would publish lines for docker destinations, tags × layer types, and publishes nothing', async () => {
    const url = `docker://${reg.host}/team/`
    const r = expectOk(
      await run([
        'publish',
        ...sub,
        '--url',
        url,
        '--skip-tls',
        '--tag',
        't1',
        '--tag',
        't2',
        '--layer-type',
        'tar',
        '--layer-type',
        'squashfs',
        '--show-only',
      ]),
    )
    const dest = `docker://${reg.host}/team`
    const want = ['base', 'app'].flatMap((l) =>
      ['t1', 't2'].flatMap((t) => [
        `would publish: stacker.yaml ${l} to ${dest}/${l}:${t}`,
        `would publish: stacker.yaml ${l} to ${dest}/${l}:${t}-squashfs`,
      ]),
    )
    const lines = r.stderr.split('\n').filter((l) => l.includes('would publish:'))
    expect(lines.sort()).toEqual(want.sort())
    expect(r.stderr).toContain('will not publish: stacker.yaml build_only bo')
    expect(r.stderr).not.toMatch(/would publish: \S+ bo /)
    expect(await catalog(reg)).toEqual([])
  })

  it('names oci destinations <url>:<layer>_<tag>, honours --image, and creates nothing', async () => {
    const dir = join(scratch, 'never')
    const r = expectOk(
      await run([
        'publish',
        ...sub,
        '--url',
        `oci:${dir}`,
        '--tag',
        'v1',
        '--layer-type',
        'erofs',
        '--image',
        'app',
        '--show-only',
      ]),
    )
    const lines = r.stderr.split('\n').filter((l) => l.includes('would publish:'))
    expect(lines).toEqual([`would publish: stacker.yaml app to oci:${dir}:app_v1-erofs`])
    expect(existsSync(dir)).toBe(false)
  })

  it('searches with -d and -p, naming the files as found under the dir given', async () => {
    const all = expectOk(await run(['publish', '-d', 'tree', ...sub, '--url', 'oci:out', '--tag', 'x', '--show-only']))
    const lines = (r: StackerResult) => r.stderr.split('\n').filter((l) => l.includes('would publish:'))
    expect(lines(all).sort()).toEqual([
      'would publish: tree/sub1/stacker.yaml one to oci:out:one_x',
      'would publish: tree/sub2/stacker.yaml two to oci:out:two_x',
    ])
    const one = expectOk(
      await run([
        'publish',
        '-d',
        'tree',
        '-p',
        'sub2/stacker.yaml$',
        ...sub,
        '--url',
        'oci:out',
        '--tag',
        'x',
        '--show-only',
      ]),
    )
    expect(lines(one)).toEqual(['would publish: tree/sub2/stacker.yaml two to oci:out:two_x'])
  })
})

describe('publishing', () => {
  it('pushes tar, squashfs and erofs images under every tag, byte for byte, with their annotations', async () => {
    const url = `docker://${reg.host}/pub`
    const args = ['publish', ...sub, '--url', url, '--skip-tls', '--tag', 'v1', '--tag', 'latest']
    const r = expectOk(await run([...args, ...TYPES.flatMap((t) => ['--layer-type', t])]))
    expect(r.stderr).toContain(`publishing stacker.yaml app to ${url}/app:v1-squashfs`)
    expect(r.stderr).toContain('will not publish: stacker.yaml build_only bo')
    expect((await catalog(reg)).sort()).toEqual(['pub/app', 'pub/base'])

    for (const layer of ['base', 'app'])
      for (const t of TYPES) {
        const local = await manifestDescriptor(p.path('oci'), `${layer}${suffix(t)}`)
        const localManifest = await readManifest(p.path('oci'), `${layer}${suffix(t)}`)
        for (const tag of ['v1', 'latest']) {
          const got = await remote(`docker://${reg.host}/pub/${layer}:${tag}${suffix(t)}`)
          // The manifest went up as it is in the layout, so every layer descriptor, media type and
          // annotation (verity root hashes included) did too.
          expect(got.digest).toBe(local.digest)
          expect(got.manifest.layers).toEqual(localManifest.layers)
        }
        if (t !== 'tar') {
          const last = localManifest.layers.at(-1)
          expect(last?.mediaType).toContain(t)
          expect(Object.keys(last?.annotations ?? {})).toContain(`${NS}.stacker.atomfs_verity_root_hash`)
        }
      }
    // The build_only layer is not in the registry under any name.
    const bo = await execa('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/pub/bo:v1`], {
      reject: false,
    })
    expect(bo.exitCode).not.toBe(0)
  })

  it('pulled back with skopeo, unpacks with umoci to the same rootfs as the local image', async () => {
    const url = `docker://${reg.host}/roundtrip`
    const pushed = expectOk(
      await run(['--progress', 'publish', ...sub, '--url', url, '--skip-tls', '--tag', 'rt', '--image', 'app']),
    )
    // --progress off a terminal: a plain line per blob pushed, no cursor movement.
    const m = await readManifest(p.path('oci'), 'app')
    for (const d of [m.config, ...m.layers])
      expect(pushed.stderr).toMatch(new RegExp(`^Pushing blob ${d.digest.slice(0, 19)}.* done `, 'm'))
    expect(pushed.stderr).not.toContain('\x1b[')
    const back = join(scratch, 'back')
    await skopeo(['copy', '--insecure-policy', '--src-tls-verify=false', `${url}/app:rt`, `oci:${back}:app`])
    const pulled = await umociUnpack(back, 'app', join(scratch, 'back-unpacked'))
    const local = await umociUnpack(p.path('oci'), 'app', join(scratch, 'local-unpacked'))
    const [a, b] = await Promise.all([tree(pulled), tree(local)])
    expect(a).toEqual(b)
    // The whiteout of app's `rm` made it through, and what it inherited from build_only bo too.
    expect(existsSync(join(pulled, 'srv/data/one'))).toBe(false)
    expect(await readFile(join(pulled, 'srv/data/two'), 'utf8')).toBe('two\n')
    expect(await readFile(join(pulled, 'bo'), 'utf8')).toBe('bo\n')
    expect(await readFile(join(pulled, 'app'), 'utf8')).toBe('app\n')
    await rm(back, { recursive: true, force: true })
    await rm(join(scratch, 'back-unpacked'), { recursive: true, force: true })
    await rm(join(scratch, 'local-unpacked'), { recursive: true, force: true })
  })

  it('copies into an oci: layout as <layer>_<tag>[-type], same manifests', async () => {
    const dir = join(scratch, 'published')
    const r = expectOk(
      await run([
        'publish',
        ...sub,
        '--url',
        `oci:${dir}`,
        '--tag',
        'v1',
        '--layer-type',
        'tar',
        '--layer-type',
        'squashfs',
      ]),
    )
    expect(r.stderr).toContain(`publishing stacker.yaml base to oci:${dir}:base_v1-squashfs`)
    expect((await umociLs(dir)).sort()).toEqual(['app_v1', 'app_v1-squashfs', 'base_v1', 'base_v1-squashfs'])
    for (const [tag, src] of [
      ['app_v1', 'app'],
      ['base_v1-squashfs', 'base-squashfs'],
    ] as const) {
      const got = await manifestDescriptor(dir, tag)
      expect(got.digest).toBe((await manifestDescriptor(p.path('oci'), src)).digest)
      const m = await readManifest(dir, tag)
      for (const d of [m.config, ...m.layers]) expect(existsSync(blobPath(dir, d.digest))).toBe(true)
    }
    const rootfs = await umociUnpack(dir, 'app_v1', join(scratch, 'oci-unpacked'))
    expect(await readFile(join(rootfs, 'app'), 'utf8')).toBe('app\n')
    await rm(join(scratch, 'oci-unpacked'), { recursive: true, force: true })
  })

  it('a published squashfs image is a base for another build', async () => {
    const url = `docker://${reg.host}/sq`
    expectOk(await run(['publish', ...sub, '--url', url, '--skip-tls', '--tag', 's1', '--layer-type', 'squashfs']))
    const published = await remote(`${url}/app:s1-squashfs`)
    const q = await tempProject({
      'stacker.yaml': `consumer:\n  from:\n    type: docker\n    url: ${url}/app:s1-squashfs\n    insecure: true\n  run: cat /app /srv/data/two > /consumed\n`,
    })
    try {
      expectOk(await stacker(['build', '--layer-type', 'squashfs'], { cwd: q.dir, env: env() }))
      const m = await readManifest(q.path('oci'), 'consumer-squashfs')
      // The base's squashfs layers, annotations and all, then one of our own.
      expect(m.layers.slice(0, published.manifest.layers.length)).toEqual(published.manifest.layers)
      expect(m.layers).toHaveLength(published.manifest.layers.length + 1)
      const own = m.layers.at(-1)
      expect(own?.mediaType).toContain('squashfs')
      const entries = await unsquashfsList(blobPath(q.path('oci'), own?.digest as string))
      expect(entries.map((e) => e.path)).toContain('/consumed')
      // What the run section read came from the published base.
      const rootfs = q.path('check')
      await execa('unsquashfs', ['-d', rootfs, blobPath(q.path('oci'), own?.digest as string), 'consumed'])
      expect(await readFile(join(rootfs, 'consumed'), 'utf8')).toBe('app\ntwo\n')
      assertNoMountsUnder(q.dir)
    } finally {
      await q.cleanup()
    }
  })
})

describe('cross-repository mounts', () => {
  it('mounts the blobs an image shares with one pushed earlier in the same run, and uploads the rest', async () => {
    const proxy = await startLoggingProxy(reg.host)
    try {
      const url = `docker://${proxy.host}/mnt`
      expectOk(
        await run(['publish', ...sub, '--url', url, '--skip-tls', '--tag', 'm1', '--image', 'base', '--image', 'app']),
      )
      const base = await readManifest(p.path('oci'), 'base')
      const app = await readManifest(p.path('oci'), 'app')
      const shared = base.layers.map((l) => l.digest)
      expect(app.layers.slice(0, shared.length).map((l) => l.digest)).toEqual(shared)
      for (const d of shared) {
        expect(blobTraffic(proxy, 'mnt/base', d)).toEqual({ mounts: [], uploads: 1 })
        // Mounted from mnt/base (201 Created), its bytes never sent again.
        expect(blobTraffic(proxy, 'mnt/app', d)).toEqual({ mounts: ['mnt/base 201'], uploads: 0 })
      }
      for (const d of [app.config.digest, ...app.layers.slice(shared.length).map((l) => l.digest)])
        expect(blobTraffic(proxy, 'mnt/app', d)).toEqual({ mounts: [], uploads: 1 })

      // The mounted image is whole: skopeo copies it out, and it unpacks to what app holds.
      const back = join(scratch, 'mounted-back')
      await skopeo([
        'copy',
        '--insecure-policy',
        '--src-tls-verify=false',
        `docker://${reg.host}/mnt/app:m1`,
        `oci:${back}:app`,
      ])
      expect((await manifestDescriptor(back, 'app')).digest).toBe(
        (await manifestDescriptor(p.path('oci'), 'app')).digest,
      )
      const rootfs = await umociUnpack(back, 'app', join(scratch, 'mounted-unpacked'))
      expect(await readFile(join(rootfs, 'app'), 'utf8')).toBe('app\n')
      await rm(back, { recursive: true, force: true })
      await rm(join(scratch, 'mounted-unpacked'), { recursive: true, force: true })
    } finally {
      await proxy.close()
    }
  })

  it('mounts the layers of a docker:// base from the repository it was pulled from', async () => {
    const proxy = await startLoggingProxy(reg.host)
    await seedRegistry(fixtures().busyboxLayout, 'latest', reg.host, 'src/bb')
    const q = await tempProject({
      'stacker.yaml': `derived:\n  from:\n    type: docker\n    url: docker://${proxy.host}/src/bb:latest\n    insecure: true\n  run: echo derived > /derived\n`,
    })
    try {
      expectOk(await stacker(['build'], { cwd: q.dir, env: env() }))
      const m = await readManifest(q.path('oci'), 'derived')
      const bb = await readManifest(fixtures().busyboxLayout, 'latest')
      const inherited = bb.layers.map((l) => l.digest)
      expect(m.layers.slice(0, inherited.length).map((l) => l.digest)).toEqual(inherited)
      proxy.requests.length = 0
      const url = `docker://${proxy.host}/derived-from`
      expectOk(await stacker(['publish', '--url', url, '--skip-tls', '--tag', 'd1'], { cwd: q.dir, env: env() }))
      for (const d of inherited)
        expect(blobTraffic(proxy, 'derived-from/derived', d)).toEqual({ mounts: ['src/bb 201'], uploads: 0 })
      const own = m.layers.at(-1)?.digest as string
      expect(blobTraffic(proxy, 'derived-from/derived', own)).toEqual({ mounts: [], uploads: 1 })
      const got = await remote(`docker://${reg.host}/derived-from/derived:d1`)
      expect(got.digest).toBe((await manifestDescriptor(q.path('oci'), 'derived')).digest)
      const back = join(scratch, 'derived-back')
      await skopeo([
        'copy',
        '--insecure-policy',
        '--src-tls-verify=false',
        `docker://${reg.host}/derived-from/derived:d1`,
        `oci:${back}:d`,
      ])
      const rootfs = await umociUnpack(back, 'd', join(scratch, 'derived-unpacked'))
      expect(await readFile(join(rootfs, 'derived'), 'utf8')).toBe('derived\n')
      expect(existsSync(join(rootfs, 'bin/busybox'))).toBe(true)
      await rm(back, { recursive: true, force: true })
      await rm(join(scratch, 'derived-unpacked'), { recursive: true, force: true })
      assertNoMountsUnder(q.dir)
    } finally {
      await proxy.close()
      await q.cleanup()
    }
  })
})

describe('refusals', () => {
  it('refuses a stale layer unless --force', async () => {
    const original = await readFile(p.path('stacker.yaml'), 'utf8')
    try {
      await p.write('stacker.yaml', original.replace('echo app > /app', 'echo changed > /app'))
      const stale = await run(['publish', ...sub, '--url', 'oci:stale', '--tag', 'x', '--show-only'])
      expect(stale.exitCode).toBe(1)
      expect(errorLines(stale)).toEqual(['error: layer needs to be rebuilt before publishing: app'])
      const forced = expectOk(
        await run(['publish', ...sub, '--url', `oci:${join(scratch, 'forced')}`, '--tag', 'x', '--force']),
      )
      expect(forced.stderr).toContain(`publishing stacker.yaml app to oci:${join(scratch, 'forced')}:app_x`)
      expect((await umociLs(join(scratch, 'forced'))).sort()).toEqual(['app_x', 'base_x'])
    } finally {
      await p.write('stacker.yaml', original)
    }
  })

  it('gives upstream’s usage errors', async () => {
    const cases: [string[], string][] = [
      [['--tag', 'x'], 'error: --url is a mandatory argument for publishing'],
      [
        ['--url', 'oci:o', '--tag', 'x', '--username', 'me'],
        "error: supply both username and password, or none of them, current values: 'me' ''",
      ],
      [
        ['--url', `docker://${reg.host}/x`],
        `error: can't save OCI images in docker://${reg.host}/x since list of tags is empty`,
      ],
      [['--url', 'ftp://x', '--tag', 'x'], 'error: unknown image source type: ftp://x'],
    ]
    for (const [args, want] of cases) {
      const r = await run(['publish', ...sub, ...args])
      expect(r.exitCode, r.stderr).toBe(1)
      expect(errorLines(r)).toEqual([want])
    }
    expect(await catalog(reg)).not.toContain('x')
  })
})

describe('basic auth', () => {
  it('publishes with --username/--password; says 401 without them or with a wrong one', async () => {
    const url = `docker://${authReg.host}/secure`
    const base = ['publish', ...sub, '--url', url, '--skip-tls', '--tag', 'a1', '--image', 'base']
    const none = await run(base)
    expect(none.exitCode).toBe(1)
    expect(errorLines(none)).toHaveLength(1)
    expect(errorLines(none)[0]).toContain(`${url}/base:a1`)
    expect(errorLines(none)[0]).toContain('unauthorized (401), no credentials')

    const wrong = await run([...base, '--username', TEST_USER.user, '--password', 'not-the-password'])
    expect(wrong.exitCode).toBe(1)
    expect(errorLines(wrong)).toHaveLength(1)
    expect(errorLines(wrong)[0]).toContain('unauthorized (401)')
    expect(wrong.stderr).not.toContain('not-the-password')

    expectOk(await run([...base, '--username', TEST_USER.user, '--password', TEST_USER.password]))
    const got = await remote(`${url}/base:a1`, `${TEST_USER.user}:${TEST_USER.password}`)
    expect(got.digest).toBe((await manifestDescriptor(p.path('oci'), 'base')).digest)
  })
})
