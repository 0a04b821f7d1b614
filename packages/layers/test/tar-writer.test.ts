import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, chown, link, lutimes, mkdir, readdir, readFile, symlink, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import { setAttribute } from '@napi-rs/xattr'
import { memoryLogger, sha256Digest } from '@stacker/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  createTarStream,
  extractTarLayer,
  OVERLAY_OPAQUE_XATTR,
  TAR_CHUNK_SIZE,
  writeTarLayer,
} from '../src/tar/index.js'
import { fileSink, isRoot, listTar, mknodSync, removeDir, snapshot, tempDir } from './tar-helpers.js'

const T0 = 1_600_000_000
const LONG_COMPONENT = 'c'.repeat(120)
const LONG_PATH_DIRS = ['d'.repeat(90), 'e'.repeat(90), 'f'.repeat(90)]

/** A tree exercising every kind of node the writer handles. Built in `order` so that two copies
 *  differ in creation order and inode numbers but not in content. */
async function buildTree(root: string, reverse = false): Promise<void> {
  const steps: Array<() => Promise<void>> = [
    async () => {
      await mkdir(join(root, 'a'), { recursive: true })
      await writeFile(join(root, 'a', 'plain.txt'), 'hello\n')
      await chown(join(root, 'a', 'plain.txt'), 1000, 1001)
      await setAttribute(join(root, 'a', 'plain.txt'), 'user.foo', 'bar')
      await setAttribute(join(root, 'a', 'plain.txt'), 'user.bin', Buffer.from([0, 1, 0xff, 0x0a, 0x3d]))
      await setAttribute(join(root, 'a', 'plain.txt'), 'user.overlay.origin', 'x')
    },
    async () => {
      await mkdir(join(root, 'bin'), { recursive: true })
      await writeFile(join(root, 'bin', 'suid'), '#!/bin/sh\n')
      await chown(join(root, 'bin', 'suid'), 0, 0)
      await chmod(join(root, 'bin', 'suid'), 0o4755)
      await writeFile(join(root, 'bin', 'sgid'), 'x')
      await chown(join(root, 'bin', 'sgid'), 1000, 1000)
      await chmod(join(root, 'bin', 'sgid'), 0o2711)
      await link(join(root, 'bin', 'suid'), join(root, 'bin', 'suid-hardlink'))
      await symlink('suid', join(root, 'bin', 'rel-link'))
      await symlink('/etc/passwd', join(root, 'bin', 'abs-link'))
      await symlink(`/${'t'.repeat(150)}/target`, join(root, 'bin', 'long-target'))
    },
    async () => {
      await mkdir(join(root, 'dev'), { recursive: true })
      mknodSync(join(root, 'dev', 'null'), 'c', 1, 3, 0o666)
      mknodSync(join(root, 'dev', 'loop200'), 'b', 7, 200, 0o660)
      mknodSync(join(root, 'dev', 'fifo'), 'p', 0, 0, 0o600)
    },
    async () => {
      await mkdir(join(root, 'empty'), { recursive: true })
      await mkdir(join(root, 'tmp'), { recursive: true })
      await chmod(join(root, 'tmp'), 0o1777)
      await mkdir(join(root, 'owned'), { recursive: true })
      await chown(join(root, 'owned'), 3_000_000, 3_000_001)
      await chmod(join(root, 'owned'), 0o750)
    },
    async () => {
      await mkdir(join(root, LONG_COMPONENT), { recursive: true })
      await writeFile(join(root, LONG_COMPONENT, 'file'), 'long-dir')
      const deep = join(root, ...LONG_PATH_DIRS)
      await mkdir(deep, { recursive: true })
      await writeFile(join(deep, 'g'.repeat(60)), 'deep')
      await link(join(deep, 'g'.repeat(60)), join(root, 'deep-hardlink'))
      await writeFile(join(root, 'héllo wörld.txt'), 'utf8 name')
    },
    async () => {
      await writeFile(join(root, 'big.bin'), randomBytes(3 * 1024 * 1024 + 123))
    },
  ]
  for (const s of reverse ? [...steps].reverse() : steps) await s()
  // Times last: creating children changes a directory's mtime.
  const times: Array<[string, number]> = [
    ['a/plain.txt', T0 + 1],
    ['bin/suid', T0 + 2],
    ['bin/sgid', T0 + 3],
    ['dev/null', T0 + 4],
    ['dev/loop200', T0 + 5],
    ['dev/fifo', T0 + 6],
    ['big.bin', T0 + 7],
    ['héllo wörld.txt', T0 + 8],
    [`${LONG_COMPONENT}/file`, T0 + 9],
    [[...LONG_PATH_DIRS, 'g'.repeat(60)].join('/'), T0 + 10],
  ]
  for (const [p, t] of times) await utimes(join(root, p), t, t)
  for (const l of ['bin/rel-link', 'bin/abs-link', 'bin/long-target']) await lutimes(join(root, l), T0 + 11, T0 + 11)
  const dirs = [
    'a',
    'bin',
    'dev',
    'empty',
    'tmp',
    'owned',
    LONG_COMPONENT,
    ...LONG_PATH_DIRS.map((_, i) => LONG_PATH_DIRS.slice(0, i + 1).join('/')).reverse(),
  ]
  for (const d of dirs) await utimes(join(root, d), T0 + 20, T0 + 20)
}

async function layerBytes(dir: string, work: string, opts: Parameters<typeof writeTarLayer>[2], name = 'blob') {
  const path = join(work, name)
  const result = await writeTarLayer(dir, fileSink(path), opts)
  return { result, data: result ? await readFile(path) : Buffer.alloc(0), path }
}

describe.runIf(isRoot)('writeTarLayer', () => {
  let work: string
  beforeEach(async () => {
    work = await tempDir()
  })
  afterEach(async () => {
    await removeDir(work)
  })

  it('round-trips a tree through gzip and overlay extraction', async () => {
    const src = join(work, 'src')
    await mkdir(src)
    await buildTree(src)
    const { result, data } = await layerBytes(src, work, { compression: 'gzip' })
    expect(result).toBeDefined()
    expect(result!.descriptor.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip')
    expect(result!.descriptor.digest).toBe(sha256Digest(data))
    expect(result!.descriptor.size).toBe(data.length)
    const tar = gunzipSync(data)
    expect(result!.diffId).toBe(sha256Digest(tar))
    expect(result!.uncompressedSize).toBe(tar.length)
    expect(result!.descriptor.annotations).toEqual({ 'ci.umo.uncompressed_blob_size': String(tar.length) })

    const out = join(work, 'out')
    const { entries } = await extractTarLayer(
      (async function* () {
        yield data
      })(),
      out,
      { whiteouts: 'overlay' },
    )
    expect(entries).toBeGreaterThan(20)
    const before = await snapshot(src)
    const after = await snapshot(out)
    // overlayfs bookkeeping is never carried over
    before['a/plain.txt']!.xattrs = before['a/plain.txt']!.xattrs!.filter((x) => !x.startsWith('user.overlay.'))
    expect(after).toEqual(before)
    expect(after['bin/suid']!.mode).toBe(0o4755)
    expect(after['bin/sgid']).toMatchObject({ mode: 0o2711, uid: 1000, gid: 1000 })
    expect(after['bin/suid-hardlink']!.sameAs).toBe('bin/suid')
    // the long path sorts first, so it holds the data and deep-hardlink is the link (PAX linkpath)
    expect(after['deep-hardlink']!.sameAs).toBe([...LONG_PATH_DIRS, 'g'.repeat(60)].join('/'))
    expect(after['owned']).toMatchObject({ uid: 3_000_000, gid: 3_000_001, mode: 0o750 })
    expect(after['a/plain.txt']!.xattrs).toEqual([
      `user.bin=0001ff0a3d`,
      `user.foo=${Buffer.from('bar').toString('hex')}`,
    ])
  })

  it('writes sorted entries with numeric owners only, relative names and PAX for long names', async () => {
    const src = join(work, 'src')
    await mkdir(src)
    await buildTree(src)
    const { data } = await layerBytes(src, work, { compression: 'none' })
    const headers = await listTar(data)
    const names = headers.map((h) => h.name)
    for (let i = 1; i < names.length; i++) {
      expect(Buffer.compare(Buffer.from(names[i - 1]!), Buffer.from(names[i]!)), `${names[i - 1]} < ${names[i]}`).toBe(
        -1,
      )
    }
    for (const h of headers) {
      expect(h.uname).toBe('')
      expect(h.gname).toBe('')
      expect(h.name.startsWith('/')).toBe(false)
      expect(h.name.endsWith('/')).toBe(h.type === 'directory')
    }
    expect(names).toContain(`${LONG_COMPONENT}/file`)
    expect(names).toContain(`${LONG_PATH_DIRS.join('/')}/${'g'.repeat(60)}`)
    const byName = new Map(headers.map((h) => [h.name, h]))
    expect(byName.get('bin/suid-hardlink')).toMatchObject({ type: 'link', linkname: 'bin/suid' })
    expect(byName.get('bin/long-target')).toMatchObject({ type: 'symlink', linkname: `/${'t'.repeat(150)}/target` })
    expect(byName.get('dev/loop200')).toMatchObject({ type: 'block-device', devmajor: 7, devminor: 200 })
    expect(byName.get('bin/suid')!.mode).toBe(0o4755)
    expect(byName.get('a/plain.txt')!.pax).toMatchObject({ 'SCHILY.xattr.user.foo': 'bar' })
    expect(Object.keys(byName.get('a/plain.txt')!.pax!).some((k) => k.includes('overlay'))).toBe(false)
    // too big for octal: carried in PAX (tar-stream does not apply PAX uid/gid itself)
    expect(byName.get('owned/')!.pax).toMatchObject({ uid: '3000000', gid: '3000001' })
    expect(byName.get('deep-hardlink')).toMatchObject({
      type: 'link',
      linkname: `${LONG_PATH_DIRS.join('/')}/${'g'.repeat(60)}`,
    })
    // the directory itself has no entry
    expect(names.some((n) => n === '' || n === './' || n === '/')).toBe(false)
  })

  it('converts overlay whiteouts and opaque directories to OCI ones, and back', async () => {
    const src = join(work, 'src')
    await mkdir(join(src, 'opq', 'sub'), { recursive: true })
    await writeFile(join(src, 'opq', 'sub', 'kept'), 'k')
    await writeFile(join(src, 'opq', '-first'), 'sorts before the marker')
    await setAttribute(join(src, 'opq'), OVERLAY_OPAQUE_XATTR, 'y')
    mknodSync(join(src, 'gone'), 'c', 0, 0, 0)
    mknodSync(join(src, 'opq', 'gone-too'), 'c', 0, 0, 0)
    // overlayfs shares one inode between whiteouts: they must not become hard links
    await link(join(src, 'gone'), join(src, 'also-gone'))
    const { data } = await layerBytes(src, work, { compression: 'none' })
    const headers = await listTar(data)
    expect(headers.map((h) => [h.name, h.type, h.size])).toEqual([
      ['.wh.also-gone', 'file', 0],
      ['.wh.gone', 'file', 0],
      ['opq/', 'directory', 0],
      ['opq/.wh..wh..opq', 'file', 0],
      ['opq/-first', 'file', 23],
      ['opq/.wh.gone-too', 'file', 0],
      ['opq/sub/', 'directory', 0],
      ['opq/sub/kept', 'file', 1],
    ])
    expect(headers.find((h) => h.name === 'opq/')!.pax ?? {}).toEqual({})

    const out = join(work, 'out')
    await extractTarLayer([data], out, { whiteouts: 'overlay' })
    const snap = await snapshot(out)
    expect(snap['gone']).toMatchObject({ type: 'char', rdev: 0 })
    expect(snap['also-gone']).toMatchObject({ type: 'char', rdev: 0 })
    expect(snap['opq/gone-too']).toMatchObject({ type: 'char', rdev: 0 })
    expect(snap['opq']!.xattrs).toEqual([`${OVERLAY_OPAQUE_XATTR}=${Buffer.from('y').toString('hex')}`])
    expect(Object.keys(snap).filter((k) => k.includes('.wh.'))).toEqual([])

    // writing the extracted content directory again gives the very same layer
    const again = await layerBytes(out, work, { compression: 'none' }, 'again')
    expect(again.data.equals(data)).toBe(true)
  })

  it('clamps mtimes newer than SOURCE_DATE_EPOCH and keeps older ones', async () => {
    const src = join(work, 'src')
    await mkdir(join(src, 'd'), { recursive: true })
    await writeFile(join(src, 'd', 'old'), 'o')
    await writeFile(join(src, 'd', 'new'), 'n')
    await symlink('new', join(src, 'd', 'link'))
    await utimes(join(src, 'd', 'old'), 1000.9, 1000.9)
    await lutimes(join(src, 'd', 'link'), 5_000_000_000, 5_000_000_000)
    const sde = 1_700_000_000
    const { data } = await layerBytes(src, work, { compression: 'none', sourceDateEpoch: sde })
    const mtimes = Object.fromEntries((await listTar(data)).map((h) => [h.name, h.mtime!.getTime() / 1000]))
    expect(mtimes).toEqual({ 'd/': sde, 'd/link': sde, 'd/new': sde, 'd/old': 1000 })
  })

  it('is deterministic: same content in another place and creation order gives the same digests', async () => {
    const a = join(work, 'a')
    const b = join(work, 'b')
    await mkdir(a)
    await mkdir(b)
    await buildTree(a)
    await buildTree(b, true)
    // random content must match across the copies
    execFileSync('cp', ['--preserve=all', join(a, 'big.bin'), join(b, 'big.bin')])
    for (const compression of ['gzip', 'zstd', 'none'] as const) {
      const r1 = await layerBytes(a, work, { compression, sourceDateEpoch: T0 + 5 }, `${compression}-1`)
      const r2 = await layerBytes(b, work, { compression, sourceDateEpoch: T0 + 5 }, `${compression}-2`)
      const r3 = await layerBytes(a, work, { compression, sourceDateEpoch: T0 + 5 }, `${compression}-3`)
      expect(r2.result!.descriptor.digest, compression).toBe(r1.result!.descriptor.digest)
      expect(r3.result!.descriptor.digest, compression).toBe(r1.result!.descriptor.digest)
      expect(r2.result!.diffId).toBe(r1.result!.diffId)
    }
    const gz = await readFile(join(work, 'gzip-1'))
    expect([...gz.subarray(0, 10)]).toEqual([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])
  })

  it('returns undefined and aborts the sink for an empty directory', async () => {
    const src = join(work, 'src')
    await mkdir(src)
    const sink = fileSink(join(work, 'blob'))
    expect(await writeTarLayer(src, sink, { compression: 'gzip' })).toBeUndefined()
    expect(sink.state()).toBe('aborted')
  })

  it('skips sockets with a warning, and a directory of only sockets is empty', async () => {
    const src = join(work, 'src')
    await mkdir(src)
    const { createServer } = await import('node:net')
    const server = createServer()
    await new Promise<void>((r) => server.listen(join(src, 'sock'), r))
    try {
      const logger = memoryLogger()
      const sink = fileSink(join(work, 'blob'))
      expect(await writeTarLayer(src, sink, { compression: 'none', logger })).toBeUndefined()
      expect(sink.state()).toBe('aborted')
      expect(logger.lines('warn').join('\n')).toMatch(/ignoring socket .*sock/)
    } finally {
      await new Promise((r) => server.close(r))
    }
  })

  it('produces a gzip layer GNU tar can list', async () => {
    const src = join(work, 'src')
    await mkdir(src)
    await buildTree(src)
    const { path } = await layerBytes(src, work, { compression: 'gzip', level: 9 })
    const listing = execFileSync('tar', ['-tvzf', path], { encoding: 'utf8' })
    expect(listing).toMatch(/^-rwsr-xr-x 0\/0 +10 \S+ \S+ bin\/suid$/m)
    expect(listing).toMatch(/^hrwsr-xr-x 0\/0 +0 \S+ \S+ bin\/suid-hardlink link to bin\/suid$/m)
    expect(listing).toContain(`${LONG_PATH_DIRS.join('/')}/${'g'.repeat(60)}`)
    expect(listing).toContain(`bin/long-target -> /${'t'.repeat(150)}/target`)
    expect(listing).toMatch(/^crw-rw-rw- 0\/0 +1,3 .* dev\/null$/m)
    expect(listing).toMatch(/^drwxr-x--- 3000000\/3000001 .* owned\/$/m)
    expect(listing).toContain('héllo wörld.txt')

    // and GNU tar extracts it to the same tree, xattrs, devices and hard links included
    const out = join(work, 'gnu-out')
    await mkdir(out)
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpzf', path, '-C', out])
    const before = await snapshot(src)
    before['a/plain.txt']!.xattrs = before['a/plain.txt']!.xattrs!.filter((x) => !x.startsWith('user.overlay.'))
    expect(await snapshot(out)).toEqual(before)
  })

  it('round-trips through zstd', async () => {
    const src = join(work, 'src')
    await mkdir(src)
    await buildTree(src)
    const { result, data, path } = await layerBytes(src, work, { compression: 'zstd', level: 5 })
    expect(result!.descriptor.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+zstd')
    expect([...data.subarray(0, 4)]).toEqual([0x28, 0xb5, 0x2f, 0xfd])
    const tar = execFileSync('zstd', ['-d', '-c', path], { maxBuffer: 64 << 20 })
    expect(result!.diffId).toBe(sha256Digest(tar))
    expect(result!.descriptor.annotations!['ci.umo.uncompressed_blob_size']).toBe(String(tar.length))
    const out = join(work, 'out')
    await extractTarLayer([data], out, { whiteouts: 'overlay', compression: 'zstd' })
    const before = await snapshot(src)
    before['a/plain.txt']!.xattrs = before['a/plain.txt']!.xattrs!.filter((x) => !x.startsWith('user.overlay.'))
    expect(await snapshot(out)).toEqual(before)
  })

  it('gives createTarStream the same bytes as an uncompressed layer, and no descriptor annotation', async () => {
    const src = join(work, 'src')
    await mkdir(join(src, 'x'), { recursive: true })
    await writeFile(join(src, 'x', 'y'), 'z')
    const { result, data } = await layerBytes(src, work, { compression: 'none' })
    const chunks: Uint8Array[] = []
    const stream = createTarStream(src)
    for await (const c of stream) chunks.push(c)
    expect(Buffer.concat(chunks).equals(data)).toBe(true)
    expect(stream.entryCount()).toBe(2)
    expect(result!.diffId).toBe(result!.descriptor.digest)
    expect(result!.descriptor.annotations).toBeUndefined()
    expect(data.length % 512).toBe(0)
  })

  it('streams whole chunks of TAR_CHUNK_SIZE, bodies crossing chunk boundaries intact', async () => {
    const src = join(work, 'src')
    await mkdir(src)
    const big = randomBytes(TAR_CHUNK_SIZE * 2 + 777)
    await writeFile(join(src, 'a-big'), big)
    await writeFile(join(src, 'b-small'), randomBytes(5000))
    await writeFile(join(src, 'c-big'), randomBytes(TAR_CHUNK_SIZE + 1))
    const chunks: Uint8Array[] = []
    for await (const c of createTarStream(src)) chunks.push(c)
    const total = chunks.reduce((n, c) => n + c.byteLength, 0)
    expect(chunks.length).toBe(Math.ceil(total / TAR_CHUNK_SIZE))
    expect(chunks.length).toBeGreaterThanOrEqual(4)
    for (const c of chunks.slice(0, -1)) expect(c.byteLength).toBe(TAR_CHUNK_SIZE)
    const entries = await listTar(Buffer.concat(chunks))
    expect(entries.map((e) => [e.name, e.size])).toEqual([
      ['a-big', big.length],
      ['b-small', 5000],
      ['c-big', TAR_CHUNK_SIZE + 1],
    ])
    const out = join(work, 'out')
    await mkdir(out)
    await extractTarLayer(chunks, out, { whiteouts: 'overlay' })
    expect((await readFile(join(out, 'a-big'))).equals(big)).toBe(true)
  })

  it('fails with LAYER naming the file when a name is not UTF-8, through gzip', async () => {
    const src = join(work, 'src')
    await mkdir(join(src, 'd'), { recursive: true })
    await writeFile(join(src, 'a-first'), randomBytes(300_000))
    await writeFile(Buffer.from(`${join(src, 'd')}/\xff-latin1`, 'latin1'), 'x')
    const sink = fileSink(join(work, 'blob'))
    await expect(writeTarLayer(src, sink, { compression: 'gzip' })).rejects.toMatchObject({
      code: 'LAYER',
      message: expect.stringMatching(/d\/.-latin1: file name is not UTF-8/),
    })
    expect(sink.state()).toBe('aborted')
  })

  it('leaves no zstd child behind when the sink or the walk fails', async () => {
    const zstdChildren = async () => {
      const out: string[] = []
      for (const pid of await readdir('/proc')) {
        if (!/^\d+$/.test(pid)) continue
        const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
        const m = /^\d+ \((.*)\) (\S) (\d+)/.exec(stat)
        if (m && m[1] === 'zstd' && Number(m[3]) === process.pid) out.push(`${pid}:${m[2]}`)
      }
      return out
    }
    const noZstdLeft = async () => {
      // SIGKILL is immediate, but the child is reaped asynchronously
      let left = await zstdChildren()
      for (let i = 0; i < 50 && left.length > 0; i++) {
        await new Promise((r) => setTimeout(r, 20))
        left = await zstdChildren()
      }
      expect(left).toEqual([])
    }
    const src = join(work, 'src')
    await mkdir(join(src, 'd'), { recursive: true })
    await writeFile(join(src, 'a'), randomBytes(4 << 20))

    let aborted = false
    const failing = {
      write: async () => {
        throw new Error('disk full')
      },
      commit: async () => {
        throw new Error('not reached')
      },
      abort: async () => {
        aborted = true
      },
    }
    await expect(writeTarLayer(src, failing, { compression: 'zstd' })).rejects.toThrow('disk full')
    expect(aborted).toBe(true)
    await noZstdLeft()

    // the walk fails while zstd still waits for input: it must be killed, not left waiting
    await writeFile(Buffer.from(`${join(src, 'd')}/\xff`, 'latin1'), 'x')
    const sink = fileSink(join(work, 'blob'))
    await expect(writeTarLayer(src, sink, { compression: 'zstd' })).rejects.toMatchObject({ code: 'LAYER' })
    expect(sink.state()).toBe('aborted')
    await noZstdLeft()
  })

  it('aborts the sink and names the file when the tree cannot be read', async () => {
    const sink = fileSink(join(work, 'blob'))
    await expect(writeTarLayer(join(work, 'missing'), sink, { compression: 'gzip' })).rejects.toMatchObject({
      code: 'LAYER',
      message: expect.stringContaining('missing'),
    })
    expect(sink.state()).toBe('aborted')
    await expect(
      writeTarLayer(work, fileSink(join(work, 'blob2')), { compression: 'gzip', level: 12 }),
    ).rejects.toMatchObject({ code: 'LAYER' })
  })

  it('writes the same gzip and zstd bytes whatever the compressor thread count', async () => {
    const src = join(work, 'src')
    await mkdir(src)
    await buildTree(src)
    // With buildTree's 3 MiB file, several gzip blocks (1 MiB) of random and of text data, so
    // threads have work to split and both the stored and the deflated path are taken.
    await writeFile(join(src, 'random.bin'), randomBytes(300 << 10))
    await writeFile(join(src, 'text.txt'), 'layer digest stacker '.repeat(120_000))
    for (const compression of ['gzip', 'zstd'] as const) {
      const one = await layerBytes(src, work, { compression, threads: 1 }, `${compression}-t1`)
      const two = await layerBytes(src, work, { compression, threads: 2 }, `${compression}-t2`)
      const four = await layerBytes(src, work, { compression, threads: 4 }, `${compression}-t4`)
      expect(two.result!.descriptor.digest, compression).toBe(one.result!.descriptor.digest)
      expect(four.result!.descriptor.digest, compression).toBe(one.result!.descriptor.digest)
    }
    const gz = await readFile(join(work, 'gzip-t2'))
    const raw = await layerBytes(src, work, { compression: 'none' }, 'raw')
    expect(gunzipSync(gz).equals(raw.data)).toBe(true)
  })

  it('emits entries of large directories in order, small and large bodies intact', async () => {
    const src = join(work, 'src')
    await mkdir(join(src, 'many'), { recursive: true })
    // Sizes around the limit of bodies read whole: empty, small, exactly 256 KiB, just over, and more.
    const sizes = [0, 1, 4096, 256 << 10, (256 << 10) + 1, 600 << 10]
    for (let i = 0; i < 60; i++) {
      const name = join(src, 'many', `f${String(i).padStart(3, '0')}`)
      await writeFile(name, randomBytes(sizes[i % sizes.length] as number))
      if (i % 15 === 0) await link(name, join(src, 'many', `h${i}`))
      if (i % 20 === 0) await mkdir(join(src, 'many', `d${i}`, 'sub'), { recursive: true })
    }
    const { data } = await layerBytes(src, work, { compression: 'none' })
    const entries = await listTar(data)
    const names = entries.map((e) => e.name)
    expect(names).toEqual([...names].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))))
    expect(entries.filter((e) => e.type === 'link').map((e) => e.name)).toEqual([
      'many/h0',
      'many/h15',
      'many/h30',
      'many/h45',
    ])
    const out = join(work, 'out')
    await mkdir(out)
    await extractTarLayer([data], out, { whiteouts: 'overlay' })
    const before = await snapshot(src)
    const after = await snapshot(out)
    for (const v of [...Object.values(before), ...Object.values(after)]) delete (v as { mtime?: number }).mtime
    expect(after).toEqual(before)
  })

  it('keeps the archive well-formed when a small file shrinks after its header went out', async () => {
    const src = join(work, 'src')
    await mkdir(src)
    await writeFile(join(src, 'a'), 'x'.repeat(1000))
    const it = createTarStream(src)[Symbol.asyncIterator]()
    const first = await it.next()
    expect(first.done).toBe(false)
    // A small file's body is read with its metadata and written with its header: a change after
    // that cannot tear the entry.
    await writeFile(join(src, 'a'), 'short')
    const chunks: Uint8Array[] = [first.value as Uint8Array]
    for (let r = await it.next(); !r.done; r = await it.next()) chunks.push(r.value)
    const out = join(work, 'out')
    await mkdir(out)
    await extractTarLayer([Buffer.concat(chunks)], out, { whiteouts: 'overlay' })
    expect(await readFile(join(out, 'a'), 'utf8')).toBe('x'.repeat(1000))
  })
})
