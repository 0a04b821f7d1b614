// Bases (upstream's bats "oci-import", "cp-not-required",
// "empty-layers" and the scratch cases of "import"): tar bases (local and stacker://), oci refs with
// `:`, an output dir shared with the input layout, docker bases from `oci:` urls, scratch, an image
// with no layers, an extra empty layer, one extraction per base digest, and a hostile base layer.
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { copyFile, chmod, lstat, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { pack } from 'tar-stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  expectOk,
  fixtures,
  indexTags,
  layerTarEntries,
  readConfig,
  readManifest,
  type StackerResult,
  stacker,
  type TempProject,
  tempProject,
  umociUnpack,
} from './helpers/index.js'

const SDE = { SOURCE_DATE_EPOCH: '1700000000' }
const norm = (n: string): string => n.replace(/^\.?\//, '').replace(/\/$/, '')

function run(cmd: string, args: string[], cwd: string): void {
  execFileSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
}

/** The digests of the busybox fixture's layers. */
async function busyboxLayers(): Promise<string[]> {
  const index = JSON.parse(await readFile(join(fixtures().busyboxLayout, 'index.json'), 'utf8'))
  const m = JSON.parse(
    await readFile(
      join(fixtures().busyboxLayout, 'blobs/sha256', index.manifests[0].digest.replace('sha256:', '')),
      'utf8',
    ),
  )
  return m.layers.map((l: { digest: string }) => l.digest)
}

describe('bases', () => {
  let p: TempProject
  let r: StackerResult
  const oci = (): string => p.path('oci')
  const unpacked = new Map<string, Promise<string>>()
  const unpack = (tag: string): Promise<string> => {
    let u = unpacked.get(tag)
    if (!u) {
      u = umociUnpack(oci(), tag, p.path(`u-${tag}`))
      unpacked.set(tag, u)
    }
    return u
  }

  beforeAll(async () => {
    const f = fixtures()
    p = await tempProject({ 'hello.txt': 'hello\n' })
    // The output layout already holds the base, tagged busybox (upstream's "oci-import").
    run('skopeo', ['copy', `oci:${f.busyboxLayout}:latest`, `oci:${p.path('oci')}:busybox`], p.dir)
    // A layout whose ref contains `:`.
    run('skopeo', ['copy', `oci:${f.busyboxLayout}:latest`, 'oci:dest:busybox:0.1.1'], p.dir)
    // An image with no layers at all.
    run('umoci', ['init', '--layout', 'zero'], p.dir)
    run('umoci', ['new', '--image', 'zero:empty'], p.dir)
    // The base plus an empty tar layer on top.
    run('skopeo', ['copy', `oci:${f.busyboxLayout}:latest`, 'oci:extra:latest'], p.dir)
    run('tar', ['-cf', 'empty.tar', '--files-from', '/dev/null'], p.dir)
    run('umoci', ['raw', 'add-layer', '--image', 'extra:latest', '--tag', 'withempty', 'empty.tar'], p.dir)
    // busybox-static, not executable, for a scratch base that imports it with mode 0755.
    await copyFile('/bin/busybox', p.path('busybox'))
    await chmod(p.path('busybox'), 0o644)
    await p.write(
      'stacker.yaml',
      `
tarbase:
  from: {type: tar, url: "${f.busyboxTar}"}
  run: echo on-tar > /on-tar
maker:
  from: {type: oci, url: "${f.BUSYBOX_OCI}"}
  run: |
    mkdir -p /payload/sub /out
    echo p1 > /payload/p1
    echo p2 > /payload/sub/p2
    tar -czf /out/root.tar.gz -C /payload .
fromtar:
  from: {type: tar, url: "stacker://maker/out/root.tar.gz"}
colon:
  from: {type: oci, url: "dest:busybox:0.1.1"}
  run: echo colon > /colon
output1:
  from: {type: oci, url: "oci:busybox"}
  run: echo 1 > /output1
output2:
  from: {type: oci, url: "oci:busybox"}
  run: echo 2 > /output2
dockeroci:
  from: {type: docker, url: "oci:${f.busyboxLayout}:latest"}
  run: echo docker > /docker
nothing:
  from: {type: scratch}
scratchbb:
  from: {type: scratch}
  imports:
    - path: busybox
      dest: /bin/busybox
      mode: 0755
  run:
    - "#!/bin/busybox sh"
    - /bin/busybox mkdir -p /out
    - /bin/busybox echo made-by-busybox > /out/made
zero:
  from: {type: oci, url: "zero:empty"}
zerofile:
  from: {type: oci, url: "zero:empty"}
  imports:
    - {path: hello.txt, dest: /hello.txt}
extra:
  from: {type: oci, url: "extra:withempty"}
  run: echo extra > /extra
`,
    )
    r = await stacker(['build'], { cwd: p.dir, env: SDE })
    expectOk(r)
  })
  afterAll(() => p?.cleanup())

  it('keeps the input layout tags in a shared output dir, then adds the new ones in build order', async () => {
    const tags = await indexTags(oci())
    expect(tags[0]).toBe('busybox')
    expect(tags.indexOf('output1')).toBeLessThan(tags.indexOf('output2'))
    expect([...tags].sort()).toEqual(
      [
        'busybox',
        'colon',
        'dockeroci',
        'extra',
        'fromtar',
        'maker',
        'nothing',
        'output1',
        'output2',
        'scratchbb',
        'tarbase',
        'zero',
        'zerofile',
      ].sort(),
    )
    // The input image is still whole and usable.
    expect((await readManifest(oci(), 'busybox')).layers.map((l) => l.digest)).toEqual(await busyboxLayers())
    const root = await unpack('output2')
    expect(await readFile(join(root, 'output2'), 'utf8')).toBe('2\n')
    expect(existsSync(join(root, 'output1'))).toBe(false)
    assertNoMountsUnder(p.dir)
  })

  it('a tar base gives a single layer with the tarball and the run changes', async () => {
    const m = await readManifest(oci(), 'tarbase')
    expect(m.layers).toHaveLength(1)
    expect((await readConfig(oci(), 'tarbase')).rootfs.diff_ids).toHaveLength(1)
    const root = await unpack('tarbase')
    expect(await readFile(join(root, 'on-tar'), 'utf8')).toBe('on-tar\n')
    expect((await stat(join(root, 'bin/busybox'))).mode & 0o111).not.toBe(0)
    const names = (await layerTarEntries(oci(), m.layers[0]!.digest)).map((e) => norm(e.name))
    expect(names).toEqual(expect.arrayContaining(['bin/busybox', 'on-tar']))
    assertNoMountsUnder(p.dir)
  })

  it('a tar base made by an earlier layer (stacker://) holds exactly that tarball', async () => {
    const m = await readManifest(oci(), 'fromtar')
    expect(m.layers).toHaveLength(1)
    const names = (await layerTarEntries(oci(), m.layers[0]!.digest)).map((e) => norm(e.name)).filter((n) => n !== '')
    expect(names.sort()).toEqual(['p1', 'sub', 'sub/p2'])
    const root = await unpack('fromtar')
    expect(await readFile(join(root, 'sub/p2'), 'utf8')).toBe('p2\n')
    assertNoMountsUnder(p.dir)
  })

  it('an oci ref containing `:` and a docker base with an oci: url keep the base layers', async () => {
    const base = await busyboxLayers()
    for (const [tag, file] of [
      ['colon', 'colon'],
      ['dockeroci', 'docker'],
    ]) {
      const m = await readManifest(oci(), tag!)
      expect(m.layers, tag).toHaveLength(base.length + 1)
      expect(m.layers.slice(0, base.length).map((l) => l.digest)).toEqual(base)
      const root = await unpack(tag!)
      expect(await readFile(join(root, file!), 'utf8')).toBe(`${file}\n`)
    }
    assertNoMountsUnder(p.dir)
  })

  it('scratch with nothing gives 0 layers; scratch with an imported busybox runs it', async () => {
    expect((await readManifest(oci(), 'nothing')).layers).toEqual([])
    expect((await readConfig(oci(), 'nothing')).rootfs.diff_ids).toEqual([])
    const m = await readManifest(oci(), 'scratchbb')
    // The dest import's layer, then the run's diff.
    expect(m.layers).toHaveLength(2)
    const root = await unpack('scratchbb')
    expect((await lstat(join(root, 'bin/busybox'))).mode & 0o777).toBe(0o755)
    expect(await readFile(join(root, 'out/made'), 'utf8')).toBe('made-by-busybox\n')
    expect((await readdir(root)).sort()).toEqual(['bin', 'out'])
    assertNoMountsUnder(p.dir)
  })

  it('an image with 0 layers works as a base', async () => {
    expect((await readManifest(oci(), 'zero')).layers).toEqual([])
    const m = await readManifest(oci(), 'zerofile')
    expect(m.layers).toHaveLength(1)
    const root = await unpack('zerofile')
    expect(await readdir(root)).toEqual(['hello.txt'])
    expect(await readFile(join(root, 'hello.txt'), 'utf8')).toBe('hello\n')
    assertNoMountsUnder(p.dir)
  })

  it('a base with an extra empty tar layer keeps it and builds on top', async () => {
    const base = await busyboxLayers()
    const m = await readManifest(oci(), 'extra')
    expect(m.layers).toHaveLength(base.length + 2)
    expect((await readConfig(oci(), 'extra')).rootfs.diff_ids).toHaveLength(base.length + 2)
    const emptyLayer = m.layers[base.length]!
    expect(await layerTarEntries(oci(), emptyLayer.digest)).toEqual([])
    const root = await unpack('extra')
    expect(await readFile(join(root, 'extra'), 'utf8')).toBe('extra\n')
    expect(existsSync(join(root, 'bin/busybox'))).toBe(true)
    assertNoMountsUnder(p.dir)
  })

  it('extracts each base layer digest once, and not again on a rebuild', async () => {
    const content = p.path('roots/.store/content')
    const extracted = (await readdir(content)).filter((e) => e.startsWith('sha256_')).sort()
    const extraManifest = await readManifest(p.path('extra'), 'withempty')
    const want = [...new Set([...(await busyboxLayers()), ...extraManifest.layers.map((l) => l.digest)])]
      .map((d) => `sha256_${d.replace('sha256:', '')}`)
      .sort()
    // Six layers in four layouts use the busybox layer; it is extracted once.
    expect(extracted).toEqual(want)
    const before = await Promise.all(extracted.map(async (e) => (await stat(join(content, e))).ino))
    await p.write('stacker.yaml', (await readFile(p.path('stacker.yaml'), 'utf8')).replace('echo 2 >', 'echo two >'))
    const again = expectOk(await stacker(['build'], { cwd: p.dir, env: SDE }))
    expect(again.stderr).toContain('filesystem output2 built successfully')
    expect(again.stderr).toContain('found cached layer output1')
    const after = (await readdir(content)).filter((e) => e.startsWith('sha256_')).sort()
    expect(after).toEqual(extracted)
    expect(await Promise.all(after.map(async (e) => (await stat(join(content, e))).ino))).toEqual(before)
    expect(await readFile(join(await umociUnpack(oci(), 'output2', p.path('u-output2-b')), 'output2'), 'utf8')).toBe(
      'two\n',
    )
    assertNoMountsUnder(p.dir)
  })
})

/** Writes an OCI layout `dir` with tag `latest` whose one layer is `tarball` (gzipped). */
async function hostileLayout(dir: string, tarball: Buffer): Promise<void> {
  const blobs = join(dir, 'blobs', 'sha256')
  await mkdir(blobs, { recursive: true })
  const put = async (b: Buffer): Promise<{ digest: string; size: number }> => {
    const hex = createHash('sha256').update(b).digest('hex')
    await writeFile(join(blobs, hex), b)
    return { digest: `sha256:${hex}`, size: b.length }
  }
  const layer = await put(gzipSync(tarball))
  const diffId = `sha256:${createHash('sha256').update(tarball).digest('hex')}`
  const config = await put(
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: [diffId] },
        config: {},
      }),
    ),
  )
  const manifest = await put(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }],
      }),
    ),
  )
  await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}')
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          ...manifest,
          annotations: { 'org.opencontainers.image.ref.name': 'latest' },
        },
      ],
    }),
  )
}

type Entry = { name: string; type?: 'file' | 'symlink' | 'link' | 'directory'; linkname?: string; body?: string }

async function tarOf(entries: Entry[]): Promise<Buffer> {
  const p = pack()
  const chunks: Buffer[] = []
  p.on('data', (c: unknown) => {
    chunks.push(c as Buffer)
  })
  const done = new Promise<void>((resolve, reject) => {
    p.on('end', resolve)
    p.on('error', reject)
  })
  for (const e of entries) {
    const type = e.type ?? 'file'
    const body = type === 'file' ? (e.body ?? 'pwned\n') : undefined
    const header = {
      name: e.name,
      type,
      mode: type === 'directory' ? 0o755 : 0o644,
      ...(e.linkname !== undefined ? { linkname: e.linkname } : {}),
    }
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve())
      if (body === undefined) p.entry(header, cb)
      else p.entry(header, body, cb)
    })
  }
  p.finalize()
  await done
  return Buffer.concat(chunks)
}

/** Every path under dir (relative), not descending into `skip`. */
async function listAll(dir: string, skip: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name
      if (join(dir, r) === skip) continue
      out.push(r)
      if (e.isDirectory()) await walk(r)
    }
  }
  await walk('')
  return out
}

describe('a hostile base layer', () => {
  // The build may refuse the layer (one clean error) or contain it; either way nothing is written
  // outside the roots dir.
  async function tryHostile(
    entries: (tag: string) => Entry[],
  ): Promise<{ r: StackerResult; p: TempProject; tag: string }> {
    const tag = randomBytes(6).toString('hex')
    // The import with a destination reads the base (its symlinks decide where /marker lands): base
    // layers are extracted when something first reads them.
    const p = await tempProject({
      'stacker.yaml':
        'h:\n  from: {type: oci, url: "hostile:latest"}\n  imports:\n    - {path: marker, dest: /marker}\n',
      marker: 'marker\n',
    })
    await hostileLayout(p.path('hostile'), await tarOf(entries(tag)))
    const r = await stacker(['build'], { cwd: p.dir, env: SDE, timeoutMs: 120_000 })
    return { r, p, tag }
  }

  function expectCleanOutcome(r: StackerResult): void {
    if (r.exitCode === 0) return
    expect(r.exitCode, r.stderr).toBe(1)
    expect(
      r.stderr.split('\n').filter((l) => l.startsWith('error:')),
      r.stderr,
    ).toHaveLength(1)
    expect(r.stderr).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m)
    expect(r.timedOut).toBe(false)
  }

  /** Nothing named after `tag` exists outside `<project>/roots/.store/content/sha256_*`, in /tmp or at /. */
  async function expectContained(p: TempProject, tag: string): Promise<void> {
    for (const d of ['/tmp', '/', '/etc', '/root', p.dir, p.path('roots'), p.path('roots/.store/content')]) {
      const hits = (await readdir(d)).filter((n) => n.includes(tag))
      expect(hits, d).toEqual([])
    }
    const content = p.path('roots/.store/content')
    const inContent = existsSync(content) ? (await readdir(content)).filter((n) => n.startsWith('sha256_')) : []
    const outside = (await listAll(p.dir, '')).filter(
      (r) => r.includes(tag) && !inContent.some((c) => r.startsWith(`roots/.store/content/${c}/`)),
    )
    expect(outside).toEqual([])
  }

  it('`..`, absolute paths and writes through a symlink to / stay inside the roots dir', async () => {
    const { r, p, tag } = await tryHostile((t) => [
      { name: 'ok.txt', body: 'fine\n' },
      { name: `../escape-${t}` },
      { name: `../../../../../../../../tmp/pwned-dots-${t}` },
      { name: `/tmp/pwned-abs-${t}` },
      { name: 'evil', type: 'symlink', linkname: '/' },
      { name: `evil/tmp/pwned-${t}` },
      { name: 'rel', type: 'symlink', linkname: '../../../../../../../../tmp' },
      { name: `rel/pwned-rel-${t}` },
    ])
    try {
      expectCleanOutcome(r)
      await expectContained(p, tag)
      if (r.exitCode === 0) {
        // The symlinks are still symlinks in the extracted content, not followed.
        const [c] = (await readdir(p.path('roots/.store/content'))).filter((n) => n.startsWith('sha256_'))
        expect((await lstat(p.path(`roots/.store/content/${c}/evil`))).isSymbolicLink()).toBe(true)
        expect(await readFile(p.path(`roots/.store/content/${c}/ok.txt`), 'utf8')).toBe('fine\n')
      }
      assertNoMountsUnder(p.dir)
    } finally {
      await p.cleanup()
    }
  })

  it('hard links to host paths, directly or through a symlink, are refused or contained', async () => {
    const hostPasswd = await stat('/etc/passwd')
    const { r, p, tag } = await tryHostile((t) => [
      { name: 'evil', type: 'symlink', linkname: '/' },
      { name: `hl-abs-${t}`, type: 'link', linkname: '/etc/passwd' },
      { name: `hl-dots-${t}`, type: 'link', linkname: '../../../../../../etc/passwd' },
      { name: `hl-sym-${t}`, type: 'link', linkname: 'evil/etc/passwd' },
    ])
    try {
      expectCleanOutcome(r)
      await expectContained(p, tag)
      // Whatever was made, none of it is the host's /etc/passwd.
      const content = p.path('roots/.store/content')
      if (r.exitCode === 0) expect((await readdir(content)).filter((n) => n.startsWith('sha256_'))).toHaveLength(1)
      for (const c of existsSync(content) ? await readdir(content) : [])
        for (const f of await readdir(join(content, c)).catch(() => []))
          expect((await lstat(join(content, c, f))).ino, f).not.toBe(hostPasswd.ino)
      expect((await stat('/etc/passwd')).nlink).toBe(hostPasswd.nlink)
      assertNoMountsUnder(p.dir)
    } finally {
      await p.cleanup()
    }
  })
})

describe('base layers extracted on first read', () => {
  it('keeps an unread base layer as its blob, extracts it for its first reader, and refuses a corrupt one', async () => {
    const f = fixtures()
    const p = await tempProject({
      'hello.txt': 'hello\n',
      'noread.yaml': 'noread:\n  from: {type: oci, url: "base:latest"}\n  imports:\n    - hello.txt\n',
      'reader.yaml':
        'noread:\n  from: {type: oci, url: "base:latest"}\n  imports:\n    - hello.txt\n' +
        'reader:\n  from: {type: built, tag: noread}\n  run: test -x /bin/busybox && echo read > /read\n',
    })
    try {
      run('cp', ['-a', f.busyboxLayout, p.path('base')], p.dir)
      const [layer] = await busyboxLayers()
      const hex = (layer as string).replace('sha256:', '')
      const kept = p.path(`.stacker/layer-bases/pulled/sha256_${hex}.blob`)
      const content = p.path(`roots/.store/content/sha256_${hex}`)

      // Nothing reads the base: its layer is kept, not extracted, and the image still has it.
      expectOk(await stacker(['build', '-f', 'noread.yaml'], { cwd: p.dir, env: SDE }))
      expect(existsSync(kept)).toBe(true)
      expect(existsSync(content)).toBe(false)
      expect((await readManifest(p.path('oci'), 'noread')).layers.map((l) => l.digest)).toEqual([layer])

      // The base's blob changes in place (the kept file is a link to it): the first reader refuses
      // it, with one error naming the image's blob, and keeps nothing of it.
      const blob = p.path(`base/blobs/sha256/${hex}`)
      const bytes = await readFile(blob)
      bytes[bytes.length - 100] = (bytes[bytes.length - 100] as number) ^ 0xff
      await writeFile(blob, bytes)
      const bad = await stacker(['build', '-f', 'reader.yaml'], { cwd: p.dir, env: SDE })
      expect(bad.exitCode, bad.stderr).toBe(1)
      const errors = bad.stderr.split('\n').filter((l) => l.startsWith('error:'))
      expect(errors).toHaveLength(1)
      expect(errors[0]).toMatch(
        new RegExp(`^error: blob sha256:${hex} is corrupt: .*base/blobs/sha256/${hex} has digest`),
      )
      expect(existsSync(kept)).toBe(false)
      expect(existsSync(content)).toBe(false)
      assertNoMountsUnder(p.dir)

      // The layout copied again: the next build links its blob afresh and extracts the right content.
      run('rm', ['-rf', p.path('base')], p.dir)
      run('cp', ['-a', f.busyboxLayout, p.path('base')], p.dir)
      const good = expectOk(await stacker(['build', '-f', 'reader.yaml'], { cwd: p.dir, env: SDE }))
      expect(good.stderr).toContain('filesystem reader built successfully')
      expect(existsSync(content)).toBe(true)
      expect(existsSync(kept)).toBe(false)
      expect((await lstat(p.path(`roots/sha256_${hex}/overlay/bin/busybox`))).isFile()).toBe(true)
      const u = await umociUnpack(p.path('oci'), 'reader', p.path('u-reader'))
      expect(await readFile(join(u, 'read'), 'utf8')).toBe('read\n')
      assertNoMountsUnder(p.dir)
    } finally {
      await p.cleanup()
    }
  })
})
