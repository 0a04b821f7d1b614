/** LZ4 block decoding (the block format of lz4's doc/lz4_Block_format.md), streaming: output is
 *  handed out in pieces through a window that keeps the 64 KiB a match may reach back, so memory
 *  stays the window's size however far a block expands (erofs extents decode to megabytes from
 *  one block of zeros). No npm package fits: lz4js is unmaintained since 2017, the others wrap
 *  native or wasm code and decode whole frames into memory. */

/** A match reaches back at most this far (its offset is 16 bits). */
const MAX_DISTANCE = 65535
const HISTORY = 64 << 10
/** The smallest window decode accepts: the history plus room to make progress. */
export const LZ4_MIN_WINDOW = 2 * HISTORY
/** Shorter copies are done byte by byte: cheaper than a call for the few bytes most take. */
const SHORT_COPY = 32
const MIN_MATCH = 4

/** The input is not an LZ4 block that decodes to the expected size. */
export class Lz4FormatError extends Error {}

export interface Lz4DecodeOptions {
  /** Exactly how many bytes the block decodes to. */
  outputSize: number
  /** Stop once outputSize bytes are out, whatever input is left (the block may be followed by
   *  anything). Otherwise the input must end exactly where the last sequence does. */
  partial?: boolean
}

/**
 * Decodes the LZ4 block `src`, yielding its output in order as views of `window` (a scratch
 * buffer of at least LZ4_MIN_WINDOW bytes, reused by the caller). Each view is valid until the
 * generator is resumed. Throws Lz4FormatError if the block is malformed, reaches back before its
 * start, or does not decode to `outputSize` bytes.
 */
export function* lz4DecodeBlock(src: Uint8Array, window: Buffer, opts: Lz4DecodeOptions): Generator<Buffer> {
  if (window.length < LZ4_MIN_WINDOW) throw new RangeError(`LZ4 window of ${window.length} bytes is too small`)
  const { outputSize } = opts
  const partial = opts.partial === true
  const cap = window.length
  const end = src.length
  let ip = 0
  let op = 0
  /** Start of what has not been handed out yet. */
  let from = 0
  let produced = 0

  /** What is to be handed out before anything more fits in the window. */
  const full = (): Buffer | undefined => (op < cap ? undefined : window.subarray(from, op))
  /** Keeps the history a match may reach and frees the rest of the window. */
  const slide = (): void => {
    window.copyWithin(0, op - HISTORY, op)
    op = HISTORY
    from = HISTORY
  }

  for (;;) {
    if (ip >= end) throw new Lz4FormatError('LZ4 block ends before its last sequence')
    const token = src[ip++]!
    let lit = token >>> 4
    if (lit === 15) {
      let b: number
      do {
        if (ip >= end) throw new Lz4FormatError('LZ4 block ends inside a literal length')
        b = src[ip++]!
        lit += b
      } while (b === 255)
    }
    if (ip + lit > end) throw new Lz4FormatError('LZ4 literals run past the end of the block')
    let last = ip + lit === end
    if (produced + lit > outputSize) {
      if (!partial) throw new Lz4FormatError(`LZ4 block decodes to more than ${outputSize} bytes`)
      lit = outputSize - produced
      last = true
    }
    produced += lit
    while (lit > 0) {
      const pending = full()
      if (pending) {
        yield pending
        slide()
      }
      const n = Math.min(lit, cap - op)
      if (n <= SHORT_COPY) for (let i = 0; i < n; i++) window[op + i] = src[ip + i]!
      else window.set(src.subarray(ip, ip + n), op)
      op += n
      ip += n
      lit -= n
    }
    if (last || (partial && produced === outputSize)) break

    if (ip + 2 > end) throw new Lz4FormatError('LZ4 block ends inside a match offset')
    const distance = src[ip]! | (src[ip + 1]! << 8)
    ip += 2
    if (distance === 0 || distance > produced || distance > MAX_DISTANCE) {
      throw new Lz4FormatError(`LZ4 match reaches ${distance} bytes back, before the start of the block`)
    }
    let len = token & 15
    if (len === 15) {
      let b: number
      do {
        if (ip >= end) throw new Lz4FormatError('LZ4 block ends inside a match length')
        b = src[ip++]!
        len += b
      } while (b === 255)
    }
    len += MIN_MATCH
    if (produced + len > outputSize) {
      if (!partial) throw new Lz4FormatError(`LZ4 block decodes to more than ${outputSize} bytes`)
      len = outputSize - produced
    }
    produced += len
    while (len > 0) {
      const pending = full()
      if (pending) {
        yield pending
        slide()
      }
      const n = Math.min(len, cap - op)
      const at = op - distance
      if (n <= SHORT_COPY) {
        // Byte by byte, an overlapping match repeats its pattern, as the format means.
        for (let i = 0; i < n; i++) window[op + i] = window[at + i]!
      } else if (distance >= n) window.copyWithin(op, at, at + n)
      else {
        // The pattern doubles with each copy: what lies before the copy's target repeats with
        // the match's period, and the gap between source and target stays a multiple of it.
        let done = 0
        while (done < n) {
          const k = Math.min(n - done, distance + done)
          window.copyWithin(op + done, at, at + k)
          done += k
        }
      }
      op += n
      len -= n
    }
    if (partial && produced === outputSize) break
  }
  if (produced !== outputSize) {
    throw new Lz4FormatError(`LZ4 block decodes to ${produced} bytes, not ${outputSize}`)
  }
  if (op > from) yield window.subarray(from, op)
}
