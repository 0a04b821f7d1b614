import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { runCleanups } from '@stacker/core'
import { MediaTypes } from '@stacker/oci'
import { describe, expect, it } from 'vitest'
import {
  appendVerity,
  DEFAULT_OPEN_POLICY,
  extractFsImage,
  type FsImageResult,
  mountPointsUnder,
  type OpenMethod,
  openFsImage,
  parseOpenPolicy,
  writeFsImage,
} from '../src/fsimage/index.js'
import { isRoot, makeLayerTree, sh, snapshotTree, useTempDirs, withoutBookkeeping } from './fsimage-helpers.js'

const tempDir = useTempDirs()

async function layer(kind: 'squashfs' | 'erofs', verity = true): Promise<{ src: string; image: FsImageResult }> {
  const src = join(await tempDir(), 'layer')
  await makeLayerTree(src)
  const image = await writeFsImage(src, await tempDir(), { kind, verity })
  if (!image) throw new Error('no image')
  return { src, image }
}

function openOpts(image: FsImageResult, policy: OpenMethod[]) {
  return {
    mediaType: image.mediaType,
    policy,
    ...(image.verityRootHash ? { verityRootHash: image.verityRootHash } : {}),
  }
}

describe('open policy', () => {
  it('parses upstream policy strings', () => {
    expect(parseOpenPolicy('kmount squashfuse unsquashfs')).toEqual([...DEFAULT_OPEN_POLICY])
    expect(parseOpenPolicy(' unsquashfs  kmount ')).toEqual(['unsquashfs', 'kmount'])
    expect(() => parseOpenPolicy('kmount guess')).toThrow('unknown squashfs extract policy "guess"')
    expect(() => parseOpenPolicy('')).toThrow()
  })

  it('refuses media types that are not filesystem images', async () => {
    const dir = await tempDir()
    await expect(
      openFsImage(join(dir, 'x'), join(dir, 't'), { mediaType: MediaTypes.layerTarGzip }),
    ).rejects.toMatchObject({ code: 'LAYER' })
    await expect(extractFsImage(join(dir, 'x'), join(dir, 't'), { mediaType: 'application/x-foo' })).rejects.toThrow(
      'invalid layer type application/x-foo',
    )
  })
})

describe.skipIf(!isRoot)('openFsImage and extractFsImage (needs root: mknod, mounts)', () => {
  it('squashfs: kmount, squashfuse and unsquashfs all show the source tree', async () => {
    const { src, image } = await layer('squashfs')
    const expected = withoutBookkeeping(await snapshotTree(src, { times: true }))
    const seen: string[] = []
    for (const method of DEFAULT_OPEN_POLICY) {
      const target = join(await tempDir(), 'mnt')
      const m = await openFsImage(image.file, target, openOpts(image, [method]))
      try {
        seen.push(m.method)
        expect(m.dir).toBe(target)
        expect(await snapshotTree(m.dir, { times: true })).toEqual(expected)
        expect((await mountPointsUnder(target)).length).toBe(method === 'unsquashfs' ? 0 : 1)
      } finally {
        await m.release()
      }
      await m.release()
      expect(existsSync(target)).toBe(false)
    }
    expect(seen).toEqual(['kmount', 'squashfuse', 'extract'])
  })

  it('erofs: kmount and extraction show the source tree; squashfuse is skipped', async () => {
    const { src, image } = await layer('erofs')
    const expected = withoutBookkeeping(await snapshotTree(src, { times: true }))
    for (const policy of [['kmount'], ['squashfuse', 'unsquashfs']] as OpenMethod[][]) {
      const target = join(await tempDir(), 'mnt')
      const m = await openFsImage(image.file, target, openOpts(image, policy))
      try {
        expect(m.method).toBe(policy[0] === 'kmount' ? 'kmount' : 'extract')
        expect(await snapshotTree(m.dir, { times: true })).toEqual(expected)
      } finally {
        await m.release()
      }
    }
    await expect(
      openFsImage(image.file, join(await tempDir(), 'mnt'), openOpts(image, ['squashfuse'])),
    ).rejects.toMatchObject({ code: 'MOUNT' })
  })

  it('an opened image works as an overlay lower dir: whiteouts and opaque dirs hide the base', async () => {
    const { image } = await layer('squashfs')
    const base = join(await tempDir(), 'base')
    await mkdir(join(base, 'sub'), { recursive: true })
    await mkdir(join(base, 'opq'), { recursive: true })
    await writeFile(join(base, 'sub/gone'), 'deleted by the layer\n')
    await writeFile(join(base, 'sub/kept'), 'kept\n')
    await writeFile(join(base, 'opq/hidden'), 'hidden by the opaque dir\n')
    for (const method of DEFAULT_OPEN_POLICY) {
      const work = await tempDir()
      const m = await openFsImage(image.file, join(work, 'lower'), openOpts(image, [method]))
      const merged = join(work, 'merged')
      await mkdir(merged)
      try {
        const mount = await sh('mount', [
          '-t',
          'overlay',
          'overlay',
          '-o',
          `ro,userxattr,lowerdir=${m.dir}:${base}`,
          merged,
        ])
        expect(mount.stderr).toBe('')
        try {
          expect((await readdir(join(merged, 'sub'))).sort()).toEqual(['deeper', 'hardlink', 'kept', 'owned.txt'])
          expect(await readdir(join(merged, 'opq'))).toEqual(['new.txt'])
          expect(await readFile(join(merged, 'a.txt'), 'utf8')).toBe('hello\n')
        } finally {
          await sh('umount', [merged])
        }
      } finally {
        await m.release()
      }
    }
  })

  it('falls through the policy: without kmount in it, squashfuse is used', async () => {
    const { image } = await layer('squashfs', false)
    const target = join(await tempDir(), 'mnt')
    const m = await openFsImage(image.file, target, {
      mediaType: image.mediaType,
      policy: ['squashfuse', 'unsquashfs'],
    })
    try {
      expect(m.method).toBe('squashfuse')
    } finally {
      await m.release()
    }
  })

  it('a held image is released by runCleanups (interrupted process)', async () => {
    const { image } = await layer('squashfs', false)
    const target = join(await tempDir(), 'mnt')
    const m = await openFsImage(image.file, target, { mediaType: image.mediaType, policy: ['kmount'] })
    expect(await mountPointsUnder(target)).toEqual([target])
    expect(await runCleanups()).toEqual([])
    expect(await mountPointsUnder(target)).toEqual([])
    await m.release()
  })

  it('an extracted image that is kept stays in place through release and runCleanups', async () => {
    const { image } = await layer('squashfs', false)
    const target = join(await tempDir(), 'kept')
    const m = await openFsImage(image.file, target, { mediaType: image.mediaType, policy: ['unsquashfs'] })
    expect(m.method).toBe('extract')
    const before = await readdir(target)
    expect(before.length).toBeGreaterThan(0)
    m.keep()
    expect(await runCleanups()).toEqual([])
    await m.release()
    expect(await readdir(target)).toEqual(before)
  })

  it('refuses a non-empty target and leaves it alone', async () => {
    const { image } = await layer('squashfs', false)
    const target = await tempDir()
    await writeFile(join(target, 'keep'), 'x')
    await expect(openFsImage(image.file, target, { mediaType: image.mediaType })).rejects.toMatchObject({
      code: 'MOUNT',
    })
    await expect(extractFsImage(image.file, target, { mediaType: image.mediaType })).rejects.toMatchObject({
      code: 'EXTRACT',
    })
    expect(await readdir(target)).toEqual(['keep'])
  })

  it('extracts images written by plain mksquashfs as upstream does, under every accepted media type', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    const expected = await snapshotTree(src, { times: true })
    const dir = await tempDir()
    // Upstream: `mksquashfs <upperdir> <tmp> [-comp zstd]`, xattrs as they are, verity with a random salt.
    const zstd = join(dir, 'zstd.squashfs')
    expect((await sh('mksquashfs', [src, zstd, '-comp', 'zstd', '-no-progress'])).exitCode).toBe(0)
    const { rootHash } = await appendVerity(zstd)
    const gzip = join(dir, 'gzip.squashfs')
    expect((await sh('mksquashfs', [src, gzip, '-no-progress'])).exitCode).toBe(0)
    const cases: Array<[string, string, string | undefined]> = [
      [zstd, MediaTypes.layerSquashfsZstd, rootHash],
      [gzip, MediaTypes.layerSquashfsGzip, undefined],
      [gzip, MediaTypes.layerSquashfs, undefined],
    ]
    for (const [file, mediaType, verityRootHash] of cases) {
      const x = join(await tempDir(), 'x')
      await extractFsImage(file, x, { mediaType, ...(verityRootHash ? { verityRootHash } : {}) })
      expect(await snapshotTree(x, { times: true })).toEqual(expected)
    }
  })

  it('kmount and unsquashfs give the same tree for the same image', async () => {
    const { image } = await layer('squashfs')
    const a = await openFsImage(image.file, join(await tempDir(), 'a'), openOpts(image, ['kmount']))
    const b = await openFsImage(image.file, join(await tempDir(), 'b'), openOpts(image, ['unsquashfs']))
    try {
      expect(a.method).toBe('kmount')
      expect(b.method).toBe('extract')
      expect(await snapshotTree(a.dir, { times: true })).toEqual(await snapshotTree(b.dir, { times: true }))
    } finally {
      await a.release()
      await b.release()
    }
  })
})
