import { createHash } from 'node:crypto'
import { lstatSync, readdirSync } from 'node:fs'
import { link, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setAttribute } from '@napi-rs/xattr'
import { StackerError } from '@stacker/core'
import { describe, expect, it } from 'vitest'
import { extractFsImage, type FsImageOptions, writeFsImage } from '../src/fsimage/index.js'
import { readTar } from '../src/tar/reader.js'
import { createTarStream } from '../src/tar/index.js'
import { isRoot, NEW_TIME, OLD_TIME, sh, useTempDirs } from './fsimage-helpers.js'

const tempDir = useTempDirs()

const SDE = 1_500_000_000

async function fileHash(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex')
}

async function build(dir: string, opts: FsImageOptions) {
  const r = await writeFsImage(dir, await tempDir(), opts)
  if (!r) throw new Error('no image')
  return r
}

/** Sets a time with nanoseconds (node's utimes takes float seconds, which cannot hold them). */
async function touch(path: string, time: string): Promise<void> {
  const r = await sh('touch', ['-h', '-d', `@${time}`, path])
  if (r.exitCode !== 0) throw new Error(`touch: ${r.stderr}`)
}

/** A layer tree whose times sit on both sides of SDE, most with a sub-second part, on every kind
 *  of entry; a directory large enough to span several erofs blocks; xattrs on directories (they
 *  move where an inode's inline data starts). Needs root (mknod). */
async function makeTimedTree(dir: string): Promise<void> {
  await mkdir(join(dir, 'olddir/deeper'), { recursive: true })
  await mkdir(join(dir, 'newdir'))
  await mkdir(join(dir, 'many'))
  await mkdir(join(dir, 'opq'))
  await writeFile(join(dir, 'old.txt'), 'old\n')
  await writeFile(join(dir, 'new.txt'), 'new\n'.repeat(5000))
  await writeFile(join(dir, 'exact.txt'), 'exact\n')
  await writeFile(join(dir, 'just-after'), '')
  await writeFile(join(dir, 'just-before'), '')
  await writeFile(join(dir, 'olddir/newfile'), 'n\n')
  await writeFile(join(dir, 'olddir/deeper/oldfile'), 'o\n')
  await writeFile(join(dir, 'newdir/oldfile'), 'o\n')
  await writeFile(join(dir, 'opq/inside'), 'i\n')
  await link(join(dir, 'old.txt'), join(dir, 'olddir/hard'))
  await symlink('old.txt', join(dir, 'old-link'))
  await symlink('/nonexistent', join(dir, 'new-link'))
  const mknod = await sh('mknod', [join(dir, 'gone'), 'c', '0', '0'])
  if (mknod.exitCode !== 0) throw new Error(`mknod: ${mknod.stderr}`)
  await setAttribute(join(dir, 'newdir'), 'user.test', 'v')
  await setAttribute(join(dir, 'opq'), 'user.overlay.opaque', 'y')
  for (let i = 0; i < 300; i++) {
    const p = join(dir, 'many', `${String(i).padStart(3, '0')}-${'x'.repeat(100)}`)
    await writeFile(p, String(i))
    await touch(p, i % 2 === 0 ? `${OLD_TIME + i}.${i}` : `${NEW_TIME + i}.${i}`)
  }
  const times: Array<[string, string]> = [
    ['old.txt', `${OLD_TIME}.7`],
    ['new.txt', `${NEW_TIME}.3`],
    ['exact.txt', `${SDE}`],
    ['just-after', `${SDE}.999999999`],
    ['just-before', `${SDE - 1}.5`],
    ['olddir/newfile', `${NEW_TIME}`],
    ['olddir/deeper/oldfile', `${OLD_TIME}.1`],
    ['olddir/deeper', `${OLD_TIME}.2`],
    ['olddir', `${OLD_TIME}.123456789`],
    ['newdir/oldfile', `${OLD_TIME}`],
    ['newdir', `${NEW_TIME}.5`],
    ['opq/inside', `${NEW_TIME}`],
    ['opq', `${OLD_TIME}.9`],
    ['old-link', `${OLD_TIME}.4`],
    ['new-link', `${NEW_TIME}.6`],
    ['gone', `${NEW_TIME}.1`],
    ['many', `${NEW_TIME}`],
    ['.', `${OLD_TIME}.25`],
  ]
  for (const [p, t] of times) await touch(join(dir, p), t)
}

/** Every entry below `root` (root included as '.') with its mtime in nanoseconds. */
function mtimes(root: string): Map<string, bigint> {
  const out = new Map<string, bigint>()
  const visit = (rel: string) => {
    const st = lstatSync(rel === '' ? root : join(root, rel), { bigint: true })
    out.set(rel || '.', st.mtimeNs)
    if (st.isDirectory()) for (const n of readdirSync(join(root, rel)).sort()) visit(rel ? `${rel}/${n}` : n)
  }
  visit('')
  return out
}

/** The mtimes the tar writer gives each entry of `dir` (whiteouts under their overlay names), in ns. */
async function tarMtimes(dir: string, sourceDateEpoch: number): Promise<Map<string, bigint>> {
  const out = new Map<string, bigint>()
  for await (const e of readTar(createTarStream(dir, { sourceDateEpoch }))) {
    // An opaque directory's marker: an xattr on the directory in the erofs image.
    if (e.name.endsWith('.wh..wh..opq')) continue
    const name = e.name.replace(/\/$/, '').replace(/(^|\/)\.wh\.([^/]+)$/, '$1$2')
    out.set(name, BigInt(e.mtime) * 1_000_000_000n)
  }
  return out
}

/** Mounts an erofs image read-only with the kernel's driver for the duration of `fn`. */
async function withMount<T>(image: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const mnt = await tempDir()
  const m = await sh('mount', ['-t', 'erofs', '-o', 'loop,ro', image, mnt])
  if (m.exitCode !== 0) throw new Error(`mount: ${m.stderr}`)
  try {
    return await fn(mnt)
  } finally {
    await sh('umount', [mnt])
  }
}

describe.skipIf(!isRoot)('erofs layers (needs root: mknod, mount)', () => {
  it('clamp times to SOURCE_DATE_EPOCH in whole seconds, as the tar writer does', async () => {
    const src = join(await tempDir(), 'layer')
    await makeTimedTree(src)
    const before = mtimes(src)
    const r = await build(src, { kind: 'erofs', verity: false, sourceDateEpoch: SDE })
    expect((await sh('fsck.erofs', [r.file])).exitCode).toBe(0)

    const got = await withMount(r.file, async (mnt) => mtimes(mnt))
    const tar = await tarMtimes(src, SDE)
    const s = (n: number) => BigInt(n) * 1_000_000_000n
    // The tar has no entry for the root; squashfs clamps it like the rest.
    expect(got.get('.')).toBe(s(OLD_TIME))
    got.delete('.')
    expect(got).toEqual(tar)
    expect(got.get('old.txt')).toBe(s(OLD_TIME))
    expect(got.get('olddir/hard')).toBe(s(OLD_TIME))
    expect(got.get('new.txt')).toBe(s(SDE))
    expect(got.get('exact.txt')).toBe(s(SDE))
    expect(got.get('just-after')).toBe(s(SDE))
    expect(got.get('just-before')).toBe(s(SDE - 1))
    expect(got.get('olddir')).toBe(s(OLD_TIME))
    expect(got.get('newdir')).toBe(s(SDE))
    expect(got.get('opq')).toBe(s(OLD_TIME))
    expect(got.get('old-link')).toBe(s(OLD_TIME))
    expect(got.get('new-link')).toBe(s(SDE))
    expect(got.get('gone')).toBe(s(SDE))
    expect(got.get(`many/000-${'x'.repeat(100)}`)).toBe(s(OLD_TIME))
    expect(got.get(`many/299-${'x'.repeat(100)}`)).toBe(s(SDE))
    expect(got.size).toBe(318)

    // Content and the rest of the metadata come through as well.
    const x = join(await tempDir(), 'x')
    await extractFsImage(r.file, x, { mediaType: r.mediaType })
    expect(await readFile(join(x, 'new.txt'), 'utf8')).toBe('new\n'.repeat(5000))
    expect((await readdir(join(x, 'many'))).length).toBe(300)
    // The source is left as it was.
    expect(mtimes(src)).toEqual(before)
  })

  it('the same tree gives the same bytes and verity root hash, whatever its times newer than SDE', async () => {
    const src = join(await tempDir(), 'layer')
    await makeTimedTree(src)
    const opts: FsImageOptions = { kind: 'erofs', verity: true, sourceDateEpoch: SDE }
    const a = await build(src, opts)
    const b = await build(src, opts)
    expect(await fileHash(b.file)).toBe(await fileHash(a.file))
    expect(b.verityRootHash).toBe(a.verityRootHash)
    // Rebuilt content is newer than SDE at another instant each time; clamped, it must not matter.
    for (const p of ['new.txt', 'newdir', 'new-link', 'gone', 'many', 'exact.txt']) {
      await touch(join(src, p), `${NEW_TIME + 12345}.${p.length}`)
    }
    const c = await build(src, opts)
    expect(await fileHash(c.file)).toBe(await fileHash(a.file))
    expect(c.verityRootHash).toBe(a.verityRootHash)
    const verify = await sh('veritysetup', [
      'verify',
      c.file,
      c.file,
      c.verityRootHash!,
      `--hash-offset=${c.verityHashOffset}`,
    ])
    expect(verify.stderr).toBe('')
    expect(verify.exitCode).toBe(0)
    // An older time is kept, so it changes the image.
    await touch(join(src, 'old.txt'), `${OLD_TIME + 1}`)
    const d = await build(src, opts)
    expect(d.verityRootHash).not.toBe(a.verityRootHash)
  })

  it('without SOURCE_DATE_EPOCH, keeps every mtime to the nanosecond', async () => {
    const src = join(await tempDir(), 'layer')
    await makeTimedTree(src)
    const r = await build(src, { kind: 'erofs', verity: false })
    expect((await sh('fsck.erofs', [r.file])).exitCode).toBe(0)
    const got = await withMount(r.file, async (mnt) => mtimes(mnt))
    expect(got).toEqual(mtimes(src))
  })

  it('a 255-byte file name: erofs refuses it naming the file, squashfs and tar keep it', async () => {
    const src = join(await tempDir(), 'layer')
    const long = 'n'.repeat(255)
    await mkdir(join(src, 'sub'), { recursive: true })
    await writeFile(join(src, 'sub', 'n'.repeat(254)), 'short\n')
    await writeFile(join(src, 'sub', long), 'long\n')
    const out = await tempDir()
    const err = await writeFsImage(src, out, { kind: 'erofs', verity: true, sourceDateEpoch: SDE }).catch(
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(StackerError)
    expect((err as StackerError).code).toBe('LAYER')
    expect((err as StackerError).message).toBe(
      `erofs cannot hold the 255-byte file name of sub/${long} (this mkfs.erofs stores at most 254 bytes); use another --layer-type, such as squashfs or tar`,
    )
    expect(await readdir(out)).toEqual([])

    const sq = await build(src, { kind: 'squashfs', verity: false, sourceDateEpoch: SDE })
    const x = join(await tempDir(), 'x')
    await extractFsImage(sq.file, x, { mediaType: sq.mediaType })
    expect(await readFile(join(x, 'sub', long), 'utf8')).toBe('long\n')
    expect(await readFile(join(x, 'sub', 'n'.repeat(254)), 'utf8')).toBe('short\n')

    const names: string[] = []
    for await (const e of readTar(createTarStream(src))) names.push(e.name)
    expect(names).toContain(`sub/${long}`)

    // 254 bytes is the most erofs takes, for a directory as well.
    const ok = join(await tempDir(), 'ok')
    await mkdir(join(ok, 'd'.repeat(254)), { recursive: true })
    await writeFile(join(ok, 'd'.repeat(254), 'f'.repeat(254)), 'f\n')
    const e = await build(ok, { kind: 'erofs', verity: false })
    const y = join(await tempDir(), 'y')
    await extractFsImage(e.file, y, { mediaType: e.mediaType })
    expect(await readFile(join(y, 'd'.repeat(254), 'f'.repeat(254)), 'utf8')).toBe('f\n')
    await mkdir(join(ok, 'd'.repeat(254), 'l'.repeat(255)))
    await expect(build(ok, { kind: 'erofs', verity: false })).rejects.toThrow(
      `name of ${'d'.repeat(254)}/${'l'.repeat(255)} (`,
    )
  })
})
