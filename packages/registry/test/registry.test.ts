import { randomBytes } from 'node:crypto'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createLogger, type LogRecord, type ProgressEvent, StackerError, sha256Digest } from '@stacker/core'
import { type Descriptor, type ImageIndex, MediaTypes, OciLayout } from '@stacker/oci'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  MountSources,
  parseImageRef,
  pullImage,
  pushImage,
  pushImageDetailed,
  RegistryClient,
  type RegistryClientOptions,
  SOURCE_ANNOTATION,
  sourceAnnotation,
} from '../src/index.js'
import {
  buildImage,
  freePort,
  listBlobs,
  listTemp,
  run,
  skopeoRawDigest,
  startProxy,
  startRegistry,
  type TestProxy,
  type TestRegistry,
  tempDir,
} from './helpers.js'

// bcrypt (cost 4) of the test password, made with Python's crypt(METHOD_BLOWFISH).
const USER = 'stacker'
const PASSWORD = 's3cret-test-pw'
const HTPASSWD = `${USER}:$2b$04$3rkH9cQLCHetY1HN3iIbJOGM8hTZiGK4yAHYkwo8Kma50oYaizV.S`

const dirs: string[] = []
async function fresh(prefix = 'stacker-reg-test-'): Promise<string> {
  const d = await tempDir(prefix)
  dirs.push(d)
  return d
}
async function freshLayout(): Promise<OciLayout> {
  return OciLayout.open(join(await fresh(), 'oci'), { create: true })
}

/** A client that reads no auth file of this machine and gives up quickly. */
function client(ref: string, opts: RegistryClientOptions = {}): RegistryClient {
  return new RegistryClient(parseImageRef(ref), {
    insecure: true,
    retries: 2,
    retryDelayMs: 20,
    env: { HOME: '/nonexistent' },
    ...opts,
  })
}

async function thrown(p: Promise<unknown>): Promise<StackerError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  )
  expect(e).toBeInstanceOf(StackerError)
  return e as StackerError
}

let reg: TestRegistry
let authReg: TestRegistry
let seed: OciLayout
let seedDesc: Descriptor
let bigDesc: Descriptor
let indexDesc: Descriptor

beforeAll(async () => {
  ;[reg, authReg] = await Promise.all([startRegistry(), startRegistry({ htpasswd: HTPASSWD })])
  seed = await OciLayout.open(join(await fresh(), 'seed'), { create: true })
  seedDesc = await buildImage(seed, 'v1', [{ 'hello.txt': 'hello\n' }, { 'world.txt': 'world\n' }])
  bigDesc = await buildImage(seed, 'big', [{ 'random.bin': randomBytes(300 * 1024) }], { gzip: false })
  const amd = await buildImage(seed, 'amd', [{ 'arch.txt': 'amd64\n' }], { architecture: 'amd64' })
  const arm = await buildImage(seed, 'arm', [{ 'arch.txt': 'arm64\n' }], { architecture: 'arm64' })
  const index: ImageIndex = {
    schemaVersion: 2,
    mediaType: MediaTypes.index,
    manifests: [
      { ...amd, platform: { os: 'linux', architecture: 'amd64' } },
      { ...arm, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    ],
  }
  indexDesc = await seed.putJson(MediaTypes.index, index)
  await seed.setTag('multi', indexDesc)
  const copy = (args: string[]) => run('skopeo', ['copy', '--insecure-policy', '--dest-tls-verify=false', ...args])
  await Promise.all([
    copy([`oci:${seed.dir}:v1`, `docker://${reg.host}/test/img:v1`]),
    copy(['--format', 'v2s2', `oci:${seed.dir}:v1`, `docker://${reg.host}/test/docker:v1`]),
    copy(['--all', `oci:${seed.dir}:multi`, `docker://${reg.host}/test/multi:latest`]),
    copy(['--dest-creds', `${USER}:${PASSWORD}`, `oci:${seed.dir}:v1`, `docker://${authReg.host}/secure/img:v1`]),
    copy(['--dest-creds', `${USER}:${PASSWORD}`, `oci:${seed.dir}:v1`, `docker://${authReg.host}/other/img:v1`]),
  ])
}, 60_000)

afterAll(async () => {
  await Promise.all([reg?.stop(), authReg?.stop()])
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

describe('pull', () => {
  let proxy: TestProxy | undefined
  afterEach(async () => {
    await proxy?.close()
    proxy = undefined
  })

  it('copies an image into a layout, verified, then pulls nothing the second time', async () => {
    proxy = await startProxy(reg.host)
    const ref = `docker://${proxy.host}/test/img:v1`
    const layout = await freshLayout()
    const events: ProgressEvent[] = []
    const logger = createLogger(
      () => {},
      (e) => events.push(e),
    )
    const desc = await pullImage({ ref: parseImageRef(ref), layout, tag: 'base', client: client(ref, { logger }) })
    expect(desc.digest).toBe(await skopeoRawDigest(`docker://${reg.host}/test/img:v1`))
    expect(desc).toEqual({ mediaType: MediaTypes.manifest, digest: seedDesc.digest, size: seedDesc.size })
    expect((await layout.getTag('base'))?.digest).toBe(desc.digest)
    const img = await layout.readImage('base')
    for (const l of img.manifest.layers) expect(await layout.hasBlob(l.digest)).toBe(true)
    expect(proxy.blobGets()).toHaveLength(3)
    const done = events.filter((e) => e.done && e.kind === 'pull').map((e) => e.id)
    expect(done.sort()).toEqual([img.manifest.config.digest, ...img.manifest.layers.map((l) => l.digest)].sort())

    const c = client(ref)
    expect(await c.headManifest('v1')).toEqual({ mediaType: MediaTypes.manifest, digest: desc.digest, size: desc.size })
    expect(await c.headManifest('nope')).toBeUndefined()
    expect(await c.hasBlob(img.manifest.config.digest)).toBe(true)
    expect(await c.hasBlob(sha256Digest('absent'))).toBe(false)

    proxy.requests.length = 0
    const again = await pullImage({ ref: parseImageRef(ref), layout, tag: 'base2', client: client(ref) })
    expect(again.digest).toBe(desc.digest)
    expect(proxy.blobGets()).toEqual([])
    expect(proxy.requests.some((r) => r.path.includes('/manifests/v1'))).toBe(true)
  })

  it('keeps a Docker schema 2 manifest byte for byte', async () => {
    const ref = `docker://${reg.host}/test/docker:v1`
    const layout = await freshLayout()
    const desc = await pullImage({ ref: parseImageRef(ref), layout, tag: 't', client: client(ref) })
    expect(desc.mediaType).toBe(MediaTypes.dockerManifest)
    expect(desc.digest).toBe(await skopeoRawDigest(ref))
    expect(desc.digest).not.toBe(seedDesc.digest)
    expect(sha256Digest(await layout.readBlob(desc.digest))).toBe(desc.digest)
    expect((await layout.listTags()).map((t) => t.descriptor.mediaType)).toEqual([MediaTypes.dockerManifest])
  })

  it('chooses the platform from an index, or copies the whole index', async () => {
    const ref = `docker://${reg.host}/test/multi:latest`
    const c = client(ref)
    const arm = await c.getManifest('latest', { platform: { os: 'linux', architecture: 'arm64' } })
    expect(arm.index?.descriptor.digest).toBe(indexDesc.digest)
    expect(arm.descriptor.digest).toBe((await seed.getTag('arm'))?.digest)
    expect(arm.descriptor.platform).toMatchObject({ architecture: 'arm64' })
    const missing = await thrown(c.getManifest('latest', { platform: { os: 'linux', architecture: 's390x' } }))
    expect(missing.code).toBe('NOT_FOUND')
    expect(missing.message).toBe(
      `pulling ${ref}: no image found in manifest list for architecture s390x, variant "", OS linux`,
    )

    const layout = await freshLayout()
    const amd = await pullImage({
      ref: parseImageRef(ref),
      layout,
      platform: { os: 'linux', architecture: 'amd64' },
      tag: 'amd',
      client: c,
    })
    expect(amd.digest).toBe((await seed.getTag('amd'))?.digest)
    expect(await layout.hasBlob(indexDesc.digest)).toBe(false)

    const all = await pullImage({ ref: parseImageRef(ref), layout, all: true, tag: 'all', client: c })
    expect(all.digest).toBe(indexDesc.digest)
    const armImage = await layout.readImage('all', { platform: { os: 'linux', architecture: 'arm64' } })
    expect(armImage.config.architecture).toBe('arm64')
  })

  it('verifies every blob and writes nothing when one does not match', async () => {
    proxy = await startProxy(reg.host)
    const ref = `docker://${proxy.host}/test/img:v1`
    const layer = (await seed.readImage('v1')).manifest.layers[1]!
    proxy.corrupt = layer.digest
    const layout = await freshLayout()
    const before = await readFile(join(layout.dir, 'index.json'), 'utf8')
    const err = await thrown(pullImage({ ref: parseImageRef(ref), layout, tag: 'x', client: client(ref) }))
    expect(err.code).toBe('DIGEST')
    expect(err.message).toMatch(
      new RegExp(`^pulling ${ref}: blob ${layer.digest} does not match its digest \\(got sha256:[0-9a-f]{64}\\)$`),
    )
    expect(await listBlobs(layout.dir)).toEqual([])
    expect(await listTemp(layout.dir)).toEqual([])
    expect(await readFile(join(layout.dir, 'index.json'), 'utf8')).toBe(before)
  })

  it('retries a 503 and gives up with a one-line error after the last retry', async () => {
    proxy = await startProxy(reg.host)
    const ref = `docker://${proxy.host}/test/img:v1`
    proxy.fail503 = 1
    const layout = await freshLayout()
    const desc = await pullImage({ ref: parseImageRef(ref), layout, client: client(ref) })
    expect(desc.digest).toBe(seedDesc.digest)
    expect(proxy.requests[0]?.status).toBe(503)

    const proxy2 = await startProxy(reg.host)
    try {
      const ref2 = `docker://${proxy2.host}/test/img:v1`
      proxy2.fail503 = 1000
      const err = await thrown(pullImage({ ref: parseImageRef(ref2), layout, client: client(ref2, { retries: 1 }) }))
      expect(err.code).toBe('REGISTRY')
      expect(err.message).toMatch(new RegExp(`^pulling ${ref2}: .*\\(503\\)$`))
      expect(proxy2.requests).toHaveLength(2)
    } finally {
      await proxy2.close()
    }
  })

  it('fails with one line naming the reference, and writes nothing', async () => {
    const layout = await freshLayout()
    const blobsBefore = await listBlobs(layout.dir)
    const port = await freePort()
    const cases: [string, string, RegExp][] = [
      [`docker://${reg.host}/test/img:nope`, 'NOT_FOUND', /: manifest unknown \(404\)$/],
      [`docker://${reg.host}/no/such:v1`, 'NOT_FOUND', /: .*\(404\)$/],
      [`docker://127.0.0.1:${port}/x:v1`, 'REGISTRY', /: connection refused$/],
      [
        'docker://nonexistent.invalid/x:v1',
        'REGISTRY',
        /: unknown host nonexistent\.invalid( \(temporary DNS failure\))?$/,
      ],
    ]
    for (const [ref, code, re] of cases) {
      const err = await thrown(pullImage({ ref: parseImageRef(ref), layout, tag: 't', client: client(ref) }))
      expect(err.code).toBe(code)
      expect(err.message.startsWith(`pulling ${ref}: `)).toBe(true)
      expect(err.message).toMatch(re)
      expect(err.message).not.toContain('\n')
    }
    expect(await listBlobs(layout.dir)).toEqual(blobsBefore)
    expect(await layout.listTags()).toEqual([])
  })

  it('verifies TLS unless told otherwise', async () => {
    const plain = `docker://${reg.host}/test/img:v1`
    const err = await thrown(client(plain, { insecure: false }).getManifest('v1'))
    expect(err.code).toBe('REGISTRY')
    expect(err.message).toBe(`pulling ${plain}: TLS error: wrong version number (the server does not speak TLS)`)

    const tlsReg = await startRegistry({ tls: true })
    try {
      const ref = `docker://${tlsReg.host}/tls/img:v1`
      const selfSigned = await thrown(
        pushImage({
          layout: seed,
          source: 'v1',
          ref: parseImageRef(ref),
          tags: [],
          client: client(ref, { insecure: false }),
        }),
      )
      expect(selfSigned.message).toBe(`pushing ${ref}: TLS error: self-signed certificate`)
      expect(selfSigned.hint).toMatch(/--skip-tls/)
      await pushImage({ layout: seed, source: 'v1', ref: parseImageRef(ref), tags: [], client: client(ref) })
      expect(await skopeoRawDigest(ref)).toBe(seedDesc.digest)
    } finally {
      await tlsReg.stop()
    }
  })
})

describe('push', () => {
  it('pushes under several tags; skopeo reads back the same digests', async () => {
    const ref = `docker://${reg.host}/pushed/img:t1`
    const res = await pushImageDetailed({
      layout: seed,
      source: 'v1',
      ref: parseImageRef(ref),
      tags: ['t1', 't2'],
      client: client(ref),
    })
    expect(res.descriptor.digest).toBe(seedDesc.digest)
    expect([...res.blobs.values()]).toEqual(['uploaded', 'uploaded', 'uploaded'])
    for (const t of ['t1', 't2'])
      expect(await skopeoRawDigest(`docker://${reg.host}/pushed/img:${t}`)).toBe(seedDesc.digest)
    const inspect = JSON.parse(
      await run('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/pushed/img:t2`]),
    )
    expect(inspect.Digest).toBe(seedDesc.digest)
    expect(inspect.Layers).toEqual((await seed.readImage('v1')).manifest.layers.map((l) => l.digest))

    const out = join(await fresh(), 'copy')
    await run('skopeo', [
      'copy',
      '--insecure-policy',
      '--src-tls-verify=false',
      `docker://${reg.host}/pushed/img:t2`,
      `oci:${out}:c`,
    ])
    const copied = await OciLayout.open(out)
    expect((await copied.getTag('c'))?.digest).toBe(seedDesc.digest)

    const again = await pushImageDetailed({
      layout: seed,
      source: 'v1',
      ref: parseImageRef(ref),
      tags: [],
      client: client(ref),
    })
    expect([...again.blobs.values()]).toEqual(['exists', 'exists', 'exists'])
  })

  it('mounts blobs from another repository of the same registry', async () => {
    const from = `docker://${reg.host}/mount/a:v1`
    await pushImage({ layout: seed, source: 'v1', ref: parseImageRef(from), tags: [], client: client(from) })
    const ref = `docker://${reg.host}/mount/b:v1`
    const res = await pushImageDetailed({
      layout: seed,
      source: 'v1',
      ref: parseImageRef(ref),
      tags: [],
      mountFrom: 'mount/a',
      client: client(ref),
    })
    expect([...res.blobs.values()]).toEqual(['mounted', 'mounted', 'mounted'])
    expect(await skopeoRawDigest(ref)).toBe(seedDesc.digest)
  })

  it('mounts each blob from the repository a function names, and uploads those it names none for', async () => {
    const proxy = await startProxy(reg.host)
    try {
      const from = `docker://${reg.host}/permount/a:v1`
      await pushImage({ layout: seed, source: 'v1', ref: parseImageRef(from), tags: [], client: client(from) })
      const m = (await seed.readImage('v1')).manifest
      const [first, second] = m.layers
      const ref = `docker://${proxy.host}/permount/b:v1`
      const asked: string[] = []
      const res = await pushImageDetailed({
        layout: seed,
        source: 'v1',
        ref: parseImageRef(ref),
        tags: [],
        mountFrom: (d) => {
          asked.push(d)
          return d === first?.digest ? 'permount/a' : undefined
        },
        concurrency: 2,
        client: client(ref),
      })
      expect(asked.sort()).toEqual([m.config.digest, ...m.layers.map((l) => l.digest)].sort())
      // In the manifest's order, whatever order they finished in.
      expect([...res.blobs.entries()]).toEqual([
        [m.config.digest, 'uploaded'],
        [first?.digest, 'mounted'],
        [second?.digest, 'uploaded'],
      ])
      const mounts = proxy.requests.filter((r) => r.method === 'POST' && r.path.includes('mount='))
      expect(mounts.map((r) => new URL(r.path, 'http://x').searchParams.get('from'))).toEqual(['permount/a'])
      expect(await skopeoRawDigest(`docker://${reg.host}/permount/b:v1`)).toBe(seedDesc.digest)
    } finally {
      await proxy.close()
    }
  })

  it('records where a pulled image came from, and mounts its blobs from there', async () => {
    const src = `docker://${reg.host}/test/img:v1`
    const layout = await freshLayout()
    await pullImage({
      ref: parseImageRef(src),
      layout,
      tag: 'pulled',
      tagAnnotations: sourceAnnotation(parseImageRef(src)),
      client: client(src),
    })
    expect((await layout.getTag('pulled'))?.annotations?.[SOURCE_ANNOTATION]).toBe(`${reg.host}/test/img`)

    const sources = new MountSources()
    await sources.addFromLayout(layout)
    const dest = parseImageRef(`docker://${reg.host}/recorded/copy:v1`)
    const m = (await seed.readImage('v1')).manifest
    for (const b of [m.config, ...m.layers]) expect(sources.sourceFor(dest, b.digest)).toBe('test/img')
    // Not on another registry, not from the repository itself, not for a blob it never saw.
    expect(sources.sourceFor(parseImageRef('docker://other.example/recorded/copy'), m.config.digest)).toBeUndefined()
    expect(sources.sourceFor(parseImageRef(src), m.config.digest)).toBeUndefined()
    expect(sources.sourceFor(dest, sha256Digest('never'))).toBeUndefined()
    // What was added last is offered first.
    sources.add(reg.host, 'later/repo', [m.config.digest])
    expect(sources.sourceFor(dest, m.config.digest)).toBe('later/repo')

    const res = await pushImageDetailed({
      layout,
      source: 'pulled',
      ref: dest,
      tags: [],
      mountFrom: sources.forRef(dest),
      client: client(dest.toString()),
    })
    // later/repo does not hold the config: the registry starts an upload instead, and it goes up.
    expect([...res.blobs.values()]).toEqual(['uploaded', 'mounted', 'mounted'])
    expect(await skopeoRawDigest(dest.toString())).toBe(seedDesc.digest)
  })

  it('uploads a blob larger than the chunk size in chunks', async () => {
    const proxy = await startProxy(reg.host)
    try {
      const ref = `docker://${proxy.host}/chunked/img:big`
      const events: ProgressEvent[] = []
      const logger = createLogger(
        () => {},
        (e) => events.push(e),
      )
      const c = client(ref, { chunkSize: 64 * 1024, logger })
      await pushImage({ layout: seed, source: 'big', ref: parseImageRef(ref), tags: [], client: c })
      const layer = (await seed.readImage('big')).manifest.layers[0]!
      expect(layer.size).toBeGreaterThan(4 * 64 * 1024)
      const patches = proxy.requests.filter((r) => r.method === 'PATCH')
      expect(patches).toHaveLength(Math.ceil(layer.size / (64 * 1024)))
      // The config is small: one PUT with its bytes, no PATCH.
      expect(proxy.requests.filter((r) => r.method === 'PUT' && r.path.includes('/blobs/uploads/'))).toHaveLength(2)
      const last = events.filter((e) => e.id === layer.digest).at(-1)
      expect(last).toMatchObject({ kind: 'push', current: layer.size, total: layer.size, done: true })

      expect(await skopeoRawDigest(`docker://${reg.host}/chunked/img:big`)).toBe(bigDesc.digest)
      const pulled = await freshLayout()
      const back = `docker://${reg.host}/chunked/img:big`
      await pullImage({ ref: parseImageRef(back), layout: pulled, client: client(back) })
      expect(sha256Digest(await pulled.readBlob(layer.digest))).toBe(layer.digest)
    } finally {
      await proxy.close()
    }
  })
})

describe('auth', () => {
  const secure = () => `docker://${authReg.host}/secure/img:v1`

  it('says 401 without credentials', async () => {
    const layout = await freshLayout()
    const ref = secure()
    const err = await thrown(pullImage({ ref: parseImageRef(ref), layout, client: client(ref) }))
    expect(err.code).toBe('AUTH')
    expect(err.message).toBe(`pulling ${ref}: unauthorized (401), no credentials for ${authReg.host}`)
    expect(await listBlobs(layout.dir)).toEqual([])
  })

  it('pulls and pushes with --username/--password', async () => {
    const records: LogRecord[] = []
    const logger = createLogger((r) => records.push(r))
    const credentials = { username: USER, password: PASSWORD }
    const ref = secure()
    const layout = await freshLayout()
    const desc = await pullImage({ ref: parseImageRef(ref), layout, client: client(ref, { credentials, logger }) })
    expect(desc.digest).toBe(seedDesc.digest)
    const dest = `docker://${authReg.host}/secure/pushed:p1`
    await pushImage({
      layout,
      source: desc.digest,
      ref: parseImageRef(dest),
      tags: [],
      client: client(dest, { credentials, logger }),
    })
    expect(await skopeoRawDigest(dest, `${USER}:${PASSWORD}`)).toBe(seedDesc.digest)
    expect(records.length).toBeGreaterThan(0)
    const b64 = Buffer.from(`${USER}:${PASSWORD}`).toString('base64')
    for (const text of [JSON.stringify(records), await readFile(join(layout.dir, 'index.json'), 'utf8')]) {
      expect(text).not.toContain(PASSWORD)
      expect(text).not.toContain(b64)
    }
  })

  it('takes the longest matching auth.json entry', async () => {
    const home = await fresh('stacker-auth-home-')
    const file = join(home, 'auth.json')
    const b64 = (s: string) => Buffer.from(s).toString('base64')
    await writeFile(
      file,
      JSON.stringify({
        auths: {
          [authReg.host]: { auth: b64(`${USER}:wrong-password`) },
          [`${authReg.host}/secure`]: { auth: b64(`${USER}:${PASSWORD}`) },
        },
      }),
    )
    const env = { HOME: home, REGISTRY_AUTH_FILE: file }
    const ref = secure()
    const desc = await pullImage({ ref: parseImageRef(ref), layout: await freshLayout(), client: client(ref, { env }) })
    expect(desc.digest).toBe(seedDesc.digest)

    const other = `docker://${authReg.host}/other/img:v1`
    const err = await thrown(
      pullImage({ ref: parseImageRef(other), layout: await freshLayout(), client: client(other, { env }) }),
    )
    expect(err.code).toBe('AUTH')
    expect(err.message).toBe(`pulling ${other}: unauthorized (401) with the credentials of ${file} (${authReg.host})`)
  })

  it('fetches bearer tokens for the scopes a pull, a push and a mount need', async () => {
    const proxy = await startProxy(reg.host)
    try {
      proxy.bearer = { username: USER, password: PASSWORD }
      const credentials = { username: USER, password: PASSWORD }
      const ref = `docker://${proxy.host}/test/img:v1`
      const anonymous = await thrown(
        pullImage({ ref: parseImageRef(ref), layout: await freshLayout(), client: client(ref) }),
      )
      expect(anonymous.message).toBe(`pulling ${ref}: unauthorized (401), no credentials for ${proxy.host}`)

      proxy.tokenScopes.length = 0
      const desc = await pullImage({
        ref: parseImageRef(ref),
        layout: await freshLayout(),
        client: client(ref, { credentials }),
      })
      expect(desc.digest).toBe(seedDesc.digest)
      expect(proxy.tokenScopes).toEqual(['repository:test/img:pull'])

      proxy.tokenScopes.length = 0
      const dest = `docker://${proxy.host}/bearer/pushed:v1`
      const res = await pushImageDetailed({
        layout: seed,
        source: 'v1',
        ref: parseImageRef(dest),
        tags: [],
        mountFrom: 'test/img',
        client: client(dest, { credentials }),
      })
      expect([...res.blobs.values()]).toEqual(['mounted', 'mounted', 'mounted'])
      expect(proxy.tokenScopes).toEqual([
        'repository:bearer/pushed:pull,push repository:test/img:pull',
        'repository:bearer/pushed:pull,push',
      ])
      expect(await skopeoRawDigest(`docker://${reg.host}/bearer/pushed:v1`)).toBe(seedDesc.digest)
    } finally {
      await proxy.close()
    }
  })

  it('names the source of a wrong password, never the password', async () => {
    const ref = secure()
    const password = 'wrong-pw-that-must-not-leak'
    const err = await thrown(
      pullImage({
        ref: parseImageRef(ref),
        layout: await freshLayout(),
        client: client(ref, { credentials: { username: USER, password } }),
      }),
    )
    expect(err.code).toBe('AUTH')
    expect(err.message).toBe(`pulling ${ref}: unauthorized (401) with the credentials of --username`)
    expect(JSON.stringify({ m: err.message, h: err.hint, s: err.stack })).not.toContain(password)
  })
})
