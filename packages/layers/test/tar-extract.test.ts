import { execFileSync } from 'node:child_process'
import { Readable } from 'node:stream'
import { lstat, mkdir, readFile, readlink, stat, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { getAttribute, setAttribute } from '@napi-rs/xattr'
import { memoryLogger } from '@stacker/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { extractTarLayer, isOverlayWhiteout, OVERLAY_OPAQUE_XATTR, unpackImageLayers } from '../src/tar/index.js'
import { chunksOf, isRoot, listAll, makeTar, removeDir, snapshot, tempDir } from './tar-helpers.js'

describe.runIf(isRoot)('extractTarLayer', () => {
  let work: string
  let target: string
  /** A sibling of the target holding a sentinel; no test may change anything in it. */
  let outside: string
  let outsideBefore: string[]

  beforeEach(async () => {
    work = await tempDir()
    target = join(work, 'target')
    outside = join(work, 'outside')
    await mkdir(target)
    await mkdir(outside)
    await writeFile(join(outside, 'secret'), 'secret')
    outsideBefore = await listAll(work)
  })
  afterEach(async () => {
    try {
      // nothing new anywhere but inside the target, and the sentinel is intact
      const now = (await listAll(work)).filter((p) => p !== 'target' && !p.startsWith('target/'))
      expect(now).toEqual(outsideBefore.filter((p) => p !== 'target' && !p.startsWith('target/')))
      expect(await readFile(join(outside, 'secret'), 'utf8')).toBe('secret')
      expect((await stat(join(outside, 'secret'))).nlink).toBe(1)
    } finally {
      await removeDir(work)
    }
  })

  async function expectExtractError(tar: Buffer, match: RegExp, whiteouts: 'overlay' | 'apply' = 'overlay') {
    const err = await extractTarLayer(chunksOf(tar), target, { whiteouts, sourceDescription: 'hostile' }).catch(
      (e: unknown) => e,
    )
    expect(err).toMatchObject({ code: 'EXTRACT' })
    expect((err as Error).message).toMatch(match)
    expect((err as Error).message).not.toContain('\n')
    return err as Error
  }

  describe('hostile names stay inside the target', () => {
    it('clamps ".." and absolute names to the target', async () => {
      const tar = await makeTar([
        { name: '../escape', body: '1' },
        { name: 'a/../../escape2', body: '2' },
        { name: '/abs/escape3', body: '3' },
        { name: '../../../../../../../../tmp/escape4', body: '4' },
        { name: `${outside}/abs-outside`, body: '5' },
      ])
      await extractTarLayer(chunksOf(tar), target, { whiteouts: 'overlay' })
      expect(await readFile(join(target, 'escape'), 'utf8')).toBe('1')
      expect(await readFile(join(target, 'escape2'), 'utf8')).toBe('2')
      expect(await readFile(join(target, 'abs', 'escape3'), 'utf8')).toBe('3')
      expect(await readFile(join(target, 'tmp', 'escape4'), 'utf8')).toBe('4')
      expect(await readFile(join(target, outside, 'abs-outside'), 'utf8')).toBe('5')
    })

    it('resolves an absolute symlink planted by an earlier entry inside the target', async () => {
      const tar = await makeTar([
        { name: 'evil', type: 'symlink', linkname: outside },
        { name: 'evil/file', body: 'x' },
        { name: 'evil/secret', body: 'overwritten?' },
      ])
      await extractTarLayer(chunksOf(tar), target, { whiteouts: 'overlay' })
      expect(await readlink(join(target, 'evil'))).toBe(outside)
      expect(await readFile(join(target, outside, 'file'), 'utf8')).toBe('x')
      expect(await readFile(join(target, outside, 'secret'), 'utf8')).toBe('overwritten?')
    })

    it('resolves a relative symlink climbing above the root inside the target', async () => {
      const tar = await makeTar([
        { name: 'd/evil', type: 'symlink', linkname: '../../../..' },
        { name: 'd/evil/x', body: 'x' },
        { name: 'd/evil/outside/secret', body: 'y' },
      ])
      await extractTarLayer(chunksOf(tar), target, { whiteouts: 'overlay' })
      expect(await readFile(join(target, 'x'), 'utf8')).toBe('x')
      expect(await readFile(join(target, 'outside', 'secret'), 'utf8')).toBe('y')
    })

    it('resolves symlinks planted by an earlier layer inside the target', async () => {
      await symlink(outside, join(target, 'planted-abs'))
      await symlink('../outside', join(target, 'planted-rel'))
      await symlink(join(outside, 'secret'), join(target, 'planted-file'))
      const tar = await makeTar([
        { name: 'planted-abs/a', body: 'a' },
        { name: 'planted-rel/b', body: 'b' },
        { name: 'planted-rel/secret', type: 'directory' },
        { name: 'planted-file', body: 'replaces the link, not the secret' },
      ])
      await extractTarLayer(chunksOf(tar), target, { whiteouts: 'apply' })
      expect(await readFile(join(target, outside, 'a'), 'utf8')).toBe('a')
      expect(await readFile(join(target, 'outside', 'b'), 'utf8')).toBe('b')
      expect((await lstat(join(target, 'outside', 'secret'))).isDirectory()).toBe(true)
      const replaced = await lstat(join(target, 'planted-file'))
      expect(replaced.isFile()).toBe(true)
      expect(await readFile(join(target, 'planted-file'), 'utf8')).toBe('replaces the link, not the secret')
    })

    it('never follows a symlink when setting mode, owner or times', async () => {
      await symlink(join(outside, 'secret'), join(target, 'lnk'))
      const before = await stat(join(outside, 'secret'))
      const tar = await makeTar([
        { name: 'lnk2', type: 'symlink', linkname: join(outside, 'secret'), mode: 0o777, uid: 123 },
        { name: 'lnk', type: 'directory', mode: 0o777, uid: 123 },
      ])
      await extractTarLayer(chunksOf(tar), target, { whiteouts: 'overlay' })
      const after = await stat(join(outside, 'secret'))
      expect([after.mode, after.uid, after.mtimeMs]).toEqual([before.mode, before.uid, before.mtimeMs])
      expect((await lstat(join(target, 'lnk2'))).uid).toBe(123)
      expect((await lstat(join(target, 'lnk'))).isDirectory()).toBe(true)
    })

    it('refuses hard links that point outside or at nothing', async () => {
      const tar1 = await makeTar([{ name: 'pw', type: 'link', linkname: '../../etc/passwd' }])
      const pw = await stat('/etc/passwd')
      const e1 = await expectExtractError(tar1, /hostile: entry "pw": hard link target "..\/..\/etc\/passwd"/)
      expect(e1.message).toMatch(/does not exist/)
      expect((await stat('/etc/passwd')).nlink).toBe(pw.nlink)
      const tar2 = await makeTar([{ name: 's', type: 'link', linkname: join(outside, 'secret') }])
      await expectExtractError(tar2, /entry "s": hard link target .* does not exist/)
      const tar3 = await makeTar([
        { name: 'root', type: 'symlink', linkname: '/' },
        { name: 'x', type: 'link', linkname: `root${outside}/secret` },
      ])
      await expectExtractError(tar3, /entry "x": hard link target/)
    })

    it('refuses hard links to directories, and accepts ones inside', async () => {
      const bad = await makeTar([
        { name: 'd', type: 'directory' },
        { name: 'l', type: 'link', linkname: 'd' },
      ])
      await expectExtractError(bad, /entry "l": hard link to a directory/)
      const good = await makeTar([
        { name: 'f', body: 'data' },
        { name: 'sub/../l', type: 'link', linkname: '/f' },
      ])
      await extractTarLayer(chunksOf(good), target, { whiteouts: 'overlay' })
      expect((await stat(join(target, 'l'))).ino).toBe((await stat(join(target, 'f'))).ino)
    })

    it('stops on symlink loops and on files used as directories', async () => {
      const loop = await makeTar([
        { name: 'a', type: 'symlink', linkname: 'b' },
        { name: 'b', type: 'symlink', linkname: 'a' },
        { name: 'a/x', body: 'x' },
      ])
      await expectExtractError(loop, /entry "a\/x": too many levels of symbolic links/)
      const notDir = await makeTar([
        { name: 'f', body: 'x' },
        { name: 'f/x', body: 'x' },
      ])
      await expectExtractError(notDir, /entry "f\/x": f is not a directory/)
    })

    it('puts whiteouts reached through symlinks inside the target', async () => {
      const tar = await makeTar([
        { name: 'evil', type: 'symlink', linkname: outside },
        { name: 'evil/.wh.secret', body: '' },
        { name: 'evil/.wh..wh..opq', body: '' },
      ])
      await extractTarLayer(chunksOf(tar), target, { whiteouts: 'overlay' })
      expect(isOverlayWhiteout(await lstat(join(target, outside, 'secret')))).toBe(true)
      expect((await getAttribute(join(target, outside), OVERLAY_OPAQUE_XATTR))?.toString()).toBe('y')
      await extractTarLayer(chunksOf(tar), join(work, 'target'), { whiteouts: 'apply' })
    })

    it('does not let a tar plant overlay xattrs', async () => {
      const logger = memoryLogger()
      const tar = await makeTar([
        { name: 'd', type: 'directory', pax: { 'SCHILY.xattr.user.overlay.opaque': 'y', 'SCHILY.xattr.user.ok': 'v' } },
      ])
      await extractTarLayer(chunksOf(tar), target, { whiteouts: 'overlay', logger })
      expect(await getAttribute(join(target, 'd'), OVERLAY_OPAQUE_XATTR)).toBeNull()
      expect((await getAttribute(join(target, 'd'), 'user.ok'))?.toString()).toBe('v')
      expect(logger.lines('debug').join('\n')).toMatch(/not setting overlay xattr user.overlay.opaque/)
    })

    it('rejects a name ending in ".." and a bare whiteout prefix', async () => {
      await expectExtractError(await makeTar([{ name: 'a/..', body: 'x' }]), /entry "a\/..": name ends in "\.\."/)
      await expectExtractError(await makeTar([{ name: 'a/.wh.', body: '' }]), /invalid whiteout name/)
    })
  })

  describe('broken input', () => {
    it('turns a truncated gzip layer into an EXTRACT error', async () => {
      const tar = await makeTar([{ name: 'big', body: Buffer.alloc(200_000, 7) }])
      const gz = gzipSync(tar)
      await expectExtractError(gz.subarray(0, gz.length - 20), /hostile: entry "big": gzip: unexpected end of file/)
    })

    it('turns a truncated zstd layer into an EXTRACT error', async () => {
      const tar = await makeTar([{ name: 'big', body: Buffer.alloc(200_000, 7) }])
      const zst = execFileSync('zstd', ['-q', '-c'], { input: tar })
      await expectExtractError(zst.subarray(0, zst.length - 8), /hostile: .*zstd failed/)
    })

    it('turns a truncated plain tar and garbage into EXTRACT errors', async () => {
      const tar = await makeTar([{ name: 'big', body: Buffer.alloc(20_000, 7) }])
      await expectExtractError(tar.subarray(0, 10_000), /entry "big": unexpected end of tar data/)
      await expectExtractError(Buffer.alloc(2048, 0x41), /invalid tar header checksum/)
      const corrupt = Buffer.from(gzipSync(tar))
      corrupt[100] = (corrupt[100] ?? 0) ^ 0xff
      await expectExtractError(corrupt, /hostile/)
    })

    it('rejects unknown entry types, and sparse ones in a header that is not GNU', async () => {
      for (const [type, match] of [
        ['M', /unsupported tar entry type "M" for "f"/],
        // sparse files are read (tar-sparse.test.ts), but only GNU headers have that layout
        ['S', /sparse file "f": sparse entry \(type S\) without a GNU header/],
      ] as const) {
        const tar = await makeTar([{ name: 'f', body: 'x' }])
        tar[156] = type.charCodeAt(0)
        // fix the checksum so only the type is wrong
        tar.fill(0x20, 148, 156)
        let sum = 0
        for (let i = 0; i < 512; i++) sum += tar[i]!
        tar.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii')
        await expectExtractError(tar, match)
      }
    })
  })

  describe('whiteouts', () => {
    it('overlay: makes 0:0 char devices and opaque xattrs', async () => {
      const tar = await makeTar([
        { name: 'gone/.wh.file', body: '' },
        { name: 'opq/', type: 'directory', mode: 0o711 },
        { name: 'opq/.wh..wh..opq', body: '' },
        { name: 'opq/new', body: 'n' },
        { name: '.wh..wh.plnk', body: '' },
      ])
      await extractTarLayer(chunksOf(tar), target, { whiteouts: 'overlay' })
      const wh = await lstat(join(target, 'gone', 'file'))
      expect(isOverlayWhiteout(wh)).toBe(true)
      expect((await getAttribute(join(target, 'opq'), OVERLAY_OPAQUE_XATTR))?.toString()).toBe('y')
      expect((await stat(join(target, 'opq'))).mode & 0o7777).toBe(0o711)
      expect(await listAll(target)).toEqual(['gone', 'gone/file', 'opq', 'opq/new'])
    })

    it('keep: writes whiteouts as plain files', async () => {
      const tar = await makeTar([
        { name: 'd/.wh.file', body: '' },
        { name: 'd/.wh..wh..opq', body: '' },
      ])
      await extractTarLayer(chunksOf(tar), target, { whiteouts: 'keep' })
      expect(await listAll(target)).toEqual(['d', 'd/.wh..wh..opq', 'd/.wh.file'])
      expect((await lstat(join(target, 'd', '.wh.file'))).isFile()).toBe(true)
    })

    it('apply: deletes lower content, spares this layer, prunes opaque directories', async () => {
      const lower = await makeTar([
        { name: 'keep/', type: 'directory' },
        { name: 'keep/a', body: 'a' },
        { name: 'del/', type: 'directory' },
        { name: 'del/sub/x', body: 'x' },
        { name: 'file', body: 'f' },
        { name: 'opq/', type: 'directory' },
        { name: 'opq/old', body: 'o' },
        { name: 'opq/dir/old', body: 'o' },
      ])
      const upper = await makeTar([
        { name: '.wh.del', body: '' },
        { name: '.wh.file', body: '' },
        { name: '.wh.never-existed', body: '' },
        { name: 'nodir/.wh.x', body: '' },
        { name: 'opq/', type: 'directory' },
        { name: 'opq/-early', body: 'before the marker' },
        { name: 'opq/dir/', type: 'directory' },
        { name: 'opq/.wh..wh..opq', body: '' },
        { name: 'opq/new', body: 'n' },
      ])
      const { entries } = await unpackImageLayers(
        [() => Readable.from(chunksOf(lower)), () => chunksOf(gzipSync(upper))],
        target,
      )
      expect(entries).toBe(8 + 9)
      expect(await listAll(target)).toEqual(['keep', 'keep/a', 'opq', 'opq/-early', 'opq/dir', 'opq/new'])
    })
  })

  it('reads PAX long names, GNU long names and xattrs written by GNU tar', async () => {
    // everything here lives inside the target, which the sentinel check ignores
    const src = join(target, 'gnu-src')
    const long = `${'x'.repeat(120)}/${'y'.repeat(150)}`
    await mkdir(join(src, 'x'.repeat(120)), { recursive: true })
    await writeFile(join(src, long), 'long')
    await setAttribute(join(src, long), 'user.k', Buffer.from([0, 0xff, 0x0a]))
    await symlink('z'.repeat(200), join(src, 'longlink'))
    for (const format of ['gnu', 'posix']) {
      const tarFile = join(target, `${format}.tar`)
      execFileSync('tar', [`--format=${format}`, '--xattrs', '-C', src, '-cf', tarFile, '.'])
      const out = join(target, `out-${format}`)
      await extractTarLayer(chunksOf(await readFile(tarFile)), out, { whiteouts: 'overlay' })
      expect(await readFile(join(out, long), 'utf8')).toBe('long')
      expect(await readlink(join(out, 'longlink'))).toBe('z'.repeat(200))
      expect((await getAttribute(join(out, long), 'user.k'))?.toString('hex')).toBe('00ff0a')
    }
  })

  it('reports progress and entry counts, and extracts a Node stream', async () => {
    const tar = await makeTar([
      { name: 'a', body: 'a' },
      { name: 'b/', type: 'directory' },
    ])
    const gz = gzipSync(tar)
    const seen: number[] = []
    const r = await extractTarLayer(Readable.from(chunksOf(gz, 10)), target, {
      whiteouts: 'overlay',
      onProgress: (n) => seen.push(n),
    })
    expect(r.entries).toBe(2)
    expect(seen.at(-1)).toBe(gz.length)
    await expect(snapshot(target)).resolves.toMatchObject({ a: { type: 'file' }, b: { type: 'dir' } })
  })

  it('stops at the next entry once its signal aborts, rejecting with the reason', async () => {
    const tar = await makeTar(
      Array.from({ length: 50 }, (_, i) => ({ name: `f${String(i).padStart(2, '0')}`, body: 'x' })),
    )
    const ac = new AbortController()
    const reason = new Error('interrupted')
    let n = 0
    async function* input(): AsyncGenerator<Buffer> {
      for await (const c of chunksOf(tar, 512)) {
        // Abort once a few entries have gone through.
        if (++n === 10) ac.abort(reason)
        yield c
      }
    }
    const err = await extractTarLayer(input(), target, { whiteouts: 'overlay', signal: ac.signal }).catch((e) => e)
    expect((err as { cause?: unknown }).cause ?? err).toBe(reason)
    const names = Object.keys(await snapshot(target)).filter((k) => k !== '')
    expect(names.length).toBeGreaterThan(0)
    expect(names.length).toBeLessThan(50)
  })
})
