// The shared build cache (`--cache-to`/`--cache-from`): machine A builds and pushes each layer to a
// registry; machine B (another project dir, stacker dir, roots dir and oci dir, the same
// stacker.yaml) runs none of them, materialises their filesystems, builds children on them, and
// ends with images of the same digests. Keys carry no host path or build_env value; binds and
// --no-cache layers are never shared; every fault (registry down, 401, a missing or corrupt blob,
// a record for another platform, a refused push) is one warning and a local build, never a wrong
// image. A reverse proxy written here injects the blob faults in front of Debian's docker-registry.
import { createHash } from 'node:crypto'
import { lstat, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  expectOk,
  fixtures,
  freePort,
  projectsPerTest,
  type Registry,
  readIndex,
  type StackerResult,
  startRegistry,
  stacker,
  type TempProject,
  TEST_USER,
  umociUnpack,
} from './helpers/index.js'

const project = projectsPerTest()
const SDE = '1700000000'
const SECRET = 'tok-9f3c1e7d-not-for-records'

/** Four layers: a build_only base with a plain import, a `dest` import, an overlay_dir and a
 *  build_env value; two layers on it that delete (whiteouts, an opaque dir), link and chown; a
 *  leaf. */
function stackerYaml(extra = ''): string {
  return `base:
  from:
    type: oci
    url: \${{BB}}
  build_only: true
  imports:
    - data.txt
    - path: tree/
      dest: /opt/tree/
  overlay_dirs:
    - source: overlay
      dest: /ovl
  build_env:
    TOKEN: \${{TOKEN}}
  run: |
    cp /stacker/imports/data.txt /data
    ln /data /data-hardlink
    mkdir -p /etc/x && echo hi > /etc/x/hi && echo keep > /etc/x/keep
    echo "token length \${#TOKEN}" > /token-note
app:
  from:
    type: built
    tag: base
  run: |
    echo app > /app
    ln -s /app /applink
    rm /etc/x/hi
    rm -rf /opt/tree && mkdir /opt/tree && echo new > /opt/tree/n
    echo owned > /owned && chown 1234:5678 /owned
mid:
  from:
    type: built
    tag: app
  run: echo mid > /mid
leaf:
  from:
    type: built
    tag: mid
  run: echo leaf > /leaf
${extra}`
}

const FILES = {
  'data.txt': 'shared data\n',
  'tree/a': 'old a\n',
  'tree/sub/b': 'old b\n',
  'overlay/o.txt': 'overlay file\n',
}

async function machine(extra = ''): Promise<TempProject> {
  return project({ 'stacker.yaml': stackerYaml(extra), ...FILES })
}

const TAGS = ['app', 'mid', 'leaf']

function env(p: TempProject, extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    SOURCE_DATE_EPOCH: SDE,
    HOME: p.dir,
    REGISTRY_AUTH_FILE: '',
    XDG_RUNTIME_DIR: '',
    XDG_CONFIG_HOME: p.path('xdg'),
    CONTAINERS_REGISTRIES_CONF: p.path('no-registries.conf'),
    ...extra,
  }
}

function build(p: TempProject, args: string[], extra: Record<string, string | undefined> = {}): Promise<StackerResult> {
  return stacker(
    ['build', '--substitute', `BB=${fixtures().BUSYBOX_OCI}`, '--substitute', `TOKEN=${SECRET}`, ...args],
    {
      cwd: p.dir,
      env: env(p, extra),
    },
  )
}

async function digests(p: TempProject): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  for (const m of (await readIndex(p.path('oci'))).manifests) {
    const t = m.annotations?.['org.opencontainers.image.ref.name']
    if (t !== undefined) out[t] = m.digest
  }
  return out
}

/** Lines that ran a step (`+ cmd` from the run script's set -x). */
function ranSteps(r: StackerResult): string[] {
  return (r.stdout + r.stderr).split('\n').filter((l) => /(^|: )\+ /.test(l))
}

function warnings(r: StackerResult): string[] {
  return r.stderr
    .split('\n')
    .filter((l) => /remote cache|remote cached|push the cache/.test(l) && !l.includes('found remote cached layer'))
}

/** Every blob in the layout has the digest it is named by. */
async function assertLayoutVerified(layout: string): Promise<void> {
  const dir = join(layout, 'blobs', 'sha256')
  for (const name of await readdir(dir)) {
    const hex = createHash('sha256')
      .update(await readFile(join(dir, name)))
      .digest('hex')
    expect(hex, `blob ${name}`).toBe(name)
  }
}

/** The filesystem of `app` as machine A builds it. */
async function checkApp(p: TempProject, tag = 'app'): Promise<string> {
  const root = await umociUnpack(p.path('oci'), tag, p.path(`unpack-${tag}-${Date.now()}`))
  expect(await readFile(join(root, 'app'), 'utf8')).toBe('app\n')
  expect((await lstat(join(root, 'applink'))).isSymbolicLink()).toBe(true)
  expect(await readFile(join(root, 'data'), 'utf8')).toBe('shared data\n')
  expect((await stat(join(root, 'data'))).ino).toBe((await stat(join(root, 'data-hardlink'))).ino)
  await expect(stat(join(root, 'etc/x/hi'))).rejects.toThrow()
  expect(await readFile(join(root, 'etc/x/keep'), 'utf8')).toBe('keep\n')
  expect((await readdir(join(root, 'opt/tree'))).sort()).toEqual(['n'])
  expect(await readFile(join(root, 'ovl/o.txt'), 'utf8')).toBe('overlay file\n')
  const owned = await stat(join(root, 'owned'))
  expect([owned.uid, owned.gid]).toEqual([1234, 5678])
  expect(await readFile(join(root, 'token-note'), 'utf8')).toBe(`token length ${SECRET.length}\n`)
  return root
}

// ---------------------------------------------------------------------------------------------
// A reverse proxy in front of a registry: answers 404 for one blob, or flips a byte of another.

interface FaultProxy {
  host: string
  missing: Set<string>
  corrupt: Set<string>
  close(): Promise<void>
}

async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const [uhost, uport] = upstream.split(':')
  const missing = new Set<string>()
  const corrupt = new Set<string>()
  const server = http.createServer((req, res) => {
    const blob = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(req.url ?? '')?.[1]
    if (blob && missing.has(blob)) {
      res.writeHead(404, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry' }] }))
      return
    }
    const up = http.request(
      { host: uhost, port: Number(uport), method: req.method, path: req.url, headers: req.headers },
      (ures) => {
        res.writeHead(ures.statusCode ?? 502, ures.headers)
        if (!(req.method === 'GET' && blob && corrupt.has(blob))) {
          ures.pipe(res)
          return
        }
        let flipped = false
        ures.on('data', (c: Buffer) => {
          const chunk = Buffer.from(c)
          if (!flipped && chunk.length > 0) {
            chunk[chunk.length >> 1] = (chunk[chunk.length >> 1] ?? 0) ^ 0xff
            flipped = true
          }
          res.write(chunk)
        })
        ures.on('end', () => res.end())
      },
    )
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    missing,
    corrupt,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

// ---------------------------------------------------------------------------------------------
// The registry API, for looking at what was pushed.

async function tagsOf(reg: Registry, repo: string): Promise<string[]> {
  const res = await fetch(`${reg.url}/v2/${repo}/tags/list`)
  if (res.status === 404) return []
  return ((await res.json()) as { tags: string[] | null }).tags ?? []
}

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json'

async function getManifest(
  reg: Registry,
  repo: string,
  tag: string,
): Promise<{ config: { digest: string }; layers: Array<{ digest: string }>; [k: string]: unknown }> {
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: MANIFEST } })
  return (await res.json()) as never
}

async function getBlob(reg: Registry, repo: string, digest: string): Promise<Buffer> {
  return Buffer.from(await (await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`)).arrayBuffer())
}

async function putBlob(reg: Registry, repo: string, bytes: Buffer): Promise<string> {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
  const start = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' })
  const loc = new URL(start.headers.get('location') ?? '', reg.url)
  loc.searchParams.set('digest', digest)
  const put = await fetch(loc, { method: 'PUT', body: bytes, headers: { 'content-type': 'application/octet-stream' } })
  if (put.status !== 201) throw new Error(`blob upload: ${put.status}`)
  return digest
}

/** The records of every cache artifact in `repo`. */
async function records(reg: Registry, repo: string): Promise<Array<Record<string, unknown>>> {
  const out: Array<Record<string, unknown>> = []
  for (const tag of await tagsOf(reg, repo)) {
    const m = await getManifest(reg, repo, tag)
    out.push(JSON.parse((await getBlob(reg, repo, m.config.digest)).toString('utf8')) as Record<string, unknown>)
  }
  return out
}

/** Every file of the registry's storage whose bytes contain `needle`. */
async function storageContaining(dir: string, needle: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const abs = join(d, e.name)
      if (e.isDirectory()) await walk(abs)
      else if (e.isFile() && (await readFile(abs)).includes(needle)) out.push(abs)
    }
  }
  await walk(dir)
  return out
}

// ---------------------------------------------------------------------------------------------

let reg: Registry
let authed: Registry
let a: TempProject
let aDigests: Record<string, string>

beforeAll(async () => {
  reg = await startRegistry()
  authed = await startRegistry({ htpasswd: TEST_USER.htpasswd })
}, 60_000)

afterAll(async () => {
  await reg?.stop()
  await authed?.stop()
})

describe('a cache shared through a registry', () => {
  it('machine A pushes every layer; machine B runs none, gets the same digests, and builds children on them', async () => {
    a = await project({ 'stacker.yaml': stackerYaml(), ...FILES })
    const ra = expectOk(
      await build(a, ['--layer-type', 'tar', '--layer-type', 'squashfs', '--cache-to', `docker://${reg.host}/cache`]),
    )
    expect(ranSteps(ra).length).toBeGreaterThan(0)
    aDigests = await digests(a)
    expect(Object.keys(aDigests).sort()).toEqual([...TAGS, ...TAGS.map((t) => `${t}-squashfs`)].sort())
    // One artifact per layer, build_only included.
    expect((await tagsOf(reg, 'cache')).length).toBe(4)

    const b = await machine()
    const rb = expectOk(
      await build(b, ['--layer-type', 'tar', '--layer-type', 'squashfs', '--cache-from', `docker://${reg.host}/cache`]),
    )
    for (const name of ['base', ...TAGS]) expect(rb.stderr).toContain(`found remote cached layer ${name}`)
    expect(ranSteps(rb)).toEqual([])
    expect(warnings(rb)).toEqual([])
    expect(await digests(b)).toEqual(aDigests)
    await checkApp(b)
    await assertLayoutVerified(b.path('oci'))

    // A second build on B is a local hit; a child B adds runs on the materialised filesystems
    // (found through recursive-build, as a CI job of several files would).
    const again = expectOk(await build(b, ['--layer-type', 'tar', '--layer-type', 'squashfs']))
    expect(ranSteps(again)).toEqual([])
    expect(await digests(b)).toEqual(aDigests)
    await writeFile(
      b.path('stacker.yaml'),
      stackerYaml(
        'extra:\n  from:\n    type: built\n    tag: leaf\n  run: cat /data /app /mid /leaf /ovl/o.txt > /all && ls /opt/tree > /tree\n',
      ),
    )
    const rc = expectOk(
      await stacker(
        [
          'recursive-build',
          '--substitute',
          `BB=${fixtures().BUSYBOX_OCI}`,
          '--substitute',
          `TOKEN=${SECRET}`,
          '--cache-from',
          `docker://${reg.host}/cache`,
        ],
        { cwd: b.dir, env: env(b) },
      ),
    )
    expect(ranSteps(rc).length).toBeGreaterThan(0)
    expect(ranSteps(rc).every((l) => l.startsWith('extra: '))).toBe(true)
    const root = await umociUnpack(b.path('oci'), 'extra', b.path('unpack-extra'))
    expect(await readFile(join(root, 'all'), 'utf8')).toBe('shared data\napp\nmid\nleaf\noverlay file\n')
    expect(await readFile(join(root, 'tree'), 'utf8')).toBe('n\n')
  })

  it('records hold no host path and no build_env value; another build_env value is a miss', async () => {
    const b = await machine()
    for (const needle of [SECRET, a.dir, b.dir, fixtures().busyboxLayout])
      expect(await storageContaining(reg.dir, needle), needle).toEqual([])
    const recs = await records(reg, 'cache')
    expect(recs).toHaveLength(4)
    for (const r of recs) {
      const text = JSON.stringify(r)
      expect(text).not.toContain('/tmp/')
      expect(text).not.toContain(SECRET)
      expect(Object.keys(r).sort()).toEqual(
        [
          'chain',
          'generatedLabels',
          'key',
          'layer',
          'outputs',
          'ownContent',
          'ownContentBlob',
          'platform',
          'projections',
          'schemaVersion',
        ].sort(),
      )
    }

    const r = expectOk(
      await stacker(
        [
          'build',
          '--substitute',
          `BB=${fixtures().BUSYBOX_OCI}`,
          '--substitute',
          'TOKEN=another-value',
          '--cache-from',
          `docker://${reg.host}/cache`,
        ],
        { cwd: b.dir, env: env(b) },
      ),
    )
    expect(r.stderr).not.toContain('found remote cached layer')
    expect(ranSteps(r).some((l) => l.includes('cp /stacker/imports/data.txt'))).toBe(true)
  })

  it('never pushes layers with binds or under --no-cache; cache_to comes from the config file', async () => {
    const p = await project({
      'stacker.yaml': `plain:\n  from:\n    type: oci\n    url: \${{BB}}\n  run: echo plain > /plain\nbound:\n  from:\n    type: built\n    tag: plain\n  binds:\n    - bind-src -> /bound\n  run: ls /bound > /listing\n`,
      'bind-src/f': 'x\n',
      'conf.yaml': `cache_to: docker://${reg.host}/fromconf\n`,
    })
    expectOk(
      await stacker(['--config', p.path('conf.yaml'), 'build', '--substitute', `BB=${fixtures().BUSYBOX_OCI}`], {
        cwd: p.dir,
        env: env(p),
      }),
    )
    const recs = await records(reg, 'fromconf')
    expect(recs.map((r) => r.layer)).toEqual(['plain'])

    expectOk(await build(p, ['--no-cache', '--cache-to', `docker://${reg.host}/nocache`]))
    expect(await tagsOf(reg, 'nocache')).toEqual([])
  })
})

describe('faults build locally, with one warning', () => {
  let proxy: FaultProxy
  beforeAll(async () => {
    proxy = await startFaultProxy(reg.host)
  })
  afterAll(async () => {
    await proxy?.close()
  })

  async function expectLocalBuild(r: StackerResult, b: TempProject, warning: RegExp): Promise<void> {
    expectOk(r)
    expect(warnings(r)).toEqual([expect.stringMatching(warning)])
    expect(ranSteps(r).length).toBeGreaterThan(0)
    expect(await digests(b)).toEqual(
      Object.fromEntries(Object.entries(aDigests).filter(([t]) => !t.endsWith('-squashfs'))),
    )
    await checkApp(b)
    await assertLayoutVerified(b.path('oci'))
  }

  it('a registry that is down', async () => {
    const b = await machine()
    const port = await freePort()
    const r = await build(b, ['--cache-from', `docker://127.0.0.1:${port}/cache`])
    await expectLocalBuild(
      r,
      b,
      /remote cache docker:\/\/127\.0\.0\.1:\d+\/cache unavailable, building without it: .*connection refused/,
    )
  })

  it('a registry that refuses us (401)', async () => {
    const b = await machine()
    const r = await build(b, ['--cache-from', `docker://${authed.host}/cache`])
    await expectLocalBuild(r, b, /remote cache .* unavailable, building without it: .*unauthorized \(401\)/)
  })

  it('a record whose blob is missing, or corrupt', async () => {
    const recs = await records(reg, 'cache')
    const base = recs.find((r) => r.layer === 'base') as { ownContentBlob: { descriptor: { digest: string } } }
    proxy.missing.add(base.ownContentBlob.descriptor.digest)
    try {
      const b = await machine()
      const r = await build(b, ['--cache-from', `docker://${proxy.host}/cache`])
      // base and app (whose image holds base's layer) are rebuilt; base's content is the same, so
      // the keys of the layers above still match.
      expectOk(r)
      expect(warnings(r).sort()).toEqual([
        expect.stringMatching(
          /^app: remote cached layer app in .* is unusable \(.*blob unknown.*\); building it locally$/,
        ),
        expect.stringMatching(
          /^base: remote cached layer base in .* is unusable \(.*blob unknown.*\); building it locally$/,
        ),
      ])
      expect(r.stderr).toContain('found remote cached layer mid')
      expect(await digests(b)).toEqual(
        Object.fromEntries(Object.entries(aDigests).filter(([t]) => !t.endsWith('-squashfs'))),
      )
      await checkApp(b)
      await assertLayoutVerified(b.path('oci'))
    } finally {
      proxy.missing.clear()
    }

    const app = recs.find((r) => r.layer === 'app') as {
      ownContent: string
      projections: Array<{ content: string; output: string; descriptor: { digest: string } }>
    }
    const own = app.projections.find((p) => p.output === 'tar+false' && p.content === app.ownContent)
    proxy.corrupt.add(own?.descriptor.digest ?? 'none')
    try {
      const b = await machine()
      const r = await build(b, ['--cache-from', `docker://${proxy.host}/cache`])
      expectOk(r)
      expect(warnings(r)).toEqual([
        expect.stringMatching(
          /remote cached layer app in .* is unusable \(.*does not match its digest.*\); building it locally/,
        ),
      ])
      expect(await digests(b)).toEqual(
        Object.fromEntries(Object.entries(aDigests).filter(([t]) => !t.endsWith('-squashfs'))),
      )
      await checkApp(b)
      await assertLayoutVerified(b.path('oci'))
    } finally {
      proxy.corrupt.clear()
    }
  })

  it('a push the registry refuses warns, or fails the build with --cache-to-required', async () => {
    const p = await machine()
    const r = await build(p, ['--cache-to', `docker://${authed.host}/cache`])
    expectOk(r)
    expect(warnings(r)).toEqual([
      expect.stringMatching(
        /couldn't push the cache of \w+ to docker:\/\/.*\/cache: .*unauthorized \(401\).*; the build goes on without it/,
      ),
    ])
    const required = await build(p, ['--cache-to', `docker://${authed.host}/cache`, '--cache-to-required'])
    expect(required.exitCode).toBe(1)
    expect(required.stderr.split('\n').filter((l) => l.startsWith('error:'))).toEqual([
      expect.stringMatching(/^error: couldn't push the cache of \w+ to docker:\/\/.*\/cache: .*unauthorized \(401\)/),
    ])
  })

  it('a record for another platform, and one whose own content is not what its id says (rewritten)', async () => {
    const tags = await tagsOf(reg, 'cache')
    const recs = await records(reg, 'cache')
    const leaf = recs.find((r) => r.layer === 'leaf') as { ownContentBlob: { descriptor: unknown } }
    for (const tag of tags) {
      const m = await getManifest(reg, 'cache', tag)
      const rec = JSON.parse((await getBlob(reg, 'cache', m.config.digest)).toString('utf8')) as Record<string, unknown>
      if (rec.layer === 'app') rec.platform = { os: 'linux', architecture: 'riscv64' }
      // A valid blob (leaf's), under mid's diffId and content id: only uncompressing it can tell.
      else if (rec.layer === 'mid')
        rec.ownContentBlob = { ...(rec.ownContentBlob as object), descriptor: leaf.ownContentBlob.descriptor }
      else continue
      const bytes = Buffer.from(JSON.stringify(rec))
      const digest = await putBlob(reg, 'cache', bytes)
      const next = { ...m, config: { ...m.config, digest, size: bytes.byteLength } }
      const put = await fetch(`${reg.url}/v2/cache/manifests/${tag}`, {
        method: 'PUT',
        body: JSON.stringify(next),
        headers: { 'content-type': MANIFEST },
      })
      expect(put.status).toBe(201)
    }
    const b = await machine()
    const r = await build(b, ['--cache-from', `docker://${reg.host}/cache`])
    expectOk(r)
    expect(warnings(r).sort()).toEqual([
      expect.stringMatching(
        /^app: remote cached layer app in .* is for linux\/riscv64, not linux\/\w+; building it locally$/,
      ),
      expect.stringMatching(
        /^mid: remote cached layer mid in .* is unusable \(blob sha256:\w+ uncompresses to sha256:\w+, not sha256:\w+\); building it locally$/,
      ),
    ])
    expect(ranSteps(r).some((l) => l.endsWith('+ echo mid'))).toBe(true)
    expect(r.stderr).toContain('found remote cached layer leaf')
    expect(ranSteps(r).some((l) => l.endsWith('+ echo app'))).toBe(true)
    expect(await digests(b)).toEqual(
      Object.fromEntries(Object.entries(aDigests).filter(([t]) => !t.endsWith('-squashfs'))),
    )
    await checkApp(b)
  })
})

describe('pulled filesystems', () => {
  it('are extracted when first read, and refused if they do not extract to their content id', async () => {
    const recs = await records(reg, 'cache')
    const idOf = (name: string) => (recs.find((r) => r.layer === name) as { ownContent: string }).ownContent
    const b = await machine()
    const r = expectOk(await build(b, ['--cache-from', `docker://${reg.host}/cache`]))
    expect(r.stderr).toContain('found remote cached layer leaf')
    const pulled = b.path('.stacker/layer-bases/pulled')
    // app and mid (their records rewritten above) were built here, on base's filesystem, which was
    // extracted for that; nothing read leaf's: its tar waits, unextracted.
    expect((await readdir(pulled)).sort()).toEqual([`${idOf('leaf')}.json`, `${idOf('leaf')}.tar.gz`])
    // The tar of leaf's diff swapped for base's: the child that reads leaf's filesystem fails.
    const baseBlob = (recs.find((x) => x.layer === 'base') as { ownContentBlob: { descriptor: { digest: string } } })
      .ownContentBlob.descriptor.digest
    await writeFile(
      join(pulled, `${idOf('leaf')}.tar.gz`),
      await readFile(b.path(`oci/blobs/sha256/${baseBlob.slice('sha256:'.length)}`)),
    )
    await writeFile(
      b.path('stacker.yaml'),
      stackerYaml('extra:\n  from:\n    type: built\n    tag: leaf\n  run: cat /data > /copy\n'),
    )
    const bad = await build(b, [])
    expect(bad.exitCode).toBe(1)
    expect(bad.stderr.split('\n').filter((l) => l.startsWith('error:'))).toEqual([
      expect.stringContaining(`the content ${idOf('leaf')} pulled from the shared cache extracts to diff`),
    ])
  })
})
