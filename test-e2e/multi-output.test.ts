// Several outputs from one build: `--layer-type` repeated, tags `<name>`, `<name>-squashfs`,
// `<name>-erofs`, index order as upstream, base layers converted when their type differs, outputs
// cached per type (a type added later is generated from the same filesystem, without touching the
// others), and upstream's multiple-output-types scenarios (chained `stacker://` tar bases and built
// chains in both type orders).
import { cp, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { fsImageDataSize } from '@stacker/layers'
import { execa } from 'execa'
import { describe, expect, it } from 'vitest'
import {
  blobPath,
  expectOk,
  fixtures,
  indexTags,
  readConfig,
  readIndex,
  readManifest,
  REF_NAME,
  projectsPerTest,
  type StackerResult,
  stacker,
  tagDigests,
  type TempProject,
  umociUnpack,
  unsquashfsList,
  veritysetupVerify,
} from './helpers/index.js'

const VERITY = 'io.stackeroci.stacker.atomfs_verity_root_hash'
const SQUASHFS_ZSTD = 'application/vnd.stacker.image.layer.squashfs+zstd'
const EROFS_LZ4HC = 'application/vnd.stacker.image.layer.erofs+lz4hc'
const TAR_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'

const project = projectsPerTest({ checkMounts: true })

function build(p: TempProject, args: string[]): Promise<StackerResult> {
  return stacker(['build', '--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`, ...args], { cwd: p.dir })
}

const types = (...t: string[]): string[] => t.flatMap((x) => ['--layer-type', x])

/** The content of one file in a squashfs layer blob, read by unsquashfs. */
async function squashfsCat(layout: string, digest: string, path: string): Promise<string> {
  const r = await execa('unsquashfs', ['-cat', blobPath(layout, digest), path], {
    reject: false,
    all: true,
    stripFinalNewline: false,
  })
  if (r.exitCode !== 0) throw new Error(`unsquashfs -cat ${path} failed:\n${r.all}`)
  return r.stdout
}

async function squashfsPaths(layout: string, digest: string): Promise<string[]> {
  return (await unsquashfsList(blobPath(layout, digest))).map((e) => e.path)
}

async function expectVerity(
  layout: string,
  layers: Array<{ mediaType: string; digest: string; annotations?: Record<string, string> }>,
) {
  for (const l of layers) {
    const hash = l.annotations?.[VERITY]
    expect(hash, l.digest).toMatch(/^[0-9a-f]{64}$/)
    const file = blobPath(layout, l.digest)
    const kind = l.mediaType.includes('erofs') ? 'erofs' : 'squashfs'
    const v = await veritysetupVerify(file, hash!, await fsImageDataSize(file, kind))
    expect(v.ok, v.output).toBe(true)
  }
}

describe('several --layer-type values', () => {
  it('writes one image per type from one build, converting the tar base to squashfs', async () => {
    const p = await project({
      'stacker.yaml': `test:\n  from: {type: oci, url: \${{BUSYBOX_OCI}}}\n  run: echo meshuggah > /rocks\n`,
    })
    expectOk(await build(p, types('tar', 'squashfs')))
    const oci = p.path('oci')
    expect(await indexTags(oci)).toEqual(['test', 'test-squashfs'])
    const rootfs = await umociUnpack(oci, 'test', p.path('dest'))
    expect(await readFile(join(rootfs, 'rocks'), 'utf8')).toBe('meshuggah\n')
    // As upstream's test reads it: index entry 1 is the squashfs image, its layer 1 holds /rocks.
    const sqDigest = (await readIndex(oci)).manifests[1]!.digest
    const sq = await readManifest(oci, 'test-squashfs')
    expect((await tagDigests(oci))['test-squashfs']).toBe(sqDigest)
    expect(sq.layers.map((l) => l.mediaType)).toEqual([SQUASHFS_ZSTD, SQUASHFS_ZSTD])
    expect(await squashfsCat(oci, sq.layers[1]!.digest, 'rocks')).toBe('meshuggah\n')
    // The busybox base (a gzip tar) was converted: squashfs with verity, busybox inside.
    expect(await squashfsPaths(oci, sq.layers[0]!.digest)).toContain('/bin/busybox')
    await expectVerity(oci, sq.layers)
    // The tar image keeps the base blob as it is.
    const bb = await readManifest(fixtures().busyboxLayout, 'latest')
    const tar = await readManifest(oci, 'test')
    expect(tar.layers[0]).toEqual(bb.layers[0])
    expect(tar.layers[1]?.mediaType).toBe(TAR_GZIP)
    // Both images describe the same filesystem: same config apart from the layers.
    const [ct, cs] = [await readConfig(oci, 'test'), await readConfig(oci, 'test-squashfs')]
    expect(cs.config).toEqual(ct.config)
    expect(cs.rootfs.diff_ids).toEqual(sq.layers.map((l) => l.digest))
    expect(cs.history?.length).toBe(ct.history?.length)
  })

  it('orders the index per layer in --layer-type order, keeps refs already there, re-points cached layers', async () => {
    const p = await project({
      'stacker.yaml':
        'parent:\n  from: {type: oci, url: oci:busybox}\n  run: echo meshuggah > /rocks\n' +
        'child:\n  from: {type: built, tag: parent}\n  run: echo primus > /sucks\n',
    })
    // The output layout already holds the base, as in upstream's oci-import test.
    await cp(fixtures().busyboxLayout, p.path('oci'), { recursive: true })
    const bbIndex = await readIndex(p.path('oci'))
    await (await import('node:fs/promises')).writeFile(
      p.path('oci/index.json'),
      JSON.stringify({
        ...bbIndex,
        manifests: bbIndex.manifests.map((m) => ({ ...m, annotations: { [REF_NAME]: 'busybox' } })),
      }),
    )
    const oci = p.path('oci')
    expectOk(await build(p, types('tar', 'squashfs')))
    expect(await indexTags(oci)).toEqual(['busybox', 'parent', 'parent-squashfs', 'child', 'child-squashfs'])
    const first = await tagDigests(oci)
    const rootfs = await umociUnpack(oci, 'child', p.path('dest'))
    expect(await readFile(join(rootfs, 'rocks'), 'utf8')).toBe('meshuggah\n')
    expect(await readFile(join(rootfs, 'sucks'), 'utf8')).toBe('primus\n')
    const childSq = await readManifest(oci, 'child-squashfs')
    expect(childSq.layers).toHaveLength(3)
    expect(await squashfsCat(oci, childSq.layers[1]!.digest, 'rocks')).toBe('meshuggah\n')
    expect(await squashfsCat(oci, childSq.layers[2]!.digest, 'sucks')).toBe('primus\n')
    // The child extends the parent in each type: same lower layers.
    expect(childSq.layers.slice(0, 2)).toEqual((await readManifest(oci, 'parent-squashfs')).layers)

    const again = await build(p, types('tar', 'squashfs'))
    expectOk(again)
    for (const t of ['parent', 'parent-squashfs', 'child', 'child-squashfs'])
      expect(again.stderr).toContain(`found cached layer ${t}\n`)
    expect(again.stdout).not.toContain('meshuggah')
    expect(await tagDigests(oci)).toEqual(first)
    expect(await indexTags(oci)).toEqual(['busybox', 'parent', 'parent-squashfs', 'child', 'child-squashfs'])

    // Reversed: the cached images are re-pointed in the new order, nothing is rebuilt.
    const reversed = await build(p, types('squashfs', 'tar'))
    expectOk(reversed)
    expect(reversed.stdout).toBe('')
    expect(await indexTags(oci)).toEqual(['busybox', 'parent-squashfs', 'parent', 'child-squashfs', 'child'])
    expect(await tagDigests(oci)).toEqual(first)
  })

  it('build_only parent: both outputs of the child hold the parent content, as separate layers', async () => {
    const p = await project({
      'stacker.yaml':
        `parent:\n  build_only: true\n  from: {type: oci, url: \${{BUSYBOX_OCI}}}\n  run: echo meshuggah > /rocks\n` +
        'child:\n  from: {type: built, tag: parent}\n  run: echo primus > /sucks\n',
    })
    expectOk(await build(p, types('tar', 'squashfs')))
    const oci = p.path('oci')
    expect(await indexTags(oci)).toEqual(['child', 'child-squashfs'])
    const rootfs = await umociUnpack(oci, 'child', p.path('dest'))
    expect(await readFile(join(rootfs, 'rocks'), 'utf8')).toBe('meshuggah\n')
    expect(await readFile(join(rootfs, 'sucks'), 'utf8')).toBe('primus\n')
    const sq = await readManifest(oci, 'child-squashfs')
    expect(sq.layers).toHaveLength(3)
    expect(await squashfsCat(oci, sq.layers[1]!.digest, 'rocks')).toBe('meshuggah\n')
    expect(await squashfsCat(oci, sq.layers[2]!.digest, 'sucks')).toBe('primus\n')
    expect((await readManifest(oci, 'child')).layers).toHaveLength(3)
  })

  it('caches each output type: a type added later is made from the same filesystem, the others untouched', async () => {
    // The run writes random bytes: a second run would give other content.
    const p = await project({
      'stacker.yaml':
        `parent:\n  from: {type: oci, url: \${{BUSYBOX_OCI}}}\n  run: |\n    echo RUNNING-PARENT\n` +
        '    head -c 16 /dev/urandom | od -An -tx1 > /random\n' +
        'child:\n  from: {type: built, tag: parent}\n  run: echo RUNNING-CHILD; echo primus > /sucks\n',
    })
    const oci = p.path('oci')
    const r1 = await build(p, types('tar'))
    expectOk(r1)
    expect(r1.stdout).toContain('RUNNING-PARENT')
    const tarTags = await tagDigests(oci)
    const tarParent = await readManifest(oci, 'parent')
    const tarBlobs = [...tarParent.layers, ...(await readManifest(oci, 'child')).layers].map((l) => l.digest)
    const mtimes = new Map<string, number>()
    for (const d of [...tarBlobs, ...Object.values(tarTags)]) mtimes.set(d, (await stat(blobPath(oci, d))).mtimeMs)
    const random = await readFile(join(await umociUnpack(oci, 'parent', p.path('dest')), 'random'), 'utf8')
    expect(random).toMatch(/[0-9a-f]{2}/)

    const r2 = await build(p, types('tar', 'squashfs'))
    expectOk(r2)
    // Nothing ran again; the tar images and their blobs are the very same files.
    expect(r2.stdout).not.toContain('RUNNING')
    expect(r2.stderr).toContain('found cached layer parent\n')
    expect(r2.stderr).toContain('found cached layer child\n')
    expect(r2.stderr).not.toContain('found cached layer parent-squashfs')
    const after = await tagDigests(oci)
    expect(after.parent).toBe(tarTags.parent)
    expect(after.child).toBe(tarTags.child)
    for (const [d, m] of mtimes) expect((await stat(blobPath(oci, d))).mtimeMs, d).toBe(m)
    // The squashfs image holds the filesystem the tar one was made from: the same random bytes.
    const sq = await readManifest(oci, 'parent-squashfs')
    expect(await squashfsCat(oci, sq.layers[1]!.digest, 'random')).toBe(random)
    await expectVerity(oci, sq.layers)

    const r3 = await build(p, types('tar', 'squashfs'))
    expectOk(r3)
    for (const t of ['parent', 'parent-squashfs', 'child', 'child-squashfs'])
      expect(r3.stderr).toContain(`found cached layer ${t}\n`)
    const squashTags = await tagDigests(oci)

    // Adding erofs writes only erofs layers and the new images' manifests and configs.
    const { readdir } = await import('node:fs/promises')
    const before = new Set(await readdir(join(oci, 'blobs', 'sha256')))
    const r4 = await build(p, types('erofs', 'squashfs', 'tar'))
    expectOk(r4)
    expect(r4.stdout).not.toContain('RUNNING')
    const now = await tagDigests(oci)
    for (const t of ['parent', 'child', 'parent-squashfs', 'child-squashfs']) expect(now[t], t).toBe(squashTags[t])
    const added = (await readdir(join(oci, 'blobs', 'sha256'))).filter((f) => !before.has(f))
    const erofsImages = [await readManifest(oci, 'parent-erofs'), await readManifest(oci, 'child-erofs')]
    const expected = new Set<string>()
    for (const m of erofsImages) {
      expect(m.layers.every((l) => l.mediaType === EROFS_LZ4HC)).toBe(true)
      for (const d of [m.config.digest, ...m.layers.map((l) => l.digest)]) expected.add(d.slice('sha256:'.length))
    }
    expected.add(now['parent-erofs']!.slice('sha256:'.length))
    expected.add(now['child-erofs']!.slice('sha256:'.length))
    expect(new Set(added)).toEqual(expected)
    await expectVerity(oci, erofsImages[1]!.layers)
    expect(await indexTags(oci)).toEqual([
      'parent-erofs',
      'parent-squashfs',
      'parent',
      'child-erofs',
      'child-squashfs',
      'child',
    ])
  })
})

// Upstream's "chained built type layers are OK": a build_only chain makes a tarball that two layers use
// as a `stacker://` tar base, built with both type orders.
const CHAINED = `one:
  from: {type: oci, url: \${{BUSYBOX_OCI}}}
two:
  build_only: true
  from: {type: built, tag: one}
  run: echo 2 > /2
three:
  build_only: true
  from: {type: built, tag: two}
  run: |
    echo 3 > /3
    tar -cv -f /contents.tar 2 3
four:
  from: {type: tar, url: stacker://three/contents.tar}
five:
  from: {type: tar, url: stacker://three/contents.tar}
`

describe('chained stacker:// tar bases and built chains', () => {
  for (const order of [
    ['tar', 'squashfs'],
    ['squashfs', 'tar'],
  ]) {
    it(`work with --layer-type ${order.join(' --layer-type ')}`, async () => {
      const p = await project({ 'stacker.yaml': CHAINED })
      const oci = p.path('oci')
      expectOk(await build(p, types(...order)))
      const suffix = (t: string) => (t === 'tar' ? '' : `-${t}`)
      const expected = ['one', 'four', 'five'].flatMap((l) => order.map((t) => `${l}${suffix(t)}`))
      expect(await indexTags(oci)).toEqual(expected)
      for (const l of ['four', 'five']) {
        const rootfs = await umociUnpack(oci, l, p.path(`unpack-${l}`))
        expect(await readFile(join(rootfs, '2'), 'utf8')).toBe('2\n')
        expect(await readFile(join(rootfs, '3'), 'utf8')).toBe('3\n')
      }
      // As upstream reads it: the squashfs manifests of four and five by index position.
      const index = await readIndex(oci)
      const sqPos = order.indexOf('squashfs')
      for (const [l, pos] of [
        ['four', 2 + sqPos],
        ['five', 4 + sqPos],
      ] as const) {
        const entry = index.manifests[pos]!
        expect(entry.annotations?.[REF_NAME]).toBe(`${l}-squashfs`)
        const m = await readManifest(oci, `${l}-squashfs`)
        // A tar base gives a single layer: the tarball's content plus the (empty) run.
        expect(m.layers).toHaveLength(1)
        const last = m.layers.at(-1)!
        expect(last.mediaType).toBe(SQUASHFS_ZSTD)
        expect(await squashfsCat(oci, last.digest, '2')).toBe('2\n')
        expect(await squashfsCat(oci, last.digest, '3')).toBe('3\n')
        await expectVerity(oci, m.layers)
      }
      // one is busybox itself in both types.
      expect((await readManifest(oci, 'one')).layers).toEqual(
        (await readManifest(fixtures().busyboxLayout, 'latest')).layers,
      )
      expect(await squashfsPaths(oci, (await readManifest(oci, 'one-squashfs')).layers[0]!.digest)).toContain(
        '/bin/busybox',
      )
    })
  }
})
