// squashfs and erofs layers: what the writer puts in them (native overlay whiteouts, media types,
// dm-verity), that the same input gives the same bytes, and that such layers are read back as bases,
// from this tool's own output and from images made by hand the way upstream makes them, with the
// verity data checked before use.
import { createHash } from 'node:crypto'
import { cp, lstat, mkdir, open, readFile, readlink, writeFile } from 'node:fs/promises'
import { arch } from 'node:os'
import { join } from 'node:path'
import { getAttribute } from '@napi-rs/xattr'
import { fsImageDataSize } from '@stacker/layers'
import { execa } from 'execa'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  blobPath,
  expectOk,
  fixtures,
  indexTags,
  readConfig,
  readManifest,
  REF_NAME,
  type StackerResult,
  stacker,
  tagDigests,
  tempProject as newProject,
  type TempProject,
  umociUnpack,
  unsquashfsExtract,
  unsquashfsList,
  veritysetupVerify,
  withErofsMount,
} from './helpers/index.js'

// Projects shared by the tests of a describe block: every test ends by checking none has a mount left.
const live = new Set<TempProject>()
async function tempProject(files: Record<string, string> = {}): Promise<TempProject> {
  const p = await newProject(files)
  live.add(p)
  return p
}
afterEach(() => {
  for (const p of live) assertNoMountsUnder(p.dir)
})

const SDE = '1700000000'
const VERITY = 'io.stackeroci.stacker.atomfs_verity_root_hash'
const SQUASHFS_ZSTD = 'application/vnd.stacker.image.layer.squashfs+zstd'
const EROFS_LZ4HC = 'application/vnd.stacker.image.layer.erofs+lz4hc'
const TAR = 'application/vnd.oci.image.layer.v1.tar'
const TAR_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'

// A layer that deletes a file, replaces a non-empty directory (overlayfs makes it opaque), adds a
// file, a symlink and a nested directory: every kind of change a diff can carry.
const LAYER_A = `a:
  from: {type: oci, url: \${{BUSYBOX_OCI}}}
  run: |
    rm /etc/hostname
    rm -rf /usr/sbin && mkdir /usr/sbin && echo only > /usr/sbin/only
    echo hi > /hi
    ln -s hi /hi-link
    mkdir -p /deep/er && echo deep > /deep/er/f
`

// What a rootfs built on `a` must see, whatever the format `a` was read from.
const CHECK_A = `    [ "$(cat /hi)" = hi ]
    [ "$(readlink /hi-link)" = hi ]
    [ "$(cat /deep/er/f)" = deep ]
    [ ! -e /etc/hostname ]
    [ -e /etc/passwd ]
    [ "$(ls /usr/sbin)" = only ]
`

const ALL_TYPES = ['--layer-type', 'squashfs', '--layer-type', 'erofs', '--layer-type', 'tar']

function build(p: TempProject, args: string[], env: Record<string, string> = {}): Promise<StackerResult> {
  return stacker(['build', '--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`, ...args], {
    cwd: p.dir,
    env: { SOURCE_DATE_EPOCH: SDE, ...env },
  })
}

/** squashfs bytes_used (superblock offset 40), read here rather than through the project's reader. */
async function squashfsBytesUsed(file: string): Promise<number> {
  const fh = await open(file, 'r')
  try {
    const sb = Buffer.alloc(96)
    await fh.read(sb, 0, 96, 0)
    expect(sb.readUInt32LE(0)).toBe(0x73717368)
    return Number(sb.readBigUInt64LE(40))
  } finally {
    await fh.close()
  }
}

const roundUp4k = (n: number): number => Math.ceil(n / 4096) * 4096

/** The verity hash offset of a squashfs or erofs blob: its filesystem size rounded up to 4096. */
async function hashOffset(file: string, mediaType: string): Promise<number> {
  if (mediaType.includes('squashfs')) {
    const off = roundUp4k(await squashfsBytesUsed(file))
    expect(await fsImageDataSize(file, 'squashfs')).toBe(off)
    return off
  }
  return fsImageDataSize(file, 'erofs')
}

async function hasVeritySuperblock(file: string, offset: number): Promise<boolean> {
  const fh = await open(file, 'r')
  try {
    const b = Buffer.alloc(8)
    const { bytesRead } = await fh.read(b, 0, 8, offset)
    return bytesRead === 8 && b.toString('latin1') === 'verity\0\0'
  } finally {
    await fh.close()
  }
}

interface Node {
  type: 'file' | 'dir' | 'symlink' | 'chardev' | 'other'
  rdev?: number
  content?: string
  link?: string
  opaque?: boolean
}

/** Every entry under root (relative paths with a leading `/`), with small file contents, symlink
 *  targets, device numbers and the overlay opaque xattr. */
async function walk(root: string): Promise<Map<string, Node>> {
  const out = new Map<string, Node>()
  const { readdir } = await import('node:fs/promises')
  const visit = async (rel: string): Promise<void> => {
    for (const name of (await readdir(join(root, rel))).sort()) {
      const r = `${rel}/${name}`
      const full = join(root, r)
      const st = await lstat(full)
      if (st.isDirectory()) {
        const opaque = (await getAttribute(full, 'user.overlay.opaque'))?.toString() === 'y'
        out.set(r, { type: 'dir', opaque })
        await visit(r)
      } else if (st.isFile()) {
        out.set(r, { type: 'file', ...(st.size < 4096 ? { content: await readFile(full, 'utf8') } : {}) })
      } else if (st.isSymbolicLink()) {
        out.set(r, { type: 'symlink', link: await readlink(full) })
      } else if (st.isCharacterDevice()) {
        out.set(r, { type: 'chardev', rdev: st.rdev })
      } else {
        out.set(r, { type: 'other' })
      }
    }
  }
  await visit('')
  return out
}

/** The entries of an erofs blob, read through the kernel: a read-only loop mount, always unmounted. */
async function erofsEntries(blob: string, mnt: string): Promise<Map<string, Node>> {
  return withErofsMount(blob, mnt, walk)
}

/** The entries of a squashfs blob, extracted by unsquashfs (xattrs and devices included, as root). */
async function squashfsEntries(blob: string, dest: string): Promise<Map<string, Node>> {
  await unsquashfsExtract(blob, dest)
  return walk(dest)
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

describe('squashfs and erofs output', () => {
  let p: TempProject
  let repro: TempProject
  let noVerity: TempProject
  let noVerity2: TempProject
  const layout = (): string => p.path('oci')

  beforeAll(async () => {
    ;[p, repro, noVerity, noVerity2] = await Promise.all([
      tempProject({ 'stacker.yaml': LAYER_A }),
      tempProject({ 'stacker.yaml': LAYER_A }),
      tempProject({ 'stacker.yaml': LAYER_A }),
      tempProject({ 'stacker.yaml': LAYER_A }),
    ])
    expectOk(await build(p, ALL_TYPES))
  })
  afterAll(async () => {
    for (const x of [p, repro, noVerity, noVerity2]) {
      if (!x) continue
      assertNoMountsUnder(x.dir)
      await x.cleanup()
      live.delete(x)
    }
  })

  it('tags every requested type, in --layer-type order', async () => {
    expect(await indexTags(layout())).toEqual(['a-squashfs', 'a-erofs', 'a'])
  })

  it('writes squashfs layers with overlay whiteouts kept native', async () => {
    const m = await readManifest(layout(), 'a-squashfs')
    expect(m.layers.map((l) => l.mediaType)).toEqual([SQUASHFS_ZSTD, SQUASHFS_ZSTD])
    const diff = blobPath(layout(), m.layers[1]!.digest)
    const list = await unsquashfsList(diff)
    const byPath = new Map(list.map((e) => [e.path, e]))
    // A deleted file is a 0:0 char device, not an OCI `.wh.` file.
    expect(byPath.get('/etc/hostname')).toMatchObject({ type: 'character-device', major: 0, minor: 0, uid: 0 })
    expect(list.filter((e) => e.path.includes('.wh.'))).toEqual([])
    expect(byPath.get('/usr/sbin')?.type).toBe('directory')
    expect(byPath.get('/usr/sbin/only')?.type).toBe('file')
    // Only the new entry of the replaced directory is in the diff, not the lower applets.
    expect(list.filter((e) => e.path.startsWith('/usr/sbin/')).map((e) => e.path)).toEqual(['/usr/sbin/only'])
    expect(byPath.get('/hi-link')).toMatchObject({ type: 'symlink', linkname: 'hi' })
    expect(byPath.get('/deep/er/f')?.type).toBe('file')
    // The replaced directory carries the opaque xattr (unsquashfs -lln does not show xattrs: extract).
    const entries = await squashfsEntries(diff, p.path('x-sq'))
    expect(entries.get('/usr/sbin')).toMatchObject({ type: 'dir', opaque: true })
    expect(entries.get('/deep')).toMatchObject({ type: 'dir', opaque: false })
    expect(entries.get('/etc/hostname')).toEqual({ type: 'chardev', rdev: 0 })
    expect(entries.get('/hi')?.content).toBe('hi\n')
    // No overlayfs bookkeeping xattrs beyond the opaque marker reach the image.
    const { listAttributes } = await import('@napi-rs/xattr')
    for (const path of ['/usr/sbin', '/etc', '/hi', '/deep']) {
      for (const x of await listAttributes(p.path(`x-sq${path}`)))
        expect(x === 'user.overlay.opaque' || !x.includes('overlay'), `${path}: ${x}`).toBe(true)
    }
  })

  it('writes erofs layers with the same content and native whiteouts', async () => {
    const m = await readManifest(layout(), 'a-erofs')
    expect(m.layers.map((l) => l.mediaType)).toEqual([EROFS_LZ4HC, EROFS_LZ4HC])
    const e = await erofsEntries(blobPath(layout(), m.layers[1]!.digest), p.path('mnt-erofs'))
    expect(e.get('/etc/hostname')).toEqual({ type: 'chardev', rdev: 0 })
    expect(e.get('/usr/sbin')).toMatchObject({ type: 'dir', opaque: true })
    expect([...e.keys()].filter((k) => k.startsWith('/usr/sbin/'))).toEqual(['/usr/sbin/only'])
    expect(e.get('/hi')?.content).toBe('hi\n')
    expect(e.get('/hi-link')).toEqual({ type: 'symlink', link: 'hi' })
    expect(e.get('/deep/er/f')?.content).toBe('deep\n')
    // The erofs base layer, converted from the busybox tar, holds busybox.
    const base = await erofsEntries(blobPath(layout(), m.layers[0]!.digest), p.path('mnt-erofs'))
    expect(base.get('/bin/busybox')?.type).toBe('file')
    expect(base.get('/etc/hostname')?.type).toBe('file')
    assertNoMountsUnder(p.dir)
  })

  it('appends dm-verity data to every squashfs and erofs blob, checked by veritysetup verify', async () => {
    let checked = 0
    for (const tag of ['a-squashfs', 'a-erofs']) {
      for (const l of (await readManifest(layout(), tag)).layers) {
        const hash = l.annotations?.[VERITY]
        expect(hash, `${tag} ${l.digest}`).toMatch(/^[0-9a-f]{64}$/)
        const file = blobPath(layout(), l.digest)
        const off = await hashOffset(file, l.mediaType)
        expect(await hasVeritySuperblock(file, off)).toBe(true)
        const v = await veritysetupVerify(file, hash!, off)
        expect(v.ok, v.output).toBe(true)
        // The check is real: another root hash does not verify.
        const wrong = (hash![0] === '0' ? '1' : '0') + hash!.slice(1)
        expect((await veritysetupVerify(file, wrong, off)).ok).toBe(false)
        checked++
      }
    }
    expect(checked).toBe(4)
    // tar layers carry no verity annotation.
    for (const l of (await readManifest(layout(), 'a')).layers) expect(l.annotations?.[VERITY]).toBeUndefined()
    // The base layer of the tar output is busybox's own blob, kept as it is.
    const bb = await readManifest(fixtures().busyboxLayout, 'latest')
    expect((await readManifest(layout(), 'a')).layers[0]?.digest).toBe(bb.layers[0]?.digest)
  })

  it('gives a squashfs/erofs layer its digest as diff_id', async () => {
    for (const tag of ['a-squashfs', 'a-erofs']) {
      const m = await readManifest(layout(), tag)
      expect((await readConfig(layout(), tag)).rootfs.diff_ids).toEqual(m.layers.map((l) => l.digest))
    }
  })

  it('gives byte-identical digests for every layer type across two clean builds', async () => {
    expectOk(await build(repro, ALL_TYPES))
    const a = await tagDigests(layout())
    const b = await tagDigests(repro.path('oci'))
    expect(Object.keys(a).sort()).toEqual(['a', 'a-erofs', 'a-squashfs'])
    expect(b).toEqual(a)
    for (const tag of ['a', 'a-squashfs', 'a-erofs']) {
      const la = (await readManifest(layout(), tag)).layers
      const lb = (await readManifest(repro.path('oci'), tag)).layers
      expect(lb).toEqual(la)
    }
    assertNoMountsUnder(repro.dir)
  })

  it('--no-verity writes plain images, reproducibly', async () => {
    const types = ['--layer-type', 'squashfs', '--layer-type', 'erofs', '--no-verity']
    expectOk(await build(noVerity, types))
    expectOk(await build(noVerity2, types))
    const a = await tagDigests(noVerity.path('oci'))
    expect(Object.keys(a).sort()).toEqual(['a-erofs', 'a-squashfs'])
    expect(await tagDigests(noVerity2.path('oci'))).toEqual(a)
    const verityLayers = (await readManifest(layout(), 'a-squashfs')).layers
    for (const tag of ['a-squashfs', 'a-erofs']) {
      const layers = (await readManifest(noVerity.path('oci'), tag)).layers
      expect(layers).toHaveLength(2)
      for (const l of layers) {
        expect(l.annotations?.[VERITY]).toBeUndefined()
        const file = blobPath(noVerity.path('oci'), l.digest)
        const off = await hashOffset(file, l.mediaType)
        expect(l.size).toBeLessThanOrEqual(off)
        expect(await hasVeritySuperblock(file, off)).toBe(false)
      }
    }
    // Without verity the squashfs diff is a different blob, and its filesystem is the verity one's prefix.
    const plain = (await readManifest(noVerity.path('oci'), 'a-squashfs')).layers[1]!
    expect(plain.digest).not.toBe(verityLayers[1]!.digest)
    const withVerity = await readFile(blobPath(layout(), verityLayers[1]!.digest))
    const without = await readFile(blobPath(noVerity.path('oci'), plain.digest))
    expect(withVerity.subarray(0, without.length).equals(without)).toBe(true)
  })

  it('reads its own squashfs and erofs images back as bases, converting them when another type is asked', async () => {
    await p.write(
      'child.yaml',
      `sq:\n  from: {type: oci, url: oci:a-squashfs}\n  run: |\n${CHECK_A}    echo sq > /child\n` +
        `ero:\n  from: {type: oci, url: oci:a-erofs}\n  run: |\n${CHECK_A}    echo ero > /child\n`,
    )
    const r = await build(p, ['-f', 'child.yaml', '--layer-type', 'squashfs', '--layer-type', 'tar'])
    expectOk(r)
    const aSq = (await readManifest(layout(), 'a-squashfs')).layers
    const sq = (await readManifest(layout(), 'sq-squashfs')).layers
    // Same type: the base's blobs are used as they are.
    expect(sq.slice(0, 2)).toEqual(aSq)
    expect(sq).toHaveLength(3)
    // erofs base, squashfs output: converted, verity added, same content.
    const eroSq = (await readManifest(layout(), 'ero-squashfs')).layers
    expect(eroSq.map((l) => l.mediaType)).toEqual([SQUASHFS_ZSTD, SQUASHFS_ZSTD, SQUASHFS_ZSTD])
    // squashfs base, tar output: converted to uncompressed tar layers, as upstream does.
    for (const tag of ['sq', 'ero']) {
      const layers = (await readManifest(layout(), tag)).layers
      expect(layers.map((l) => l.mediaType)).toEqual([TAR, TAR, TAR_GZIP])
      const rootfs = await umociUnpack(layout(), tag, p.path(`unpack-${tag}`))
      expect(await readFile(join(rootfs, 'child'), 'utf8')).toBe(`${tag}\n`)
      expect(await readFile(join(rootfs, 'hi'), 'utf8')).toBe('hi\n')
      await expect(lstat(join(rootfs, 'etc/hostname'))).rejects.toThrow()
      const { readdir } = await import('node:fs/promises')
      expect(await readdir(join(rootfs, 'usr/sbin'))).toEqual(['only'])
      expect((await lstat(join(rootfs, 'bin/busybox'))).isFile()).toBe(true)
    }
    assertNoMountsUnder(p.dir)
  })
})

/** An OCI layout written by hand, the way upstream writes squashfs/erofs images: mksquashfs with its
 *  default options, veritysetup with a random salt, the root hash in the annotation. */
async function handLayout(dir: string, work: string): Promise<Record<string, { digest: string; hash?: string }>> {
  const root = join(work, 'rootfs')
  for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp']) await mkdir(join(root, d), { recursive: true })
  await cp('/bin/busybox', join(root, 'bin/busybox'))
  const { symlink } = await import('node:fs/promises')
  await symlink('busybox', join(root, 'bin/sh'))
  await writeFile(join(root, 'hand.txt'), 'made by hand\n')
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true })
  await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}')
  const put = async (data: Buffer): Promise<{ digest: string; size: number }> => {
    const hex = sha256(data)
    await writeFile(join(dir, 'blobs', 'sha256', hex), data)
    return { digest: `sha256:${hex}`, size: data.length }
  }
  const image = async (layer: { mediaType: string; data: Buffer; annotations?: Record<string, string> }) => {
    const l = await put(layer.data)
    const config = await put(
      Buffer.from(
        JSON.stringify({
          architecture: arch() === 'arm64' ? 'arm64' : 'amd64',
          os: 'linux',
          config: { Env: ['PATH=/bin'] },
          rootfs: { type: 'layers', diff_ids: [l.digest] },
        }),
      ),
    )
    const manifest = await put(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
          layers: [
            { mediaType: layer.mediaType, ...l, ...(layer.annotations ? { annotations: layer.annotations } : {}) },
          ],
        }),
      ),
    )
    return { layer: l, manifest }
  }
  const sqfs = join(work, 'img.squashfs')
  expectOk0(await execa('mksquashfs', [root, sqfs, '-comp', 'zstd', '-no-progress'], { reject: false, all: true }))
  const fsSize = (await lstat(sqfs)).size
  expect(fsSize % 4096).toBe(0)
  const plainSquashfs = await readFile(sqfs)
  const vf = await execa(
    'veritysetup',
    ['format', `--hash-offset=${fsSize}`, `--data-blocks=${fsSize / 4096}`, sqfs, sqfs],
    { reject: false, all: true },
  )
  expectOk0(vf)
  const hash = /Root hash:\s*([0-9a-f]{64})/.exec(vf.stdout)?.[1]
  expect(hash).toBeDefined()
  const veritySquashfs = await readFile(sqfs)

  const erofs = join(work, 'img.erofs')
  expectOk0(await execa('mkfs.erofs', [erofs, root], { reject: false, all: true }))
  const erofsData = await readFile(erofs)

  const images = {
    'hand-squashfs': await image({ mediaType: SQUASHFS_ZSTD, data: veritySquashfs, annotations: { [VERITY]: hash! } }),
    // upstream's legacy media type, no verity
    'hand-legacy': await image({ mediaType: 'application/vnd.stacker.image.layer.squashfs', data: plainSquashfs }),
    'hand-erofs': await image({ mediaType: 'application/vnd.stacker.image.layer.erofs', data: erofsData }),
  }
  // The same squashfs with one byte of file data changed: consistent digests, but the verity tree and
  // root hash no longer match it.
  const tampered = Buffer.from(veritySquashfs)
  const at = Math.floor(fsSize / 2)
  tampered[at] = (tampered[at] ?? 0) ^ 0xff
  const bad = await image({ mediaType: SQUASHFS_ZSTD, data: tampered, annotations: { [VERITY]: hash! } })
  const tags = { ...images, tampered: bad }
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: Object.entries(tags).map(([name, i]) => ({
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        ...i.manifest,
        annotations: { [REF_NAME]: name },
      })),
    }),
  )
  const out: Record<string, { digest: string; hash?: string }> = {}
  for (const [name, i] of Object.entries(tags)) out[name] = { digest: i.layer.digest, hash: hash! }
  return out
}

function expectOk0(r: { exitCode?: number | undefined; all?: unknown; command?: string }): void {
  if (r.exitCode !== 0) throw new Error(`${r.command} failed:\n${String(r.all)}`)
}

describe('squashfs and erofs bases made by hand, as upstream makes them', () => {
  let p: TempProject
  let hand: Record<string, { digest: string; hash?: string }>
  beforeAll(async () => {
    p = await tempProject()
    hand = await handLayout(p.path('hand'), p.path('work'))
  })
  afterAll(async () => {
    if (!p) return
    assertNoMountsUnder(p.dir)
    await p.cleanup()
    live.delete(p)
  })

  it('the hand-made verity image verifies with veritysetup (the fixture is sound)', async () => {
    const file = blobPath(p.path('hand'), hand['hand-squashfs']!.digest)
    const off = await hashOffset(file, SQUASHFS_ZSTD)
    expect((await veritysetupVerify(file, hand['hand-squashfs']!.hash!, off)).ok).toBe(true)
    const bad = blobPath(p.path('hand'), hand.tampered!.digest)
    expect((await veritysetupVerify(bad, hand.tampered!.hash!, off)).ok).toBe(false)
  })

  it('builds on plain mksquashfs/mkfs.erofs images, with and without verity', async () => {
    const h = p.path('hand')
    const yaml =
      `from-verity:\n  from: {type: oci, url: ${h}:hand-squashfs}\n  run: '[ "$(cat /hand.txt)" = "made by hand" ] && echo 1 > /one'\n` +
      `from-legacy:\n  from: {type: oci, url: ${h}:hand-legacy}\n  run: '[ "$(cat /hand.txt)" = "made by hand" ] && echo 2 > /two'\n` +
      `from-erofs:\n  from: {type: oci, url: ${h}:hand-erofs}\n  run: '[ "$(cat /hand.txt)" = "made by hand" ] && echo 3 > /three'\n`
    await p.write('stacker.yaml', yaml)
    const r = await build(p, ['--layer-type', 'squashfs'])
    expectOk(r)
    // A verity base of the requested type is used as it is; the others are converted and get verity.
    const fv = (await readManifest(p.path('oci'), 'from-verity-squashfs')).layers
    expect(fv[0]?.digest).toBe(hand['hand-squashfs']!.digest)
    expect(fv[0]?.annotations?.[VERITY]).toBe(hand['hand-squashfs']!.hash)
    for (const tag of ['from-legacy-squashfs', 'from-erofs-squashfs']) {
      const layers = (await readManifest(p.path('oci'), tag)).layers
      expect(layers).toHaveLength(2)
      for (const l of layers) {
        expect(l.mediaType).toBe(SQUASHFS_ZSTD)
        const file = blobPath(p.path('oci'), l.digest)
        const v = await veritysetupVerify(file, l.annotations![VERITY]!, await hashOffset(file, l.mediaType))
        expect(v.ok, v.output).toBe(true)
      }
      const base = await unsquashfsList(blobPath(p.path('oci'), layers[0]!.digest))
      expect(base.find((e) => e.path === '/hand.txt')?.type).toBe('file')
      expect(base.find((e) => e.path === '/bin/sh')).toMatchObject({ type: 'symlink', linkname: 'busybox' })
    }
    assertNoMountsUnder(p.dir)
  })

  it('refuses a base whose blob does not match its verity root hash', async () => {
    await p.write('bad.yaml', `bad:\n  from: {type: oci, url: ${p.path('hand')}:tampered}\n  run: echo never > /x\n`)
    const r = await build(p, ['-f', 'bad.yaml', '--layer-type', 'squashfs'])
    expect(r.exitCode).toBe(1)
    const hex = hand.tampered!.digest.slice('sha256:'.length)
    // One line naming the check, the expected root hash and the blob.
    const last = r.stderr.trimEnd().split('\n').at(-1)
    expect(last).toMatch(new RegExp(`^error: invalid root hash ${hand.tampered!.hash} for \\S*${hex}`))
    expect(r.stdout).not.toContain('never')
    expect(r.stderr).not.toMatch(/^\s+at /m)
    expect(await indexTags(p.path('oci'))).not.toContain('bad-squashfs')
    assertNoMountsUnder(p.dir)
  })
})
