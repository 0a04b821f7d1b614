import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { deflateRawSync, gunzipSync } from 'node:zlib'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { GZIP_BLOCK_SIZE, gzipBlocks, looksIncompressible } from '../src/tar/gzip.js'
import { removeDir, tempDir } from './tar-helpers.js'

const KiB = 1024

/** Deterministic text, compressible like source code, repeating only over long distances. */
function text(bytes: number, seed = 1): Buffer {
  const words = ['const', 'return', 'function', 'layer', 'digest', 'import', 'export', 'await', '{', '}', '(x)', '\n']
  let s = seed
  const parts: string[] = []
  let n = 0
  while (n < bytes) {
    s = (s * 1103515245 + 12345) >>> 0
    const w = `${words[s % words.length]}${(s >>> 8) % 97} `
    parts.push(w)
    n += w.length
  }
  return Buffer.from(parts.join('')).subarray(0, bytes)
}

/** `data` fed in pieces of `piece` bytes. */
async function* pieces(data: Buffer, piece: number): AsyncGenerator<Buffer> {
  for (let off = 0; off < data.length; off += piece) yield data.subarray(off, off + piece)
}

async function gzip(
  data: Buffer,
  opts: { level?: number; blockSize?: number; concurrency?: number; piece?: number } = {},
): Promise<Buffer> {
  const out: Buffer[] = []
  const { piece = 100 * KiB, level = 6, ...rest } = opts
  for await (const c of gzipBlocks(pieces(data, piece), { level, ...rest })) out.push(c)
  return Buffer.concat(out)
}

/** Size of `n` bytes as stored deflate blocks of at most 65535 bytes. */
function storedSize(n: number): number {
  return n + 5 * Math.max(1, Math.ceil(n / 0xffff))
}

describe('gzipBlocks', () => {
  let work: string
  beforeEach(async () => {
    work = await tempDir('stacker-gzip-')
  })
  afterEach(async () => {
    await removeDir(work)
  })

  it('writes the fixed gzip framing for empty input', async () => {
    const gz = await gzip(Buffer.alloc(0))
    expect(gz.toString('hex')).toBe(`1f8b0800000000000003${'0300'}${'00000000'}${'00000000'}`)
    expect(gunzipSync(gz).length).toBe(0)
    const path = join(work, 'empty.gz')
    await writeFile(path, gz)
    execFileSync('gzip', ['-t', path])
  })

  it('gives the same bytes whatever the concurrency and the input chunking', async () => {
    const data = Buffer.concat([text(700 * KiB), randomBytes(300 * KiB), text(400 * KiB, 7)])
    const ref = await gzip(data, { blockSize: 128 * KiB, concurrency: 1, piece: 128 * KiB })
    for (const [concurrency, piece] of [
      [1, 1000],
      [2, 64 * KiB],
      [3, 333 * KiB],
      [8, 2 * GZIP_BLOCK_SIZE],
    ] as const) {
      const gz = await gzip(data, { blockSize: 128 * KiB, concurrency, piece })
      expect(gz.equals(ref), `concurrency ${concurrency}, pieces of ${piece}`).toBe(true)
    }
    expect(gunzipSync(ref).equals(data)).toBe(true)
    // The block size is a setting of the format: another one gives another (valid) stream.
    const other = await gzip(data, { blockSize: 256 * KiB })
    expect(other.equals(ref)).toBe(false)
    expect(gunzipSync(other).equals(data)).toBe(true)
  })

  it('compresses text across blocks about as well as one zlib stream', async () => {
    const data = text(3 * GZIP_BLOCK_SIZE + 12345)
    const gz = await gzip(data, { level: 6 })
    expect(gunzipSync(gz).equals(data)).toBe(true)
    // Each block is primed with the previous 32 KiB, so little is lost at the cuts.
    const single = deflateRawSync(data, { level: 6 }).length
    expect(gz.length).toBeLessThan(single * 1.01 + 64)
    expect(gz.length).toBeLessThan(data.length / 2)
  })

  it('stores random bytes instead of deflating them, and GNU gzip reads the result', async () => {
    const data = randomBytes(2 * GZIP_BLOCK_SIZE + 5000)
    expect(looksIncompressible(data.subarray(0, GZIP_BLOCK_SIZE))).toBe(true)
    expect(looksIncompressible(text(GZIP_BLOCK_SIZE))).toBe(false)
    const gz = await gzip(data)
    // Header, two whole blocks and the tail as stored blocks, the final empty block, trailer.
    const expected = 10 + 2 * storedSize(GZIP_BLOCK_SIZE) + storedSize(5000) + 2 + 8
    expect(gz.length).toBe(expected)
    expect(gunzipSync(gz).equals(data)).toBe(true)
    const path = join(work, 'random.gz')
    await writeFile(path, gz)
    execFileSync('gzip', ['-t', path])
    expect(execFileSync('gzip', ['-dc', path], { maxBuffer: 8 << 20 }).equals(data)).toBe(true)
  })

  it('falls back to stored blocks when deflate does not shrink a block', async () => {
    // The last block is too short to sample, so it is deflated, grows, and is stored instead.
    const data = randomBytes(64 * KiB + 1000)
    const gz = await gzip(data, { blockSize: 32 * KiB })
    expect(gz.length).toBe(10 + 2 * storedSize(32 * KiB) + storedSize(1000) + 2 + 8)
    expect(gunzipSync(gz).equals(data)).toBe(true)
  })

  it('mixes deflated and stored blocks in one stream that GNU tools accept', async () => {
    const data = Buffer.concat([text(1500 * KiB), randomBytes(1200 * KiB), text(900 * KiB, 3)])
    const gz = await gzip(data, { level: 1 })
    expect(gunzipSync(gz).equals(data)).toBe(true)
    const path = join(work, 'mixed.gz')
    await writeFile(path, gz)
    execFileSync('gzip', ['-t', path])
    const listed = execFileSync('gzip', ['-lv', path], { encoding: 'utf8' })
    expect(listed).toContain(String(data.length))
  })

  it('rejects with the source error, and stops reading the source when the consumer stops', async () => {
    async function* failing(): AsyncGenerator<Buffer> {
      yield text(GZIP_BLOCK_SIZE)
      yield text(GZIP_BLOCK_SIZE, 2)
      throw new Error('source broke')
    }
    await expect(async () => {
      for await (const _ of gzipBlocks(failing(), { level: 1 })) {
        // drain
      }
    }).rejects.toThrow('source broke')

    let closed = false
    let produced = 0
    async function* endless(): AsyncGenerator<Buffer> {
      try {
        for (;;) {
          produced++
          yield text(256 * KiB, produced)
        }
      } finally {
        closed = true
      }
    }
    let seen = 0
    for await (const _ of gzipBlocks(endless(), { level: 1, blockSize: 256 * KiB, concurrency: 2 })) {
      if (++seen === 3) break
    }
    expect(closed).toBe(true)
    // Read-ahead is bounded: a few blocks beyond what was consumed, not the endless source.
    expect(produced).toBeLessThan(12)
  })

  it('refuses a block size smaller than the deflate window', async () => {
    await expect(async () => {
      for await (const _ of gzipBlocks(pieces(Buffer.from('x'), 1), { level: 1, blockSize: 1000 })) {
        // drain
      }
    }).rejects.toThrow(RangeError)
  })
})
