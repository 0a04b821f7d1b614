import { BLOCK, decodeBlock, decodePax, isZeroBlock, type TarEntryType, type TarHeader } from './format.js'

/** A parsed entry. `body` must be consumed (or abandoned) before asking for the next entry;
 *  whatever is left is skipped. */
export interface TarEntry extends Omit<TarHeader, 'xattrs'> {
  /** From PAX `SCHILY.xattr.*`, in archive order, values raw. */
  xattrs: Array<[string, Buffer]>
  body(): AsyncIterable<Buffer>
}

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

/** Streams the entries of an uncompressed tar. Understands ustar, PAX (x/g) and GNU long names
 *  (L/K); rejects sparse and multi-volume entries. Throws plain Errors; the caller adds context. */
export async function* readTar(source: AsyncIterable<Uint8Array>): AsyncGenerator<TarEntry> {
  const r = new ByteReader(source)
  let globalPax = new Map<string, Buffer>()
  let pax: Map<string, Buffer> | undefined
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
        if (h.typeflag === 'x') pax = decodePax(body)
        else if (h.typeflag === 'g') {
          const g = decodePax(body)
          for (const k of ['path', 'linkpath', 'size']) g.delete(k)
          globalPax = new Map([...globalPax, ...g])
        } else {
          const nul = body.indexOf(0)
          const s = body.toString('utf8', 0, nul < 0 ? body.length : nul)
          if (h.typeflag === 'L') longName = s
          else longLink = s
        }
        continue
      }
      const records = new Map([...globalPax, ...(pax ?? [])])
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
        else if (k.startsWith('GNU.sparse.')) throw new Error(`sparse file ${JSON.stringify(name)} is not supported`)
      }
      if (!Number.isSafeInteger(size) || size < 0) throw new Error(`invalid size for ${JSON.stringify(name)}`)
      let type = TYPES[h.typeflag]
      if (type === 'file' && name.endsWith('/')) type = 'dir'
      if (h.typeflag === 'D') type = 'dir' // GNU dumpdir: a directory whose body lists names
      if (!type) {
        throw new Error(`unsupported tar entry type ${JSON.stringify(h.typeflag)} for ${JSON.stringify(name)}`)
      }
      const bodySize = type === 'file' ? size : 0
      const skipAfter = Math.ceil(size / BLOCK) * BLOCK - bodySize
      let remaining = bodySize
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
        body: async function* () {
          while (remaining > 0) {
            const b = await r.some(Math.min(remaining, 1 << 20))
            if (!b) throw new Error(`unexpected end of tar data in ${JSON.stringify(name)} (truncated archive)`)
            remaining -= b.length
            yield b
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
