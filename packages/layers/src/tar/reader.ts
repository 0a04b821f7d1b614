import { BLOCK, decodeBlock, decodePaxRecords, isZeroBlock, type TarEntryType, type TarHeader } from './format.js'
import {
  checkRegions,
  collectPax,
  paxSparseFormat,
  parseDecimal,
  parseMap0x1,
  readMap1x0,
  readOldGnuMap,
  SparseError,
  type SparseRegion,
} from './sparse.js'

export type { SparseRegion } from './sparse.js'

/** A parsed entry. `body` or `data` must be consumed (or abandoned) before asking for the next
 *  entry; whatever is left is skipped. Use one of the two per entry. */
export interface TarEntry extends Omit<TarHeader, 'xattrs'> {
  /** From PAX `SCHILY.xattr.*`, in archive order, values raw. */
  xattrs: Array<[string, Buffer]>
  /** Sparse files only (GNU 'S' entries and GNU's PAX sparse formats): the regions that hold
   *  data, in order, non-empty, not overlapping; the rest of `size` is holes. */
  sparse?: ReadonlyArray<SparseRegion>
  /** The file's `size` bytes. A sparse file's holes come as zeros, in shared read-only buffers:
   *  do not modify what this yields. */
  body(): AsyncIterable<Buffer>
  /** The stored bytes with where they go in the file, in order: for a sparse file only its
   *  regions' bytes (nothing for the holes), otherwise the same bytes as `body`. */
  data(): AsyncIterable<{ offset: number; chunk: Buffer }>
}

/** What holes are read as; never written to. */
const ZEROS = Buffer.alloc(1 << 20)

/** Buffered reader over a chunk stream: exact reads for headers, zero-copy slices for bodies. */
class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>
  #chunks: Buffer[] = []
  #buffered = 0
  #eof = false

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]()
  }

  async #pull(): Promise<boolean> {
    if (this.#eof) return false
    const r = await this.#it.next()
    if (r.done) {
      this.#eof = true
      return false
    }
    const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength)
    if (b.length > 0) {
      this.#chunks.push(b)
      this.#buffered += b.length
    }
    return true
  }

  /** Up to `max` bytes (at least 1), or null at end of input. */
  async some(max: number): Promise<Buffer | null> {
    while (this.#buffered === 0) if (!(await this.#pull())) return null
    const first = this.#chunks[0]!
    if (first.length <= max) {
      this.#chunks.shift()
      this.#buffered -= first.length
      return first
    }
    this.#chunks[0] = first.subarray(max)
    this.#buffered -= max
    return first.subarray(0, max)
  }

  /** Exactly n bytes; null if the input ended before the first byte; throws if it ended midway. */
  async exact(n: number): Promise<Buffer | null> {
    while (this.#buffered < n) {
      if (!(await this.#pull())) {
        if (this.#buffered === 0) return null
        throw new Error('unexpected end of tar data (truncated archive)')
      }
    }
    const parts: Buffer[] = []
    let need = n
    while (need > 0) {
      const b = (await this.some(need))!
      parts.push(b)
      need -= b.length
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts)
  }

  async skip(n: number): Promise<void> {
    let left = n
    while (left > 0) {
      const b = await this.some(Math.min(left, 1 << 20))
      if (!b) throw new Error('unexpected end of tar data (truncated archive)')
      left -= b.length
    }
  }

  /** Reads the rest of the input, so a compressed stream gets to verify its trailer. */
  async drain(): Promise<void> {
    this.#chunks = []
    this.#buffered = 0
    while (await this.#pull()) {
      this.#chunks = []
      this.#buffered = 0
    }
  }

  async close(): Promise<void> {
    await this.#it.return?.()
  }
}

const TYPES: Readonly<Record<string, TarEntryType>> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'link',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
}

const MAX_META_SIZE = 16 << 20

/** Streams the entries of an uncompressed tar. Understands ustar, PAX (x/g), GNU long names (L/K)
 *  and GNU sparse files (old 'S' entries, PAX 0.0, 0.1 and 1.0; see sparse.ts), which come out
 *  whole, under their real name and size; rejects multi-volume entries. Throws plain Errors naming
 *  the entry where there is one; the caller adds context. */
export async function* readTar(source: AsyncIterable<Uint8Array>): AsyncGenerator<TarEntry> {
  const r = new ByteReader(source)
  const nextBlock = () => r.exact(BLOCK)
  let globalPax = new Map<string, Buffer>()
  let pax: ReturnType<typeof collectPax> | undefined
  let longName: string | undefined
  let longLink: string | undefined
  try {
    for (;;) {
      const block = await r.exact(BLOCK)
      if (!block) return // no end-of-archive marker: tolerated, as GNU tar does
      if (isZeroBlock(block)) {
        await r.drain()
        return
      }
      const h = decodeBlock(block)
      const padded = Math.ceil(h.size / BLOCK) * BLOCK
      if (h.typeflag === 'x' || h.typeflag === 'g' || h.typeflag === 'L' || h.typeflag === 'K') {
        if (h.size > MAX_META_SIZE) throw new Error(`tar metadata entry of ${h.size} bytes is too large`)
        const data = (await r.exact(padded)) ?? Buffer.alloc(0)
        if (data.length < padded) throw new Error('unexpected end of tar data (truncated archive)')
        const body = data.subarray(0, h.size)
        if (h.typeflag === 'x') pax = collectPax(decodePaxRecords(body))
        else if (h.typeflag === 'g') {
          const g = collectPax(decodePaxRecords(body)).records
          for (const k of ['path', 'linkpath', 'size']) g.delete(k)
          // Go does not apply global records to files at all; sparse ones would make no sense.
          for (const k of g.keys()) if (k.startsWith('GNU.sparse.')) g.delete(k)
          globalPax = new Map([...globalPax, ...g])
        } else {
          const nul = body.indexOf(0)
          const s = body.toString('utf8', 0, nul < 0 ? body.length : nul)
          if (h.typeflag === 'L') longName = s
          else longLink = s
        }
        continue
      }
      const local = pax
      const records = new Map([...globalPax, ...(local?.records ?? [])])
      pax = undefined
      let name = longName ?? h.name
      let linkname = longLink ?? h.linkname
      longName = longLink = undefined
      let { size, uid, gid, mtime } = h
      const xattrs: Array<[string, Buffer]> = []
      for (const [k, v] of records) {
        const num = () => {
          const n = Number(v.toString('ascii'))
          if (!Number.isFinite(n)) throw new Error(`invalid PAX ${k} ${JSON.stringify(v.toString())} for ${name}`)
          return n
        }
        if (k === 'path') name = v.toString('utf8')
        else if (k === 'linkpath') linkname = v.toString('utf8')
        else if (k === 'size') size = num()
        else if (k === 'uid') uid = num()
        else if (k === 'gid') gid = num()
        else if (k === 'mtime') mtime = num()
        else if (k.startsWith('SCHILY.xattr.')) xattrs.push([k.slice('SCHILY.xattr.'.length), v])
      }
      if (!Number.isSafeInteger(size) || size < 0) throw new Error(`invalid size for ${JSON.stringify(name)}`)
      let type = TYPES[h.typeflag]
      if (type === 'file' && name.endsWith('/')) type = 'dir'
      if (h.typeflag === 'D') type = 'dir' // GNU dumpdir: a directory whose body lists names
      if (h.typeflag === 'S') type = 'file'
      if (!type) {
        throw new Error(`unsupported tar entry type ${JSON.stringify(h.typeflag)} for ${JSON.stringify(name)}`)
      }

      // Sparse files, as Go's handleSparseFile: `size` so far is what the archive stores.
      let stored = type === 'file' ? size : 0
      let regions: SparseRegion[] | undefined
      let realSize = size
      const paxFormat = h.typeflag === 'S' ? undefined : paxSparseFormat(local?.records ?? new Map())
      try {
        if (paxFormat && type !== 'file') throw new SparseError(`a ${type} entry cannot be sparse`)
        if (h.typeflag === 'S') {
          const m = await readOldGnuMap(block, nextBlock)
          regions = m.regions
          realSize = m.realSize
        } else if (paxFormat) {
          const rec = local!.records
          const sparseName = rec.get('GNU.sparse.name')?.toString('utf8') ?? ''
          if (sparseName !== '') name = sparseName
          if (local!.sparseError) throw new SparseError(`invalid sparse map: ${local!.sparseError}`)
          const real = rec.get('GNU.sparse.size')?.toString('utf8') || rec.get('GNU.sparse.realsize')?.toString('utf8')
          if (real) realSize = parseDecimal(real, 'sparse real size')
          if (paxFormat === '1.0') {
            let left = stored
            const m = await readMap1x0(async () => {
              if (left < BLOCK) return null
              const b = await r.exact(BLOCK)
              if (!b) throw new SparseError('unexpected end of tar data in its sparse map (truncated archive)')
              left -= BLOCK
              return b
            })
            regions = m.regions
            stored -= m.bytes
          } else {
            regions = parseMap0x1(rec)
          }
        }
        if (regions) {
          regions = checkRegions(regions, realSize)
          let inMap = 0
          for (const reg of regions) inMap += reg.length
          if (inMap > stored) {
            throw new SparseError(`its map references ${inMap} bytes of data, the archive holds ${stored}`)
          }
          if (inMap < stored) {
            throw new SparseError(`the archive holds ${stored} bytes of data, its map references only ${inMap}`)
          }
        }
      } catch (e) {
        if (e instanceof SparseError) throw new Error(`sparse file ${JSON.stringify(name)}: ${e.message}`)
        throw e
      }

      const bodySize = regions ? realSize : stored
      // The padding, or the whole body of an entry that is not a file (the map was read already).
      const skipAfter = Math.ceil(size / BLOCK) * BLOCK - (type === 'file' ? size : 0)
      // What is left of the stored data, and where reading has got to.
      let remaining = stored
      let region = 0
      let within = 0
      let flatPos = 0
      const sparse = regions
      const truncated = () => new Error(`unexpected end of tar data in ${JSON.stringify(name)} (truncated archive)`)
      const data = async function* (): AsyncGenerator<{ offset: number; chunk: Buffer }> {
        if (!sparse) {
          while (remaining > 0) {
            const b = await r.some(Math.min(remaining, 1 << 20))
            if (!b) throw truncated()
            remaining -= b.length
            const offset = flatPos
            flatPos += b.length
            yield { offset, chunk: b }
          }
          return
        }
        for (; region < sparse.length; region++, within = 0) {
          const reg = sparse[region]!
          while (within < reg.length) {
            const b = await r.some(Math.min(reg.length - within, 1 << 20))
            if (!b) throw truncated()
            remaining -= b.length
            const offset = reg.offset + within
            within += b.length
            yield { offset, chunk: b }
          }
        }
      }
      let logical = 0
      const entry: TarEntry = {
        name,
        type,
        mode: h.mode & 0o7777,
        uid,
        gid,
        size: bodySize,
        mtime,
        linkname,
        devmajor: h.devmajor,
        devminor: h.devminor,
        xattrs,
        ...(sparse ? { sparse } : {}),
        data,
        body: async function* () {
          for await (const { offset, chunk } of data()) {
            while (logical < offset) {
              const z = ZEROS.subarray(0, Math.min(offset - logical, ZEROS.length))
              logical += z.length
              yield z
            }
            logical += chunk.length
            yield chunk
          }
          while (logical < bodySize) {
            const z = ZEROS.subarray(0, Math.min(bodySize - logical, ZEROS.length))
            logical += z.length
            yield z
          }
        },
      }
      yield entry
      if (remaining > 0) await r.skip(remaining)
      remaining = 0
      await r.skip(skipAfter)
    }
  } finally {
    await r.close()
  }
}
