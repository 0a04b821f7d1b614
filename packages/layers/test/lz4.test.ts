import { execFileSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { LZ4_MIN_WINDOW, Lz4FormatError, lz4DecodeBlock } from '../src/fsimage/lz4.js'
import { pseudoRandom } from './fsimage-helpers.js'

/** The blocks of an LZ4 frame (lz4's doc/lz4_Frame_format.md), compressed or stored. */
function frameBlocks(frame: Buffer): Array<{ data: Buffer; compressed: boolean }> {
  expect(frame.readUInt32LE(0)).toBe(0x184d2204)
  const flg = frame[4]!
  let at = 6 + (flg & 0x08 ? 8 : 0) + (flg & 0x01 ? 4 : 0) + 1
  const blockChecksum = (flg & 0x10) !== 0
  const out: Array<{ data: Buffer; compressed: boolean }> = []
  for (;;) {
    const word = frame.readUInt32LE(at)
    at += 4
    if (word === 0) return out
    const size = word & 0x7fffffff
    out.push({ data: frame.subarray(at, at + size), compressed: (word & 0x80000000) === 0 })
    at += size + (blockChecksum ? 4 : 0)
  }
}

/** Everything the decoder hands out, concatenated. */
function decode(src: Uint8Array, outputSize: number, opts: { partial?: boolean; window?: number } = {}): Buffer {
  const window = Buffer.alloc(opts.window ?? LZ4_MIN_WINDOW)
  const pieces: Buffer[] = []
  const partial = opts.partial ?? false
  for (const piece of lz4DecodeBlock(src, window, { outputSize, partial })) pieces.push(Buffer.from(piece))
  return Buffer.concat(pieces)
}

/** Compresses `data` with the lz4 tool into 4 MiB independent blocks and decodes each block. */
function roundTrip(data: Buffer, level: string, window?: number): void {
  const frame = execFileSync('lz4', ['-q', level, '-B7', '-BI', '--no-frame-crc', '-c'], {
    input: data,
    maxBuffer: 64 << 20,
  })
  const blocks = frameBlocks(frame)
  expect(blocks.some((b) => b.compressed)).toBe(true)
  const out: Buffer[] = []
  let offset = 0
  for (const b of blocks) {
    const size = Math.min(4 << 20, data.length - offset)
    out.push(b.compressed ? decode(b.data, size, window ? { window } : {}) : b.data)
    offset += size
  }
  expect(Buffer.concat(out).equals(data)).toBe(true)
}

describe('lz4DecodeBlock', () => {
  it('decodes what the lz4 tool compresses, fast and high-compression, through a small window', () => {
    const text = Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(200_000))
    const mixed = Buffer.concat([pseudoRandom(300_000, 'lz4'), Buffer.alloc(2_000_000), text.subarray(0, 3_000_000)])
    for (const level of ['-1', '-9', '-12']) {
      roundTrip(text, level)
      roundTrip(mixed, level)
      roundTrip(mixed, level, 1 << 20)
    }
  })

  it('repeats overlapping matches of every short period, and long runs across window slides', () => {
    for (const period of [1, 2, 3, 7, 31, 33, 100]) {
      const pattern = pseudoRandom(period, `p${period}`)
      const len = 500_000
      // One sequence of literals (the pattern), one match reaching back `period` bytes, and the
      // last sequence of 5 literals.
      const matchLen = len - period - 5
      const tail = Buffer.from('12345')
      const bytes: number[] = []
      const extra = (n: number) => {
        for (; n >= 255; n -= 255) bytes.push(255)
        bytes.push(n)
      }
      const litToken = Math.min(period, 15)
      const mlToken = Math.min(matchLen - 4, 15)
      bytes.push((litToken << 4) | mlToken)
      if (period >= 15) extra(period - 15)
      bytes.push(...pattern)
      bytes.push(period & 0xff, period >> 8)
      if (matchLen - 4 >= 15) extra(matchLen - 4 - 15)
      bytes.push(5 << 4, ...tail)
      const out = decode(Buffer.from(bytes), len)
      const want = Buffer.alloc(len)
      for (let i = 0; i < len - 5; i++) want[i] = pattern[i % period]!
      tail.copy(want, len - 5)
      expect(out.equals(want), `period ${period}`).toBe(true)
    }
  })

  it('partial decoding stops at the expected size and ignores what follows; full decoding does not', () => {
    const frame = execFileSync('lz4', ['-q', '-1', '-B4', '-BI', '--no-frame-crc', '-c'], {
      input: Buffer.from('abcdefgh'.repeat(5000)),
    })
    const [block] = frameBlocks(frame)
    const padded = Buffer.concat([block!.data, Buffer.alloc(100)])
    expect(decode(padded, 40_000, { partial: true }).equals(Buffer.from('abcdefgh'.repeat(5000)))).toBe(true)
    expect(decode(block!.data, 1000, { partial: true }).equals(Buffer.from('abcdefgh'.repeat(125)))).toBe(true)
    expect(() => decode(padded, 40_000)).toThrow(Lz4FormatError)
    expect(() => decode(block!.data, 1000)).toThrow('decodes to more than 1000 bytes')
    expect(() => decode(block!.data, 50_000)).toThrow('decodes to 40000 bytes, not 50000')
  })

  it('rejects malformed blocks', () => {
    const bad: Array<[number[], string]> = [
      [[], 'ends before its last sequence'],
      [[0xf0], 'inside a literal length'],
      [[0x50, 1, 2], 'literals run past the end'],
      [[0x14, 0x61, 0x01], 'inside a match offset'],
      [[0x10, 0x61, 0x02, 0x00, 0x50, 1, 2, 3, 4, 5], 'before the start of the block'],
      [[0x10, 0x61, 0x00, 0x00, 0x50, 1, 2, 3, 4, 5], 'before the start of the block'],
      [[0x1f, 0x61, 0x01, 0x00], 'inside a match length'],
    ]
    for (const [bytes, msg] of bad) expect(() => decode(Buffer.from(bytes), 100, { partial: true })).toThrow(msg)
    expect(() => lz4DecodeBlock(Buffer.alloc(1), Buffer.alloc(1000), { outputSize: 0 }).next()).toThrow(RangeError)
  })
})
