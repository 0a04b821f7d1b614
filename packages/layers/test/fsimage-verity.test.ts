import { existsSync } from 'node:fs'
import { open, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { StackerError } from '@stacker/core'
import { Annotations, MediaTypes } from '@stacker/oci'
import { describe, expect, it } from 'vitest'
import {
  appendVerity,
  extractFsImage,
  type FsImageKind,
  fsImageDataSize,
  openFsImage,
  verifyVerity,
  writeFsImage,
} from '../src/fsimage/index.js'
import { isRoot, makeLayerTree, pseudoRandom, sh, useTempDirs } from './fsimage-helpers.js'

const tempDir = useTempDirs()

/** The independent check: veritysetup itself, as a user would run it. */
async function veritysetupVerify(file: string, rootHash: string, hashOffset: number): Promise<boolean> {
  const r = await sh('veritysetup', ['verify', file, file, rootHash, `--hash-offset=${hashOffset}`])
  return r.exitCode === 0
}

async function flipByte(file: string, at: number): Promise<void> {
  const fh = await open(file, 'r+')
  try {
    const b = Buffer.alloc(1)
    await fh.read(b, 0, 1, at)
    b[0] = b[0]! ^ 0xff
    await fh.write(b, 0, 1, at)
  } finally {
    await fh.close()
  }
}

describe('appendVerity on a plain file', () => {
  it('pads to 4096, appends a tree that veritysetup verifies, and is deterministic', async () => {
    const dir = await tempDir()
    const hashes: string[] = []
    for (const name of ['a', 'b']) {
      const f = join(dir, name)
      await writeFile(f, pseudoRandom(3 * 4096 + 904, 'plain'))
      const { rootHash, hashOffset } = await appendVerity(f)
      expect(hashOffset).toBe(4 * 4096)
      expect(rootHash).toMatch(/^[0-9a-f]{64}$/)
      expect(await veritysetupVerify(f, rootHash, hashOffset)).toBe(true)
      await verifyVerity(f, rootHash, hashOffset)
      // Padding is zeros; the data before it is untouched.
      const content = await readFile(f)
      expect(content.subarray(3 * 4096 + 904, hashOffset).every((b) => b === 0)).toBe(true)
      expect(content.subarray(0, 16)).toEqual(pseudoRandom(16, 'plain'))
      hashes.push(rootHash, (await readFile(f)).toString('base64'))
    }
    expect(hashes[0]).toBe(hashes[2])
    expect(hashes[1]).toBe(hashes[3])
  })

  it('derives the salt from the content: different data, different salt', async () => {
    const dir = await tempDir()
    const salts: string[] = []
    for (const seed of ['x', 'y']) {
      const f = join(dir, seed)
      await writeFile(f, pseudoRandom(8192, seed))
      const { hashOffset } = await appendVerity(f)
      const dump = await sh('veritysetup', ['dump', f, `--hash-offset=${hashOffset}`])
      const salt = /^Salt:\s*([0-9a-f]+)/m.exec(dump.stdout)?.[1]
      expect(salt).toMatch(/^[0-9a-f]{64}$/)
      salts.push(salt!)
    }
    expect(salts[0]).not.toBe(salts[1])
  })

  it('rejects a root hash that is not hex', async () => {
    const f = join(await tempDir(), 'f')
    await writeFile(f, pseudoRandom(4096, 'z'))
    const { hashOffset } = await appendVerity(f)
    await expect(verifyVerity(f, 'nothex', hashOffset)).rejects.toMatchObject({ code: 'LAYER' })
  })
})

describe.skipIf(!isRoot)('verity on images (needs root: mknod)', () => {
  for (const kind of ['squashfs', 'erofs'] as const satisfies FsImageKind[]) {
    it(`${kind}: verity data verified by veritysetup, refused once a data byte flips`, async () => {
      const src = join(await tempDir(), 'layer')
      await makeLayerTree(src)
      const r = await writeFsImage(src, await tempDir(), { kind, verity: true })
      if (!r?.verityRootHash || r.verityHashOffset === undefined) throw new Error('no verity')
      expect(r.annotations).toEqual({ [Annotations.verityRootHash]: r.verityRootHash })
      const dataSize = await fsImageDataSize(r.file, kind)
      expect(r.verityHashOffset).toBe(dataSize)
      expect(dataSize % 4096).toBe(0)
      expect(r.size).toBeGreaterThan(dataSize)
      expect(await veritysetupVerify(r.file, r.verityRootHash, dataSize)).toBe(true)
      // Without an explicit offset, it is read from the filesystem superblock.
      await verifyVerity(r.file, r.verityRootHash)

      const other = await writeFsImage(src, await tempDir(), { kind, verity: false })
      expect(other?.verityRootHash).toBeUndefined()
      expect(other?.annotations).toEqual({})
      expect(other?.size).toBe(dataSize)

      // Flip a byte in the middle of the data (not the superblock, so the image still parses).
      await flipByte(r.file, Math.floor(dataSize / 2))
      expect(await veritysetupVerify(r.file, r.verityRootHash, dataSize)).toBe(false)
      const err = await verifyVerity(r.file, r.verityRootHash).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(StackerError)
      expect(err).toMatchObject({ code: 'LAYER', message: expect.stringContaining('invalid root hash') })

      const target = join(await tempDir(), 'mnt')
      const mediaType = r.mediaType
      await expect(openFsImage(r.file, target, { mediaType, verityRootHash: r.verityRootHash })).rejects.toMatchObject({
        code: 'LAYER',
        message: expect.stringContaining('invalid root hash'),
      })
      expect(existsSync(target)).toBe(false)
      await expect(
        extractFsImage(r.file, target, { mediaType, verityRootHash: r.verityRootHash }),
      ).rejects.toMatchObject({ code: 'LAYER' })
      expect(existsSync(target)).toBe(false)
    })
  }

  it('refuses an image without verity data when the annotation says it has some', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    const plain = await writeFsImage(src, await tempDir(), { kind: 'squashfs', verity: false })
    const sealed = await writeFsImage(src, await tempDir(), { kind: 'squashfs', verity: true })
    const err = await verifyVerity(plain!.file, sealed!.verityRootHash!).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'LAYER', message: expect.stringMatching(/invalid root hash .*no verity data/) })
  })

  it('refuses verity data that covers only part of the filesystem', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    const r = (await writeFsImage(src, await tempDir(), { kind: 'squashfs', verity: false }))!
    const size = (await stat(r.file)).size
    expect(size).toBeGreaterThan(4096)
    // Seal only the first block, the way a forged blob could.
    const fmt = await sh('veritysetup', ['format', `--hash-offset=${size}`, '--data-blocks=1', r.file, r.file])
    const rootHash = /^Root hash:\s*([0-9a-f]+)/m.exec(fmt.stdout)?.[1]
    expect(rootHash).toBeDefined()
    expect(await veritysetupVerify(r.file, rootHash!, size)).toBe(true)
    await expect(verifyVerity(r.file, rootHash!)).rejects.toMatchObject({
      code: 'LAYER',
      message: expect.stringContaining('covers 4096 bytes'),
    })
  })

  it('accepts verity appended the way upstream does it (random salt)', async () => {
    const src = join(await tempDir(), 'layer')
    await makeLayerTree(src)
    const r = (await writeFsImage(src, await tempDir(), { kind: 'squashfs', verity: false }))!
    const size = (await stat(r.file)).size
    const fmt = await sh('veritysetup', [
      'format',
      `--hash-offset=${size}`,
      `--data-blocks=${size / 4096}`,
      r.file,
      r.file,
    ])
    const rootHash = /^Root hash:\s*([0-9a-f]+)/m.exec(fmt.stdout)![1]!
    const x = join(await tempDir(), 'x')
    await extractFsImage(r.file, x, { mediaType: MediaTypes.layerSquashfsZstd, verityRootHash: rootHash })
    expect(await readFile(join(x, 'a.txt'), 'utf8')).toBe('hello\n')
  })
})
