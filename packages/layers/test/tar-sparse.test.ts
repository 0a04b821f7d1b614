// Sparse tar entries, read as Go's archive/tar reads them (upstream stacker's reader): GNU old-format
// 'S' headers (map in the header and in extension blocks, realsize) and GNU's PAX formats 0.0
// (GNU.sparse.offset/numbytes pairs), 0.1 (GNU.sparse.map) and 1.0 (map at the start of the data,
// GNU.sparse.name/realsize). Fixtures are written by GNU tar at test time from files with real holes.
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, statSync } from 'node:fs'
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { extractTarLayer, writeTarLayer } from '../src/tar/index.js'
import { readTar } from '../src/tar/reader.js'
import { chunksOf, fileSink, isRoot, removeDir, snapshot, tempDir } from './tar-helpers.js'

const KiB = 1024
const MiB = 1024 * KiB

/** `truncate -s size`, then random data written over [offset, offset+length) with `dd conv=notrunc`. */
function sparseFile(path: string, size: number, data: ReadonlyArray<readonly [number, number]>): void {
  execFileSync('truncate', ['-s', String(size), path])
  for (const [offset, length] of data) {
    execFileSync('dd', [
      'if=/dev/urandom',
      `of=${path}`,
      'bs=1',
      `seek=${offset}`,
      `count=${length}`,
      'conv=notrunc',
      'iflag=fullblock,count_bytes',
      'oflag=seek_bytes',
      'status=none',
    ])
  }
}

const FORMATS = ['gnu', '0.0', '0.1', '1.0'] as const
type Format = (typeof FORMATS)[number]

function tarArgs(format: Format): string[] {
  return format === 'gnu' ? ['-S', '--format=gnu'] : ['-S', '--format=posix', `--sparse-version=${format}`]
}

/** GNU tar's archive of `dir`'s contents, in one of the four sparse formats. */
function gnuTar(format: Format, dir: string, out: string, names: string[] = ['.']): Buffer {
  execFileSync('tar', [...tarArgs(format), '-C', dir, '-cf', out, ...names])
  return execFileSync('cat', [out], { maxBuffer: 1 << 30 })
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const c of createReadStream(path)) h.update(c as Buffer)
  return h.digest('hex')
}

/** Names of the header blocks that carry a GNU sparse typeflag or GNU.sparse PAX records. */
function sparseMarkers(tar: Buffer): number {
  let n = 0
  for (let off = 0; off + 512 <= tar.length; off += 512) {
    const magic = tar.toString('latin1', off + 257, off + 265)
    if (magic !== 'ustar  \0' && magic !== 'ustar\x0000') continue
    const type = String.fromCharCode(tar[off + 156] ?? 0)
    if (type === 'S') n++
    if (type === 'x' && tar.subarray(off + 512, off + 1024).includes('GNU.sparse.')) n++
  }
  return n
}

/** Sets a header block's checksum after its bytes were changed. */
function fixChecksum(tar: Buffer, off: number): void {
  tar.fill(0x20, off + 148, off + 156)
  let sum = 0
  for (let i = 0; i < 512; i++) sum += tar[off + i]!
  tar.write(`${sum.toString(8).padStart(6, '0')}\0 `, off + 148, 'ascii')
}

/** One ustar header block (mode 0644, owner 0:0, mtime 1600000000). */
function ustarHeader(name: string, typeflag: string, size: number): Buffer {
  const b = Buffer.alloc(512)
  b.write(name, 0, 100, 'utf8')
  b.write('0000644\0', 100, 'ascii')
  b.write('0000000\0', 108, 'ascii')
  b.write('0000000\0', 116, 'ascii')
  b.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'ascii')
  b.write(`${(1_600_000_000).toString(8).padStart(11, '0')}\0`, 136, 'ascii')
  b.write(typeflag, 156, 'latin1')
  b.write('ustar\x0000', 257, 'latin1')
  fixChecksum(b, 0)
  return b
}

const pad = (b: Buffer): Buffer => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)])

/** A raw PAX header entry (so records can repeat and come in any order), then a file entry. */
function paxTar(records: ReadonlyArray<readonly [string, string]>, name: string, body: Buffer): Buffer {
  const rec = (k: string, v: string): string => {
    const rest = ` ${k}=${v}\n`
    let len = rest.length + 1
    while (String(len).length + rest.length !== len) len = String(len).length + rest.length
    return `${len}${rest}`
  }
  const pax = Buffer.from(records.map(([k, v]) => rec(k, v)).join(''), 'utf8')
  return Buffer.concat([
    ustarHeader(`PaxHeaders/${name}`.slice(0, 100), 'x', pax.length),
    pad(pax),
    ustarHeader(name, '0', body.length),
    pad(body),
    Buffer.alloc(1024),
  ])
}

describe.runIf(isRoot)('sparse tar entries', () => {
  let work: string
  let src: string
  const LONG = `sub/${'long-name-'.repeat(15)}sparse`
  /** Files with holes (each becomes a sparse entry), then dense and empty ones. */
  const SPARSE = ['holes', 'all-hole', 'hole-at-end', 'hole-at-start', 'small', 'many', 'odd-size', LONG]

  beforeAll(async () => {
    work = await tempDir('stacker-sparse-')
    src = join(work, 'src')
    await mkdir(join(src, 'sub'), { recursive: true })
    // data at the start and at the end, a fragment that spans several 1 MiB chunks
    sparseFile(join(src, 'holes'), 10 * MiB, [
      [0, 8 * KiB],
      [3 * MiB, 100 * KiB],
      [5 * MiB, 2.5 * MiB],
      [10 * MiB - 4 * KiB, 4 * KiB],
    ])
    sparseFile(join(src, 'all-hole'), 5 * MiB, [])
    sparseFile(join(src, 'hole-at-end'), 2 * MiB, [[0, 64 * KiB]])
    sparseFile(join(src, 'hole-at-start'), 1 * MiB, [[1 * MiB - 4 * KiB, 4 * KiB]])
    sparseFile(join(src, 'small'), 200 * KiB, [
      [0, 4 * KiB],
      [196 * KiB, 4 * KiB],
    ])
    // 64 fragments: several GNU extension blocks, a 1.0 map longer than one block
    sparseFile(
      join(src, 'many'),
      2 * MiB,
      Array.from({ length: 64 }, (_, i) => [i * 32 * KiB, 4 * KiB] as const),
    )
    // a size that is not a multiple of 512, data in the last partial block
    sparseFile(join(src, 'odd-size'), 1_000_001, [
      [0, 4 * KiB],
      [999_990, 11],
    ])
    sparseFile(join(src, LONG), 3 * MiB, [[1 * MiB, 12 * KiB]])
    await writeFile(join(src, 'dense'), 'not sparse\n')
    await writeFile(join(src, 'empty'), '')
    for (const f of SPARSE) {
      const st = statSync(join(src, f))
      expect(st.blocks * 512, `${f} has holes`).toBeLessThan(st.size)
    }
  })
  afterAll(() => removeDir(work))

  describe.each(FORMATS)('format %s', (format) => {
    let tar: Buffer
    beforeAll(() => {
      tar = gnuTar(format, src, join(work, `${format}.tar`))
      // every file with holes went in as a sparse entry, and only those
      expect(sparseMarkers(tar)).toBe(SPARSE.length)
    })

    it('reads names, real sizes and whole contents (holes as zeros)', async () => {
      const seen = new Map<string, { size: number; sha: string }>()
      for await (const e of readTar(chunksOf(tar, 1000))) {
        if (e.type !== 'file') continue
        const h = createHash('sha256')
        let n = 0
        for await (const c of e.body()) {
          h.update(c)
          n += c.length
        }
        expect(n, e.name).toBe(e.size)
        seen.set(e.name.replace(/^\.\//, ''), { size: e.size, sha: h.digest('hex') })
      }
      expect([...seen.keys()].sort()).toEqual([...SPARSE, 'dense', 'empty'].sort())
      for (const [name, got] of seen) {
        expect(got, name).toEqual({ size: statSync(join(src, name)).size, sha: await sha256File(join(src, name)) })
      }
      // bodies left unread, or read in part, are skipped whole
      const names: string[] = []
      for await (const e of readTar(chunksOf(tar, 3000))) {
        if (e.type === 'file') names.push(e.name)
        if (e.name.endsWith('holes')) for await (const _ of e.data()) break
      }
      expect(names.sort()).toEqual([...seen.keys()].map((n) => `./${n}`).sort())
    })

    it('fails on a truncated sparse entry, naming it', async () => {
      let holes = -1
      for (let off = 0; off < tar.length; off += 512) {
        if (tar.toString('latin1', off, off + 100).includes('holes')) holes = off
      }
      const err = await extractTarLayer(chunksOf(tar.subarray(0, holes + 512 * 40)), join(work, `trunc-${format}`), {
        whiteouts: 'overlay',
        sourceDescription: 'cut',
      }).catch((e: unknown) => e)
      expect((err as Error).message).toMatch(/^cannot extract cut: .*"\.\/holes".*truncated archive\)$/)
    })

    it('extracts every file whole, plain and gzip, keeping holes as holes', async () => {
      const want = await snapshot(src)
      // overlay: base image layers; keep: tar bases
      const inputs = [
        ['overlay', chunksOf(tar)],
        ['keep', chunksOf(gzipSync(tar), 3000)],
      ] as const
      for (const [i, [whiteouts, input]] of inputs.entries()) {
        const out = join(work, `out-${format}-${i}`)
        const r = await extractTarLayer(input, out, { whiteouts, sourceDescription: format })
        expect(r.entries).toBe(Object.keys(want).length + 1) // and ./
        expect(await snapshot(out)).toEqual(want)
        expect((await stat(join(out, 'all-hole'))).blocks).toBe(0)
        const holes = await stat(join(out, 'holes'))
        expect(holes.blocks * 512).toBeLessThan(holes.size / 2)
        await removeDir(out)
      }
    })
  })

  it('gives a tar layer the same digest as the dense tree would', async () => {
    const out = join(work, 'sparse-out')
    await extractTarLayer(chunksOf(gnuTar('1.0', src, join(work, 'l.tar'))), out, { whiteouts: 'overlay' })
    const dense = join(work, 'dense-out')
    execFileSync('cp', ['-a', '--sparse=never', `${out}/.`, dense])
    expect((await stat(join(dense, 'all-hole'))).blocks).toBeGreaterThan(0)
    const a = await writeTarLayer(out, fileSink(join(work, 'a.blob')), { compression: 'gzip' })
    const b = await writeTarLayer(dense, fileSink(join(work, 'b.blob')), { compression: 'gzip' })
    expect(a?.descriptor.digest).toBeDefined()
    expect(a?.descriptor.digest).toBe(b?.descriptor.digest)
    expect(a?.diffId).toBe(b?.diffId)
    await Promise.all([removeDir(out), removeDir(dense)])
  })

  it.each(FORMATS)('extracts a 16 GiB file of holes quickly and without writing them (%s)', async (format) => {
    const dir = join(work, `huge-${format}`)
    await mkdir(dir)
    sparseFile(join(dir, 'huge'), 16 * 1024 * MiB, [
      [4 * MiB, 4 * KiB],
      [16 * 1024 * MiB - 10, 10],
    ])
    const tar = gnuTar(format, dir, join(work, `huge-${format}.tar`), ['huge'])
    expect(tar.length).toBeLessThan(64 * KiB)
    const out = join(work, `huge-out-${format}`)
    await extractTarLayer(chunksOf(tar), out, { whiteouts: 'overlay' })
    const st = await stat(join(out, 'huge'))
    expect(st.size).toBe(16 * 1024 * MiB)
    expect(st.blocks * 512).toBeLessThan(1 * MiB)
    const tail = Buffer.alloc(10)
    const orig = Buffer.alloc(10)
    const { openSync, readSync, closeSync } = await import('node:fs')
    for (const [path, buf] of [
      [join(out, 'huge'), tail],
      [join(dir, 'huge'), orig],
    ] as const) {
      const fd = openSync(path, 'r')
      readSync(fd, buf, 0, 10, 16 * 1024 * MiB - 10)
      closeSync(fd)
    }
    expect(tail.equals(orig)).toBe(true)
    expect(tail.equals(Buffer.alloc(10))).toBe(false)
    await Promise.all([removeDir(dir), removeDir(out)])
  })

  describe('malformed sparse entries', () => {
    let target: string
    let n = 0
    beforeAll(() => {
      target = join(work, 'bad')
    })

    async function expectError(tar: Buffer, match: RegExp): Promise<void> {
      const err = await extractTarLayer(chunksOf(tar), join(target, String(n++)), {
        whiteouts: 'overlay',
        sourceDescription: 'bad',
      }).catch((e: unknown) => e)
      expect(err).toMatchObject({ code: 'EXTRACT' })
      expect((err as Error).message).toMatch(/^cannot extract bad: /)
      expect((err as Error).message).toMatch(match)
      expect((err as Error).message).not.toContain('\n')
    }

    /** A GNU-format tar of one sparse file `f` (data at 0 and 64 KiB, size 128 KiB), and the
     *  offset of its 'S' header. */
    async function gnuOne(): Promise<{ tar: Buffer; off: number }> {
      const dir = join(work, 'gnu-one')
      await mkdir(dir, { recursive: true })
      sparseFile(join(dir, 'f'), 128 * KiB, [
        [0, 4 * KiB],
        [64 * KiB, 4 * KiB],
      ])
      const tar = gnuTar('gnu', dir, join(work, 'gnu-one.tar'), ['f'])
      expect(String.fromCharCode(tar[156]!)).toBe('S')
      return { tar, off: 0 }
    }

    it('GNU: overlapping regions, a region past the real size, a bad number, a non-GNU header', async () => {
      const { tar, off } = await gnuOne()
      // the second region (386 + 24) starts where the first does
      const overlap = Buffer.from(tar)
      overlap.write('00000000000\0', off + 386 + 24, 'ascii')
      fixChecksum(overlap, off)
      await expectError(overlap, /sparse file "f": invalid sparse map: regions overlap or are out of order$/)
      // real size smaller than the last region's end
      const short = Buffer.from(tar)
      short.write('00000100000\0', off + 483, 'ascii')
      fixChecksum(short, off)
      await expectError(short, /"f"/)
      const garbage = Buffer.from(tar)
      garbage.write('0000000009x\0', off + 386, 'ascii')
      fixChecksum(garbage, off)
      await expectError(garbage, /"f"/)
      // 'S' in a POSIX header: the layout of another format (star), which Go refuses too
      const ustar = Buffer.from(tar)
      ustar.write('ustar\x0000', off + 257, 'latin1')
      fixChecksum(ustar, off)
      await expectError(ustar, /"f"/)
    })

    it('GNU: data shorter than the map', async () => {
      const { tar, off } = await gnuOne()
      // claim one more region than was stored
      const more = Buffer.from(tar)
      more.write('00000300000\0', off + 386 + 48, 'ascii')
      more.write('00000010000\0', off + 386 + 60, 'ascii')
      fixChecksum(more, off)
      await expectError(more, /"f"/)
    })

    const data = Buffer.alloc(20, 0x61)
    const v01 = (map: string, numblocks: string, size = '100'): Array<[string, string]> => [
      ['GNU.sparse.major', '0'],
      ['GNU.sparse.minor', '1'],
      ['GNU.sparse.name', 'f'],
      ['GNU.sparse.realsize', size],
      ['GNU.sparse.numblocks', numblocks],
      ['GNU.sparse.map', map],
    ]

    it('PAX 0.1: a good map, then overlapping, unordered, too long, miscounted and unparsable ones', async () => {
      const out = join(target, 'good')
      await extractTarLayer(chunksOf(paxTar(v01('10,10,50,10', '2'), 'GNUSparseFile.1/f', data)), out, {
        whiteouts: 'overlay',
      })
      const want = Buffer.alloc(100)
      want.fill(0x61, 10, 20)
      want.fill(0x61, 50, 60)
      expect(sha256(await readFile(join(out, 'f')))).toBe(sha256(want))
      await expectError(paxTar(v01('10,10,15,10', '2'), 'x', data), /sparse map.*"f"|"f".*sparse map/)
      await expectError(paxTar(v01('50,10,10,10', '2'), 'x', data), /"f"/)
      await expectError(paxTar(v01('10,10,95,10', '2'), 'x', data), /"f"/)
      await expectError(paxTar(v01('10,10,50,10', '3'), 'x', data), /"f"/)
      await expectError(paxTar(v01('10,10,50,1x', '2'), 'x', data), /"f"/)
      await expectError(paxTar(v01('-10,10,50,10', '2'), 'x', data), /"f"/)
      await expectError(paxTar(v01('10,10,50,10', '2', 'big'), 'x', data), /"f"/)
      // the stored data must be exactly what the map references
      await expectError(paxTar(v01('10,10,50,11', '2'), 'x', data), /"f"/)
      await expectError(paxTar(v01('10,10,50,9', '2'), 'x', data), /"f"/)
    })

    it('PAX 0.0: offset/numbytes pairs must alternate', async () => {
      const pairs = (...kv: Array<[string, string]>): Array<[string, string]> => [
        ['GNU.sparse.size', '100'],
        ['GNU.sparse.numblocks', '2'],
        ...kv,
      ]
      const out = join(target, 'good00')
      const ok = pairs(
        ['GNU.sparse.offset', '10'],
        ['GNU.sparse.numbytes', '10'],
        ['GNU.sparse.offset', '50'],
        ['GNU.sparse.numbytes', '10'],
      )
      await extractTarLayer(chunksOf(paxTar(ok, 'f00', data)), out, { whiteouts: 'overlay' })
      expect((await stat(join(out, 'f00'))).size).toBe(100)
      const bad = pairs(
        ['GNU.sparse.offset', '10'],
        ['GNU.sparse.offset', '50'],
        ['GNU.sparse.numbytes', '10'],
        ['GNU.sparse.numbytes', '10'],
      )
      await expectError(paxTar(bad, 'f00', data), /"f00"/)
    })

    it('PAX 1.0: a good map, then an unparsable one and one that runs past the data', async () => {
      const v10 = (map: string, stored: Buffer): Buffer => {
        const block = Buffer.alloc(Math.ceil(map.length / 512) * 512)
        block.write(map, 'latin1')
        return paxTar(
          [
            ['GNU.sparse.major', '1'],
            ['GNU.sparse.minor', '0'],
            ['GNU.sparse.name', 'dir/f10'],
            ['GNU.sparse.realsize', '100'],
          ],
          'GNUSparseFile.1/f10',
          Buffer.concat([block, stored]),
        )
      }
      const out = join(target, 'good10')
      await extractTarLayer(chunksOf(v10('2\n10\n10\n90\n10\n', data)), out, { whiteouts: 'overlay' })
      const want = Buffer.alloc(100)
      want.fill(0x61, 10, 20)
      want.fill(0x61, 90, 100)
      expect(sha256(await readFile(join(out, 'dir', 'f10')))).toBe(sha256(want))
      await expectError(v10('2\n10\nten\n90\n10\n', data), /"dir\/f10"/)
      await expectError(v10('2\n10\n10\n15\n10\n', data), /"dir\/f10"/)
      // a map whose newlines never come: it would run past the entry's data
      await expectError(v10(`3${'0'.repeat(600)}`, Buffer.alloc(0)), /"dir\/f10"/)
    })

    it('an unknown GNU sparse version is a plain file, as in Go', async () => {
      const out = join(target, 'unknown')
      const tar = paxTar(
        [
          ['GNU.sparse.major', '2'],
          ['GNU.sparse.minor', '0'],
          ['GNU.sparse.name', 'renamed'],
        ],
        'stored',
        data,
      )
      await extractTarLayer(chunksOf(tar), out, { whiteouts: 'overlay' })
      expect(await readFile(join(out, 'stored'))).toEqual(data)
    })
  })
})
