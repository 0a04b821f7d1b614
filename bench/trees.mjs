// Generates the benchmark's input trees offline: half incompressible bytes in large files, half
// text in small files, as real layers mix binaries with configuration and sources. A finished tree
// is marked with a stamp naming its parameters, so a later run reuses it instead of writing it again.
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

const WORDS = (
  'the of and to in is for on that with as by it be are from at this or an was which not have ' +
  'layer image build container file tree root config value name path data index manifest blob ' +
  'digest tag cache import export mount overlay run step output input stream buffer error return ' +
  'function const let var if else while for switch case break default static public private'
).split(' ')

/** A deterministic text corpus (xorshift PRNG over a word list), compressible like source code. */
function corpus(bytes) {
  let x = 2463534242
  const next = () => {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    return x >>> 0
  }
  const parts = []
  let len = 0
  let line = 0
  while (len < bytes) {
    const n = 4 + (next() % 10)
    const words = []
    for (let i = 0; i < n; i++) words.push(WORDS[next() % WORDS.length])
    const s = `${line++} ${'  '.repeat(next() % 4)}${words.join(' ')}${next() % 7 === 0 ? ` = ${next()}` : ''}\n`
    parts.push(s)
    len += s.length
  }
  return Buffer.from(parts.join(''))
}

/**
 * Writes a tree of about `bytes` bytes into `dir` (replacing whatever is there unless the stamp
 * matches): `bin/` holds incompressible files of `bigFile` bytes, `src/<n>/` text files of 4-28 KiB.
 * `textShare` is the fraction of bytes that are text.
 */
export async function makeTree(dir, { bytes, bigFile = 8 << 20, textShare = 0.5 }) {
  const stamp = join(dir, '.bench-tree')
  const want = JSON.stringify({ bytes, bigFile, textShare, v: 1 })
  try {
    if ((await readFile(stamp, 'utf8')) === want) return false
  } catch {}
  await rm(dir, { recursive: true, force: true })
  await mkdir(join(dir, 'bin'), { recursive: true })
  const textBytes = Math.round(bytes * textShare)
  let left = bytes - textBytes
  for (let i = 0; left > 0; i++) {
    const n = Math.min(bigFile, left)
    await writeFile(join(dir, 'bin', `blob${String(i).padStart(4, '0')}.bin`), randomBytes(n))
    left -= n
  }
  const text = corpus(1 << 20)
  left = textBytes
  let off = 0
  for (let i = 0; left > 0; i++) {
    const sub = join(dir, 'src', String(Math.floor(i / 500)))
    if (i % 500 === 0) await mkdir(sub, { recursive: true })
    const n = Math.min(left, 4096 + ((i * 7919) % 24576))
    if (off + n > text.length) off = (off * 31 + 17) % (text.length - n)
    await writeFile(join(sub, `f${i}.txt`), Buffer.concat([Buffer.from(`// file ${i}\n`), text.subarray(off, off + n)]))
    off += n
    left -= n
  }
  await writeFile(stamp, want)
  return true
}
