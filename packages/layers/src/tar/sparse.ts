/** GNU sparse files, read the way Go's archive/tar reads them (upstream stacker's tar reader):
 *  - old GNU format: typeflag 'S' in a GNU header (magic `ustar  \0`), up to 4 map entries in the
 *    header, more in 512-byte extension blocks right after it, the real size at offset 483;
 *  - PAX 0.0: repeated `GNU.sparse.offset`/`GNU.sparse.numbytes` records (turned into a 0.1 map
 *    while the PAX header is parsed), `GNU.sparse.numblocks`, `GNU.sparse.size`;
 *  - PAX 0.1: `GNU.sparse.map` = "offset,length,...", `GNU.sparse.numblocks`;
 *  - PAX 1.0: `GNU.sparse.major=1`, `minor=0`, the map as decimal lines at the start of the data,
 *    padded to whole blocks; `GNU.sparse.name` and `GNU.sparse.realsize`.
 *  An entry's stored data holds the map's regions back to back; everything else is a hole. */

import { BLOCK, parseNumeric } from './format.js'

/** A stretch of a sparse file that holds data. */
export interface SparseRegion {
  offset: number
  length: number
}

/** Go's maxSpecialFileSize: the most a PAX 1.0 map may take. */
const MAX_MAP_1X0 = 1 << 20
/** Old GNU extension blocks at most (21 entries each): 16 MiB of them, like PAX headers here. */
const MAX_GNU_EXTENSION_BLOCKS = (16 << 20) / BLOCK

const SPARSE_OFFSET = 'GNU.sparse.offset'
const SPARSE_NUMBYTES = 'GNU.sparse.numbytes'
const SPARSE_MAP = 'GNU.sparse.map'

/** A malformed sparse entry; the reader adds the entry's name. */
export class SparseError extends Error {}

/** Go's strconv.ParseInt(s, 10, 64), limited to what a JS number holds exactly. */
export function parseDecimal(s: string, what: string): number {
  if (!/^[+-]?[0-9]+$/.test(s)) throw new SparseError(`invalid ${what} ${JSON.stringify(s)}`)
  const n = Number(s)
  if (!Number.isSafeInteger(n)) throw new SparseError(`${what} ${s} is too large`)
  return n
}

/** PAX records as Go's parsePAX keeps them: the last value of each key, except that 0.0's
 *  repeated offset/numbytes records become one `GNU.sparse.map`. A broken 0.0 sequence is kept as
 *  `sparseError`, reported once the entry's name is known. */
export function collectPax(records: ReadonlyArray<readonly [string, Buffer]>): {
  records: Map<string, Buffer>
  sparseError?: string
} {
  const out = new Map<string, Buffer>()
  const pairs: string[] = []
  let sparseError: string | undefined
  for (const [k, v] of records) {
    if (k === SPARSE_OFFSET || k === SPARSE_NUMBYTES) {
      const s = v.toString('utf8')
      const want = pairs.length % 2 === 0 ? SPARSE_OFFSET : SPARSE_NUMBYTES
      if (k !== want || s.includes(',')) sparseError ??= `${k}=${s} where ${want} was expected`
      pairs.push(s)
    } else {
      out.set(k, v)
    }
  }
  if (pairs.length > 0) out.set(SPARSE_MAP, Buffer.from(pairs.join(','), 'utf8'))
  return sparseError === undefined ? { records: out } : { records: out, sparseError }
}

/** Which PAX sparse format an entry's records describe, as Go decides: 0.0/0.1 (map in the
 *  records), 1.0 (map in the data), or none (not sparse, or a version Go does not know, which it
 *  then reads as a plain file). */
export function paxSparseFormat(records: ReadonlyMap<string, Buffer>): '0.1' | '1.0' | undefined {
  const get = (k: string): string => records.get(k)?.toString('utf8') ?? ''
  const major = get('GNU.sparse.major')
  const minor = get('GNU.sparse.minor')
  if (major === '0' && (minor === '0' || minor === '1')) return '0.1'
  if (major === '1' && minor === '0') return '1.0'
  if (major !== '' || minor !== '') return undefined
  return get(SPARSE_MAP) !== '' ? '0.1' : undefined
}

/** The 0.0/0.1 map from `GNU.sparse.numblocks` and `GNU.sparse.map`. */
export function parseMap0x1(records: ReadonlyMap<string, Buffer>): SparseRegion[] {
  const count = records.get('GNU.sparse.numblocks')?.toString('utf8') ?? ''
  const n = parseDecimal(count, 'GNU.sparse.numblocks')
  if (n < 0) throw new SparseError(`invalid GNU.sparse.numblocks ${count}`)
  const text = records.get(SPARSE_MAP)?.toString('utf8') ?? ''
  const fields = text === '' ? [] : text.split(',')
  if (fields.length !== 2 * n) {
    throw new SparseError(`GNU.sparse.map has ${fields.length} numbers for ${n} regions`)
  }
  const out: SparseRegion[] = []
  for (let i = 0; i < fields.length; i += 2) {
    out.push({
      offset: parseDecimal(fields[i]!, 'sparse offset'),
      length: parseDecimal(fields[i + 1]!, 'sparse length'),
    })
  }
  return out
}

/** Reads a 1.0 map from the start of an entry's data, block by block, as Go does: a count line,
 *  then offset and length lines; stops at the end of the block holding the last newline.
 *  `readBlock` returns the next 512 bytes of the entry's data, or null when it has no more. */
export async function readMap1x0(readBlock: () => Promise<Buffer | null>): Promise<{
  regions: SparseRegion[]
  bytes: number
}> {
  let bytes = 0
  let text = ''
  let lines = 0
  let pos = 0
  const feed = async (want: number): Promise<void> => {
    while (lines < want) {
      if (bytes + BLOCK > MAX_MAP_1X0) throw new SparseError('sparse map is too long')
      const b = await readBlock()
      if (!b) throw new SparseError("sparse map runs past the entry's data")
      bytes += BLOCK
      const s = b.toString('latin1')
      for (const c of s) if (c === '\n') lines++
      text += s
    }
  }
  const next = (): string => {
    const nl = text.indexOf('\n', pos)
    const tok = text.slice(pos, nl)
    pos = nl + 1
    lines--
    return tok
  }
  await feed(1)
  const n = parseDecimal(next(), 'sparse map count')
  if (n < 0) throw new SparseError(`invalid sparse map count ${n}`)
  // Each entry takes at least 4 bytes ("0\n0\n"): a larger count cannot fit the limit.
  if (n > MAX_MAP_1X0 / 4) throw new SparseError('sparse map is too long')
  await feed(2 * n)
  const regions: SparseRegion[] = []
  for (let i = 0; i < n; i++) {
    regions.push({ offset: parseDecimal(next(), 'sparse offset'), length: parseDecimal(next(), 'sparse length') })
  }
  return { regions, bytes }
}

/** Whether a header block is in GNU format (magic "ustar " and version " \0"), the only one whose
 *  'S' entries have this layout (star uses the same typeflag differently). */
export function isGnuHeader(block: Buffer): boolean {
  return block.toString('latin1', 257, 265) === 'ustar  \0'
}

/** The old GNU map and real size from an 'S' header and its extension blocks. `readBlock` returns
 *  the next raw 512 bytes of the archive, or null at its end. */
export async function readOldGnuMap(
  header: Buffer,
  readBlock: () => Promise<Buffer | null>,
): Promise<{ regions: SparseRegion[]; realSize: number }> {
  if (!isGnuHeader(header)) throw new SparseError('sparse entry (type S) without a GNU header')
  const realSize = parseNumeric(header, 483, 12)
  if (Number.isNaN(realSize)) throw new SparseError('invalid real size')
  const regions: SparseRegion[] = []
  let block = header
  let start = 386
  let entries = 4
  let extensions = 0
  for (;;) {
    for (let i = 0; i < entries; i++) {
      const at = start + i * 24
      if (block[at] === 0) break // as GNU and BSD tar: an empty offset ends the list
      const offset = parseNumeric(block, at, 12)
      const length = parseNumeric(block, at + 12, 12)
      if (Number.isNaN(offset) || Number.isNaN(length)) throw new SparseError('invalid number in the sparse map')
      regions.push({ offset, length })
    }
    if ((block[start + entries * 24] ?? 0) === 0) return { regions, realSize }
    if (++extensions > MAX_GNU_EXTENSION_BLOCKS) throw new SparseError('sparse map is too long')
    const next = await readBlock()
    if (!next) throw new SparseError('unexpected end of tar data in its sparse map (truncated archive)')
    block = next
    start = 0
    entries = 21
  }
}

/** Go's validateSparseEntries: no negative numbers, no overflow, nothing past `size`, regions in
 *  order and not overlapping. Returns the regions that hold data (empty ones dropped). */
export function checkRegions(regions: readonly SparseRegion[], size: number): SparseRegion[] {
  if (size < 0 || !Number.isSafeInteger(size)) throw new SparseError(`invalid real size ${size}`)
  let end = 0
  const out: SparseRegion[] = []
  for (const r of regions) {
    if (r.offset < 0 || r.length < 0) throw new SparseError('invalid sparse map: negative offset or length')
    if (!Number.isSafeInteger(r.offset + r.length)) throw new SparseError('invalid sparse map: region too large')
    if (r.offset + r.length > size) {
      throw new SparseError(`invalid sparse map: region ${r.offset}+${r.length} ends past the file's size ${size}`)
    }
    if (r.offset < end) throw new SparseError('invalid sparse map: regions overlap or are out of order')
    end = r.offset + r.length
    if (r.length > 0) out.push(r)
  }
  return out
}
