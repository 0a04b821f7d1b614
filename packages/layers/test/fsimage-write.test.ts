import { createHash } from 'node:crypto'
import { readdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { getAttribute, listAttributes } from '@napi-rs/xattr'
import { memoryLogger, StackerError } from '@stacker/core'
import { Annotations, MediaTypes } from '@stacker/oci'
import { describe, expect, it } from 'vitest'
import {
  EROFS_UUID,
  extractFsImage,
  type FsImageOptions,
  fsImageDataSize,
  fsImageKindOf,
  fsImageMediaType,
  isOverlayBookkeepingXattr,
  squashfsCompression,
  supportsXattrs,
  writeFsImage,
} from '../src/fsimage/index.js'
import {
  isRoot,
  makeLayerTree,
  NEW_TIME,
  OLD_TIME,
  sh,
  snapshotTree,
  useTempDirs,
  withoutBookkeeping,
} from './fsimage-helpers.js'

const tempDir = useTempDirs()

async function fileHash(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex')
}

async function build(dir: string, opts: FsImageOptions) {
  const out = await tempDir()
  const r = await writeFsImage(dir, out, opts)
  if (!r) throw new Error('no image')
  return r
}

describe('media types', () => {
  it('names what upstream writes and accepts', () => {
    expect(fsImageMediaType('squashfs', 'zstd')).toBe('application/vnd.stacker.image.layer.squashfs+zstd')
    expect(fsImageMediaType('squashfs', 'gzip')).toBe('application/vnd.stacker.image.layer.squashfs+gzip')
    expect(fsImageMediaType('erofs')).toBe('application/vnd.stacker.image.layer.erofs+lz4hc')
    expect(() => fsImageMediaType('squashfs')).toThrow(StackerError)
    expect(fsImageKindOf(MediaTypes.layerSquashfs)).toBe('squashfs')
    expect(fsImageKindOf(MediaTypes.layerErofsZstd)).toBe('erofs')
    expect(fsImageKindOf(MediaTypes.layerTarGzip)).toBeUndefined()
    expect(() => fsImageKindOf('application/x-nonsense')).toThrow('invalid layer type application/x-nonsense')
  })

  it('detects zstd in this mksquashfs, once', async () => {
    const a = squashfsCompression()
    expect(squashfsCompression()).toBe(a)
    expect(await a).toBe('zstd')
  })

  it('classifies overlay xattrs', () => {
    expect(isOverlayBookkeepingXattr('user.overlay.origin')).toBe(true)
    expect(isOverlayBookkeepingXattr('trusted.overlay.impure')).toBe(true)
    expect(isOverlayBookkeepingXattr('user.overlay.opaque')).toBe(false)
    expect(isOverlayBookkeepingXattr('user.overlay.whiteout')).toBe(false)
    expect(isOverlayBookkeepingXattr('user.other')).toBe(false)
  })
})

describe.skipIf(!isRoot)('writeFsImage (needs root: mknod, chown)', () => {
  it('returns undefined for an empty dir and leaves nothing behind', async () => {
    const src = await tempDir()
    const out = await tempDir()
    for (const kind of ['squashfs', 'erofs'] as const) {
      expect(await writeFsImage(src, out, { kind, verity: true })).toBeUndefined()
    }
    expect(await readdir(out)).toEqual([])
  })

  it('squashfs keeps whiteouts native and drops overlay bookkeeping xattrs', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    const logger = memoryLogger()
    const r = await build(src, { kind: 'squashfs', verity: false, logger })
    expect(r.mediaType).toBe(MediaTypes.layerSquashfsZstd)
    expect(r.annotations).toEqual({})
    expect(r.verityRootHash).toBeUndefined()
    expect(r.size).toBe((await stat(r.file)).size)
    expect(r.size).toBe(await fsImageDataSize(r.file, 'squashfs'))

    const lls = await sh('unsquashfs', ['-lln', r.file])
    expect(lls.exitCode).toBe(0)
    expect(lls.stdout).toMatch(/^c[-rwx]{9} 0\/0\s+0,\s*0 .*squashfs-root\/sub\/gone$/m)
    expect(lls.stdout).toMatch(/^-rw-r----- 1000\/1001 .*squashfs-root\/sub\/owned\.txt$/m)
    expect(lls.stdout).toMatch(/^lrwxrwxrwx 0\/0 .*squashfs-root\/dangling -> \/nonexistent\/target$/m)
    const info = await sh('unsquashfs', ['-s', r.file])
    expect(info.stdout).toMatch(/Compression zstd\s+compression-level 3\b/)

    // The bookkeeping xattr was removed from the source too (as upstream does), nothing else.
    expect(await listAttributes(join(src, 'sub'))).toEqual([])
    expect(String(await getAttribute(join(src, 'opq'), 'user.overlay.opaque'))).toBe('y')
    expect(logger.lines('debug')).toContain('removed overlay bookkeeping xattrs')

    const x = join(await tempDir(), 'x')
    await extractFsImage(r.file, x, { mediaType: r.mediaType })
    expect(String(await getAttribute(join(x, 'opq'), 'user.overlay.opaque'))).toBe('y')
    expect(await listAttributes(join(x, 'sub'))).toEqual([])
    expect(String(await getAttribute(join(x, 'a.txt'), 'user.test'))).toBe('value')
    const gone = await stat(join(x, 'sub/gone'))
    expect(gone.isCharacterDevice() && gone.rdev === 0).toBe(true)
    expect((await stat(join(x, 'sub/hardlink'))).ino).toBe((await stat(join(x, 'a.txt'))).ino)
    expect(await snapshotTree(x, { times: true })).toEqual(withoutBookkeeping(await snapshotTree(src, { times: true })))
  })

  it('squashfs: same tree gives the same bytes, with and without verity', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    for (const verity of [false, true]) {
      for (const sourceDateEpoch of [undefined, 1_500_000_000]) {
        const opts: FsImageOptions = { kind: 'squashfs', verity, ...(sourceDateEpoch ? { sourceDateEpoch } : {}) }
        const a = await build(src, opts)
        const b = await build(src, opts)
        expect(await fileHash(a.file)).toBe(await fileHash(b.file))
        expect(a.verityRootHash).toEqual(b.verityRootHash)
        expect(a.annotations).toEqual(b.annotations)
      }
    }
  })

  it('squashfs clamps times to SOURCE_DATE_EPOCH and ignores the environment variable', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    const sde = 1_500_000_000
    process.env['SOURCE_DATE_EPOCH'] = '1234'
    try {
      const r = await build(src, { kind: 'squashfs', verity: false, sourceDateEpoch: sde })
      expect((await sh('unsquashfs', ['-mkfs-time', r.file])).stdout.trim()).toBe(String(sde))
      const x = join(await tempDir(), 'x')
      await extractFsImage(r.file, x, { mediaType: r.mediaType })
      const times = Object.fromEntries((await snapshotTree(x, { times: true })).map((e) => [e.path, e.mtime]))
      expect(times['a.txt']).toBe(OLD_TIME)
      expect(times['dangling']).toBe(OLD_TIME)
      expect(times['big.bin']).toBe(sde)
      expect(times['opq']).toBe(sde)
      expect(times['sub/gone']).toBe(sde)
      expect(Math.floor((await stat(x)).mtimeMs / 1000)).toBe(sde)

      const plain = await build(src, { kind: 'squashfs', verity: false })
      expect((await sh('unsquashfs', ['-mkfs-time', plain.file])).stdout.trim()).toBe('0')
    } finally {
      delete process.env['SOURCE_DATE_EPOCH']
    }
    // The source is untouched.
    expect(Math.floor((await stat(join(src, 'big.bin'))).mtimeMs / 1000)).toBe(NEW_TIME)
  })

  it('squashfs compression level is configurable and checked', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    const r = await build(src, { kind: 'squashfs', verity: false, compressionLevel: 19 })
    expect((await sh('unsquashfs', ['-s', r.file])).stdout).toMatch(/compression-level 19\b/)
    await expect(build(src, { kind: 'squashfs', verity: false, compressionLevel: 23 })).rejects.toMatchObject({
      code: 'USAGE',
    })
  })

  it('erofs: same tree gives the same bytes, with and without verity; fixed UUID', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    for (const verity of [false, true]) {
      for (const sourceDateEpoch of [undefined, 1_500_000_000]) {
        const opts: FsImageOptions = { kind: 'erofs', verity, ...(sourceDateEpoch ? { sourceDateEpoch } : {}) }
        const a = await build(src, opts)
        // mkfs.erofs stamps its build time with microseconds; a rebuild is always at another time.
        const b = await build(src, opts)
        expect(a.mediaType).toBe(MediaTypes.layerErofsLz4hc)
        expect(await fileHash(a.file)).toBe(await fileHash(b.file))
        expect(a.annotations).toEqual(verity ? { [Annotations.verityRootHash]: a.verityRootHash } : {})
      }
    }
    const r = await build(src, { kind: 'erofs', verity: false })
    expect((await sh('dump.erofs', ['-s', r.file])).stdout).toContain(EROFS_UUID)
    expect((await sh('fsck.erofs', [r.file])).exitCode).toBe(0)
  })

  it('erofs keeps per-file mtimes without SOURCE_DATE_EPOCH and clamps them to it with, as squashfs does', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    const expected = withoutBookkeeping(await snapshotTree(src, { times: true }))
    const r = await build(src, { kind: 'erofs', verity: true })
    const x = join(await tempDir(), 'x')
    await extractFsImage(r.file, x, { mediaType: r.mediaType, verityRootHash: r.verityRootHash! })
    expect(await snapshotTree(x, { times: true })).toEqual(expected)

    const sde = 1_500_000_000
    const clamped = await build(src, { kind: 'erofs', verity: false, sourceDateEpoch: sde })
    const squashfs = await build(src, { kind: 'squashfs', verity: false, sourceDateEpoch: sde })
    const y = join(await tempDir(), 'y')
    const z = join(await tempDir(), 'z')
    await extractFsImage(clamped.file, y, { mediaType: clamped.mediaType })
    await extractFsImage(squashfs.file, z, { mediaType: squashfs.mediaType })
    const snap = await snapshotTree(y, { times: true })
    expect(snap).toEqual(await snapshotTree(z, { times: true }))
    const times = Object.fromEntries(snap.map((e) => [e.path, e.mtime]))
    expect(times['a.txt']).toBe(OLD_TIME)
    expect(times['dangling']).toBe(OLD_TIME)
    expect(times['big.bin']).toBe(sde)
    expect(times['sub/gone']).toBe(sde)
    expect(Math.floor((await stat(y)).mtimeMs / 1000)).toBe(sde)
  })

  it('erofs compression level 0 writes an uncompressed image, 1-12 lz4hc', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    const none = await build(src, { kind: 'erofs', verity: false, compressionLevel: 0 })
    const hc = await build(src, { kind: 'erofs', verity: false, compressionLevel: 12 })
    expect(hc.size).toBeLessThan(none.size)
    await expect(build(src, { kind: 'erofs', verity: false, compressionLevel: 13 })).rejects.toMatchObject({
      code: 'USAGE',
    })
  })

  it('builds both kinds from a mounted squashfs that has no xattr support (a base layer opened read-only)', async () => {
    const src = join(await tempDir(), 'plain')
    await sh('mkdir', ['-p', join(src, 'd')])
    await sh('sh', ['-c', `echo hi > ${join(src, 'd', 'f')}`])
    const img = join(await tempDir(), 'plain.squashfs')
    // mksquashfs writes no xattr table when the tree has none: the kernel then answers ENOTSUP.
    expect((await sh('mksquashfs', [src, img, '-no-progress', '-quiet'])).exitCode).toBe(0)
    const mnt = await tempDir()
    expect((await sh('mount', ['-t', 'squashfs', '-o', 'loop,ro', img, mnt])).exitCode).toBe(0)
    try {
      expect(supportsXattrs(mnt)).toBe(false)
      for (const kind of ['squashfs', 'erofs'] as const) {
        const r = await build(mnt, { kind, verity: true })
        const back = await tempDir()
        await extractFsImage(r.file, join(back, 'x'), { mediaType: r.mediaType })
        expect(await readFile(join(back, 'x', 'd', 'f'), 'utf8')).toBe('hi\n')
      }
    } finally {
      await sh('umount', [mnt])
    }
    expect(supportsXattrs(src)).toBe(true)
  })
})
