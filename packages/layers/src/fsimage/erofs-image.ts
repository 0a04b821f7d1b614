import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs'
import { StackerError, type StackerErrorCode } from '@stacker/core'
import { crc32c, EROFS_MAGIC, EROFS_SUPER_OFFSET } from './superblock.js'

// The erofs on-disk format, as the kernel's Documentation/filesystems/erofs.rst and erofs_fs.h
// describe it: the layouts mkfs.erofs 1.5 writes (flat plain, flat inline, lz4 with legacy or
// compact lcluster indexes, big pclusters, 0PADDING), nothing later.

const SUPERBLOCK = 128
const COMPAT_SB_CHKSUM = 0x1
const COMPACT_INODE = 32
const EXTENDED_INODE = 64
const XATTR_IBODY_HEADER = 12
const XATTR_ENTRY = 4
const DIRENT = 12
const MAX_NAME = 255

export const LAYOUT_FLAT_PLAIN = 0
export const LAYOUT_COMPRESSED_LEGACY = 1
export const LAYOUT_FLAT_INLINE = 2
export const LAYOUT_COMPRESSED_COMPACT = 3
const LAYOUT_CHUNK_BASED = 4

/** Incompatible features this reader understands. Any other bit set means a layout it cannot read. */
const INCOMPAT_LZ4_0PADDING = 0x1
const INCOMPAT_BIG_PCLUSTER = 0x2
const KNOWN_INCOMPAT = INCOMPAT_LZ4_0PADDING | INCOMPAT_BIG_PCLUSTER
const INCOMPAT_NAMES: Record<number, string> = {
  4: 'chunked files',
  8: 'device table',
  16: 'ztailpacking',
  32: 'fragments',
  64: 'long xattr prefixes',
}

const S_IFMT = 0o170000
export const S_IFDIR = 0o040000
export const S_IFREG = 0o100000
export const S_IFLNK = 0o120000
export const S_IFCHR = 0o020000
export const S_IFBLK = 0o060000
export const S_IFIFO = 0o010000
export const S_IFSOCK = 0o140000

/** erofs directory entry file types (EROFS_FT_*), by the S_IFMT they stand for. */
const FT_OF_MODE = new Map<number, number>([
  [S_IFREG, 1],
  [S_IFDIR, 2],
  [S_IFCHR, 3],
  [S_IFBLK, 4],
  [S_IFIFO, 5],
  [S_IFSOCK, 6],
  [S_IFLNK, 7],
])

/** Prefixes of xattr name indexes. Index 5 (lustre) is left out: the kernel lists none of them. */
const XATTR_PREFIXES: Record<number, string> = {
  1: 'user.',
  2: 'system.posix_acl_access',
  3: 'system.posix_acl_default',
  4: 'trusted.',
  6: 'security.',
}
const XATTR_INDEX_LUSTRE = 5

/** Reads 64 KiB at a time and keeps 1 MiB: metadata is visited mostly in the order it lies in the
 *  image, and inline file data makes it sparse, so a read per block would cost several times as
 *  much. */
const CHUNK = 64 << 10
const CACHED_CHUNKS = 16

export interface ErofsSuperblock {
  blkszbits: number
  blksz: number
  rootNid: number
  inodeCount: number
  /** The time compact inodes carry, seconds and nanoseconds. */
  buildTime: number
  buildTimeNsec: number
  featureIncompat: number
  /** Byte offsets of the inode area and the shared xattr area. */
  metaStart: number
  xattrStart: number
}

export interface ErofsInode {
  nid: number
  /** Byte offset of the inode in the image. */
  pos: number
  extended: boolean
  layout: number
  mode: number
  nlink: number
  size: number
  uid: number
  gid: number
  /** Seconds since the epoch (may be negative) and nanoseconds. */
  mtime: number
  mtimeNsec: number
  /** raw_blkaddr for flat layouts, the device number for devices. */
  rawU: number
  xattrCount: number
  /** Where the inline xattr body starts, and its size in bytes (0 without xattrs). */
  xattrPos: number
  xattrSize: number
  /** Where whatever follows the xattrs starts: inline data, or a compressed file's map header. */
  tailPos: number
}

export interface ErofsDirent {
  nid: number
  /** EROFS_FT_* of the entry; 0 when unknown. */
  fileType: number
  name: Buffer
}

/** A compressed file's extent: `length` bytes of the file from `start` are held by the pcluster of
 *  `plen` bytes at `pos`, lz4-compressed or (not `compressed`) stored as they are. */
export interface ErofsExtent {
  start: number
  length: number
  pos: number
  plen: number
  compressed: boolean
}

/** One piece of a file's content in the image: `length` bytes at `pos`. */
export interface FlatRange {
  pos: number
  length: number
}

interface Chunk {
  buf: Buffer
  /** Bytes of the file it holds: less than CHUNK at the end of the file. */
  length: number
  dirty: boolean
}

export interface OpenErofsOptions {
  /** Opens read-write: write() and flush() change the image. */
  writable?: boolean
  /** The code of errors about what the image holds. */
  code: StackerErrorCode
}

/** An erofs image open for reading its metadata (and, when writable, patching it in place).
 *  Reads are positional and cached; every offset read from the image is checked against the image
 *  before it is used, so a malformed image fails with one error naming what is wrong rather than
 *  being misread. Not safe to use from two tasks at once; the caller closes it. */
export class ErofsImage {
  readonly #cache = new Map<number, Chunk>()
  #lastN = -1
  #last: Chunk | undefined
  readonly #code: StackerErrorCode
  readonly size: number

  private constructor(
    readonly fd: number,
    readonly file: string,
    readonly sb: ErofsSuperblock,
    code: StackerErrorCode,
    size: number,
  ) {
    this.#code = code
    this.size = size
  }

  /** Opens `file` and checks its superblock. Throws (with `opts.code`) if it is not an erofs image
   *  this reader can read. */
  static open(file: string, opts: OpenErofsOptions): ErofsImage {
    const fd = openSync(file, opts.writable ? 'r+' : 'r')
    try {
      const size = fstatSync(fd).size
      const raw = Buffer.alloc(SUPERBLOCK)
      const got = readSync(fd, raw, 0, SUPERBLOCK, EROFS_SUPER_OFFSET)
      if (got < SUPERBLOCK || raw.readUInt32LE(0) !== EROFS_MAGIC) {
        throw new StackerError(opts.code, `${file} is not an erofs image (no erofs superblock)`)
      }
      const sb = parseSuperblock(raw, file, opts.code, size)
      checkSuperblockChecksum(fd, raw, sb, file, opts.code)
      return new ErofsImage(fd, file, sb, opts.code, size)
    } catch (e) {
      closeSync(fd)
      throw e
    }
  }

  close(): void {
    closeSync(this.fd)
  }

  /** An error about the image's content. */
  corrupt(why: string): StackerError {
    return new StackerError(this.#code, `${this.file}: malformed erofs image: ${why}`)
  }

  #chunk(n: number): Chunk {
    if (n === this.#lastN) return this.#last!
    let c = this.#cache.get(n)
    this.#lastN = n
    if (c) {
      // Re-inserted so that Map order is least recently used first.
      this.#cache.delete(n)
      this.#cache.set(n, c)
      this.#last = c
      return c
    }
    let buf: Buffer | undefined
    if (this.#cache.size >= CACHED_CHUNKS) {
      const [oldest, old] = this.#cache.entries().next().value as [number, Chunk]
      if (old.dirty) this.#writeBack(oldest, old)
      this.#cache.delete(oldest)
      buf = old.buf
    }
    buf ??= Buffer.allocUnsafe(CHUNK)
    c = { buf, length: readSync(this.fd, buf, 0, CHUNK, n * CHUNK), dirty: false }
    this.#cache.set(n, c)
    this.#last = c
    return c
  }

  #writeBack(n: number, c: Chunk): void {
    if (writeSync(this.fd, c.buf, 0, c.length, n * CHUNK) !== c.length) throw this.corrupt('short write')
    c.dirty = false
  }

  /** `len` bytes at `pos`, to be used before the next call: a view of the cache when they lie in
   *  one chunk, else a copy. Throws if they are not all in the image. */
  view(pos: number, len: number): Buffer {
    if (!Number.isSafeInteger(pos) || pos < 0 || len < 0 || pos + len > this.size) {
      throw this.corrupt(`${len} bytes at ${pos} are past the end of the image`)
    }
    const off = pos % CHUNK
    if (off + len <= CHUNK) {
      const c = this.#chunk((pos - off) / CHUNK)
      if (off + len > c.length) throw this.corrupt(`${len} bytes at ${pos} are past the end of the image`)
      return c.buf.subarray(off, off + len)
    }
    const out = Buffer.alloc(len)
    for (let done = 0; done < len; )
      done += this.view(pos + done, Math.min(len - done, CHUNK - ((pos + done) % CHUNK))).copy(out, done)
    return out
  }

  /** Copies `data` into the image at `pos` (through the cache: see flush). */
  write(pos: number, data: Buffer): void {
    for (let done = 0; done < data.length; ) {
      const off = (pos + done) % CHUNK
      const c = this.#chunk((pos + done - off) / CHUNK)
      const n = Math.min(data.length - done, CHUNK - off)
      if (off + n > c.length) throw this.corrupt(`write at ${pos + done} is past the end of the image`)
      done += data.copy(c.buf, off, done, done + n)
      c.dirty = true
    }
  }

  /** Writes changed chunks back to the image. */
  flush(): void {
    for (const [n, c] of this.#cache) if (c.dirty) this.#writeBack(n, c)
  }

  /** Reads `length` bytes at `pos` straight from the image into `buf` (bypassing the cache: for
   *  file data). Throws unless all of them are there. */
  readInto(buf: Buffer, pos: number, length: number, at = 0): void {
    if (pos < 0 || pos + length > this.size) throw this.corrupt(`data at ${pos} is past the end of the image`)
    for (let done = 0; done < length; ) {
      const n = readSync(this.fd, buf, at + done, length - done, pos + done)
      if (n === 0) throw this.corrupt(`data at ${pos} is past the end of the image`)
      done += n
    }
  }

  /** The inode numbered `nid`. */
  inode(nid: number): ErofsInode {
    const { sb } = this
    const pos = sb.metaStart + nid * COMPACT_INODE
    if (!Number.isSafeInteger(pos) || pos + COMPACT_INODE > this.size)
      throw this.corrupt(`inode ${nid} is out of range`)
    const head = this.view(pos, COMPACT_INODE)
    const format = head.readUInt16LE(0)
    const extended = (format & 1) === 1
    const layout = (format >> 1) & 0x7
    const xattrCount = head.readUInt16LE(2)
    const mode = head.readUInt16LE(4)
    const xattrSize = xattrCount === 0 ? 0 : XATTR_IBODY_HEADER + (xattrCount - 1) * 4
    const isize = extended ? EXTENDED_INODE : COMPACT_INODE
    let inode: ErofsInode
    if (!extended) {
      inode = {
        nid,
        pos,
        extended,
        layout,
        mode,
        nlink: head.readUInt16LE(6),
        size: head.readUInt32LE(8),
        rawU: head.readUInt32LE(16),
        uid: head.readUInt16LE(24),
        gid: head.readUInt16LE(26),
        mtime: sb.buildTime,
        mtimeNsec: sb.buildTimeNsec,
        xattrCount,
        xattrPos: pos + isize,
        xattrSize,
        tailPos: pos + isize + xattrSize,
      }
    } else {
      const ext = this.view(pos, EXTENDED_INODE)
      const size = ext.readBigUInt64LE(8)
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw this.corrupt(`inode ${nid} has size ${size}`)
      inode = {
        nid,
        pos,
        extended,
        layout,
        mode,
        nlink: ext.readUInt32LE(44),
        size: Number(size),
        rawU: ext.readUInt32LE(16),
        uid: ext.readUInt32LE(24),
        gid: ext.readUInt32LE(28),
        // Signed 64-bit seconds, exact in a double for any time a file can have.
        mtime: ext.readInt32LE(36) * 2 ** 32 + ext.readUInt32LE(32),
        mtimeNsec: ext.readUInt32LE(40),
        xattrCount,
        xattrPos: pos + isize,
        xattrSize,
        tailPos: pos + isize + xattrSize,
      }
    }
    if (inode.mtimeNsec >= 1e9) throw this.corrupt(`inode ${nid} has ${inode.mtimeNsec} nanoseconds`)
    if (!FT_OF_MODE.has(mode & S_IFMT)) throw this.corrupt(`inode ${nid} has mode ${mode.toString(8)}`)
    if (layout === LAYOUT_CHUNK_BASED) throw this.unsupported(`chunk-based files (inode ${nid})`)
    if (layout > LAYOUT_CHUNK_BASED) throw this.corrupt(`inode ${nid} has data layout ${layout}`)
    return inode
  }

  unsupported(what: string): StackerError {
    return new StackerError(this.#code, `${this.file}: erofs image uses ${what}, which this reader does not support`, {
      hint: 'images made by mkfs.erofs 1.5 (uncompressed, or lz4/lz4hc) are supported',
    })
  }

  /** Where an uncompressed inode's content lies: its blocks, then (flat inline) a tail inside the
   *  metadata. Throws for compressed inodes. */
  flatRanges(inode: ErofsInode): FlatRange[] {
    const { blksz } = this.sb
    if (inode.size === 0) return []
    if (inode.layout !== LAYOUT_FLAT_PLAIN && inode.layout !== LAYOUT_FLAT_INLINE) {
      throw this.corrupt(`inode ${inode.nid} is not stored flat (layout ${inode.layout})`)
    }
    const blocks = Math.ceil(inode.size / blksz)
    const inBlocks = inode.layout === LAYOUT_FLAT_INLINE ? (blocks - 1) * blksz : inode.size
    const out: FlatRange[] = []
    if (inBlocks > 0) {
      const pos = inode.rawU * blksz
      if (pos + inBlocks > this.size) throw this.corrupt(`data of inode ${inode.nid} is past the end of the image`)
      out.push({ pos, length: inBlocks })
    }
    const tail = inode.size - inBlocks
    if (tail > 0) {
      // The kernel refuses inline data that crosses a block boundary.
      if ((inode.tailPos % blksz) + tail > blksz)
        throw this.corrupt(`inline data of inode ${inode.nid} crosses a block`)
      if (inode.tailPos + tail > this.size)
        throw this.corrupt(`data of inode ${inode.nid} is past the end of the image`)
      out.push({ pos: inode.tailPos, length: tail })
    }
    return out
  }

  /** The extents of a compressed inode, in file order, each a pcluster and the part of the file
   *  it holds. Checks that they cover the file from its start, in order, and lie in the image. */
  *extents(inode: ErofsInode): Generator<ErofsExtent> {
    const { nid, size } = inode
    if (size === 0) return
    const z = this.#zmap(inode)
    const lsize = 2 ** z.lclusterbits
    let head: { lcn: number; start: number; pblk: number; plain: boolean; cblkcnt: number } | undefined
    const finish = (h: NonNullable<typeof head>, end: number): ErofsExtent => {
      let blocks = 1
      if (!h.plain && z.bigPcluster) blocks = h.cblkcnt > 0 ? h.cblkcnt : lsize / this.sb.blksz
      else blocks = lsize / this.sb.blksz
      const plen = blocks * this.sb.blksz
      const pos = h.pblk * this.sb.blksz
      if (plen > MAX_PCLUSTER) throw this.corrupt(`inode ${nid} has a pcluster of ${plen} bytes`)
      if (pos + plen > this.size) throw this.corrupt(`a pcluster of inode ${nid} is past the end of the image`)
      const length = end - h.start
      if (h.plain && length > plen) throw this.corrupt(`an uncompressed extent of inode ${nid} overflows its pcluster`)
      return { start: h.start, length, pos, plen, compressed: !h.plain }
    }
    for (let lcn = 0; lcn < z.count; lcn++) {
      const e = z.entry(lcn)
      if (e.type === LC_NONHEAD) {
        if (!head) throw this.corrupt(`inode ${nid} starts with a non-head lcluster`)
        if (e.cblkcnt > 0) {
          if (lcn !== head.lcn + 1) throw this.corrupt(`inode ${nid} has a misplaced pcluster size`)
          head.cblkcnt = e.cblkcnt
        } else if (z.bigPcluster && !head.plain && lcn === head.lcn + 1) {
          throw this.corrupt(`inode ${nid} has a big pcluster without its size`)
        }
        if (e.lo !== undefined && e.lo !== lcn - head.lcn && e.cblkcnt === 0) {
          throw this.corrupt(`inode ${nid} has a non-head lcluster pointing elsewhere than its head`)
        }
        continue
      }
      if (e.lo === undefined || e.lo >= lsize) throw this.corrupt(`inode ${nid} has a bad lcluster offset`)
      const start = lcn * lsize + e.lo
      if (lcn === 0 && start !== 0) throw this.corrupt(`inode ${nid} does not start at its first lcluster`)
      if (start >= size) break
      if (head) yield finish(head, start)
      head = { lcn, start, pblk: e.pblk, plain: e.type === LC_PLAIN, cblkcnt: 0 }
    }
    if (!head) throw this.corrupt(`inode ${nid} has no extents`)
    yield finish(head, size)
  }

  #zmap(inode: ErofsInode): ZMap {
    const { nid, size } = inode
    const { blkszbits } = this.sb
    const headerPos = Math.ceil(inode.tailPos / 8) * 8
    const legacy = inode.layout === LAYOUT_COMPRESSED_LEGACY
    if (!legacy && inode.layout !== LAYOUT_COMPRESSED_COMPACT) {
      throw this.corrupt(`inode ${nid} is not compressed (layout ${inode.layout})`)
    }
    let advise = 0
    let lclusterbits = blkszbits
    // Like the kernel, a legacy index needs no map header unless the image may have big pclusters.
    if (!legacy || this.sb.featureIncompat & INCOMPAT_BIG_PCLUSTER) {
      const h = this.view(headerPos, 8)
      advise = h.readUInt16LE(4)
      const algorithm = h[6]! & 0xf
      const bits = h[7]!
      if (bits & 0x80) throw this.unsupported(`fragments (inode ${nid})`)
      if (advise & ~KNOWN_ADVISE) throw this.unsupported(`compression advice 0x${advise.toString(16)} (inode ${nid})`)
      if (algorithm !== ALGORITHM_LZ4) throw this.unsupported(`compression algorithm ${algorithm} (inode ${nid})`)
      lclusterbits = blkszbits + (bits & 7)
      if (!legacy && !(advise & ADVISE_BIG_PCLUSTER_1) !== !(advise & ADVISE_BIG_PCLUSTER_2)) {
        throw this.corrupt(`inode ${nid} has inconsistent big pcluster advice`)
      }
    }
    const bigPcluster = (advise & ADVISE_BIG_PCLUSTER_1) !== 0
    const count = Math.ceil(size / 2 ** lclusterbits)
    const entry = legacy
      ? this.#legacyIndex(inode, headerPos + 16, bigPcluster)
      : this.#compactIndex(inode, headerPos + 8, lclusterbits, bigPcluster, advise, count)
    return { lclusterbits, bigPcluster, count, entry }
  }

  /** Legacy indexes: 8 bytes per lcluster. */
  #legacyIndex(inode: ErofsInode, base: number, big: boolean): (lcn: number) => Lcluster {
    return (lcn) => {
      const di = this.view(base + lcn * 8, 8)
      const type = di.readUInt16LE(0) & 3
      if (type === LC_NONHEAD) {
        let d0 = di.readUInt16LE(4)
        let cblkcnt = 0
        if (d0 & D0_CBLKCNT) {
          if (!big) throw this.corrupt(`inode ${inode.nid} has a pcluster size without big pclusters`)
          cblkcnt = d0 & ~D0_CBLKCNT
          if (cblkcnt === 0) throw this.corrupt(`inode ${inode.nid} has an empty pcluster`)
          d0 = 1
        }
        return { type, lo: d0, pblk: 0, cblkcnt }
      }
      if (type !== LC_PLAIN && type !== LC_HEAD) throw this.unsupported(`lcluster type ${type} (inode ${inode.nid})`)
      return { type, lo: di.readUInt16LE(2), pblk: di.readUInt32LE(4), cblkcnt: 0 }
    }
  }

  /** Compact indexes: packs of 2 entries in 8 bytes (4B) or, for 4 KiB lclusters when advised,
   *  16 entries in 32 bytes (2B), each pack ending with a block address from which its heads'
   *  addresses follow. 4B packs come first up to 32-byte alignment, then 2B ones, then 4B. */
  #compactIndex(
    inode: ErofsInode,
    ebase: number,
    lclusterbits: number,
    big: boolean,
    advise: number,
    count: number,
  ): (lcn: number) => Lcluster {
    let initial4b = (32 - (ebase % 32)) / 4
    if (initial4b === 8) initial4b = 0
    const use2b = (advise & ADVISE_COMPACTED_2B) !== 0 && initial4b < count
    if (use2b && lclusterbits !== 12) throw this.corrupt(`inode ${inode.nid} has 2-byte indexes for large lclusters`)
    if (lclusterbits > 14) throw this.unsupported(`lclusters of 2^${lclusterbits} bytes (inode ${inode.nid})`)
    const compacted2b = use2b ? Math.floor((count - initial4b) / 16) * 16 : 0
    const lomask = 2 ** lclusterbits - 1
    return (lcn) => {
      let pos = ebase
      let shift = 2
      let i = lcn
      if (i >= initial4b) {
        pos += initial4b * 4
        i -= initial4b
        if (i < compacted2b) shift = 1
        else {
          pos += compacted2b * 2
          i -= compacted2b
        }
      }
      pos += i << shift
      const vcnt = shift === 2 ? 2 : 16
      const packSize = vcnt << shift
      const packStart = pos - (pos % packSize)
      const pack = Buffer.from(this.view(packStart, packSize))
      const encodebits = ((packSize - 4) * 8) / vcnt
      const decode = (k: number): [number, number] => {
        const bit = encodebits * k
        const v = pack.readUInt32LE(Math.min(bit >> 3, packSize - 4)) >>> (bit & 7)
        return [(v >>> lclusterbits) & 3, v & lomask]
      }
      let k = (pos - packStart) >> shift
      const [type, lo] = decode(k)
      if (type === LC_NONHEAD) {
        if (lo & D0_CBLKCNT) {
          if (!big) throw this.corrupt(`inode ${inode.nid} has a pcluster size without big pclusters`)
          const cblkcnt = lo & ~D0_CBLKCNT
          if (cblkcnt === 0) throw this.corrupt(`inode ${inode.nid} has an empty pcluster`)
          return { type, lo: 1, pblk: 0, cblkcnt }
        }
        // The last entry of a pack holds the distance forward, not back.
        return { type, lo: k + 1 === vcnt ? undefined : lo, pblk: 0, cblkcnt: 0 }
      }
      if (type !== LC_PLAIN && type !== LC_HEAD) throw this.unsupported(`lcluster type ${type} (inode ${inode.nid})`)
      // The pack's address is where its first new pcluster starts, less one without big
      // pclusters; each earlier head in the pack adds its pcluster's blocks.
      let nblk = big ? 0 : 1
      while (k > 0) {
        k--
        const [t, l] = decode(k)
        if (!big) {
          if (t === LC_NONHEAD) k -= l
          if (k >= 0) nblk++
        } else if (t === LC_NONHEAD) {
          if (l & D0_CBLKCNT) {
            k--
            nblk += l & ~D0_CBLKCNT
          } else if (l <= 1) throw this.corrupt(`inode ${inode.nid} has a bad lcluster distance`)
          else k -= l - 2
        } else nblk++
      }
      return { type, lo, pblk: pack.readUInt32LE(packSize - 4) + nblk, cblkcnt: 0 }
    }
  }

  /** What a directory lists, "." and ".." left out, in order, one block at a time (names are
   *  copies). Checks each entry's name and offsets. */
  *dirents(dir: ErofsInode): Generator<ErofsDirent[]> {
    if ((dir.mode & S_IFMT) !== S_IFDIR) throw this.corrupt(`inode ${dir.nid} is not a directory`)
    const { blksz } = this.sb
    let offset = 0
    for (const range of this.flatRanges(dir)) {
      for (let at = 0; at < range.length; at += blksz) {
        const len = Math.min(blksz, range.length - at)
        yield this.#direntBlock(this.view(range.pos + at, len), dir.nid, offset)
        offset += len
      }
    }
  }

  #direntBlock(block: Buffer, nid: number, offset: number): ErofsDirent[] {
    const bad = (why: string) => this.corrupt(`directory inode ${nid}, block at ${offset}: ${why}`)
    if (block.length < DIRENT) throw bad('too short for an entry')
    const first = block.readUInt16LE(8)
    if (first < DIRENT || first % DIRENT !== 0 || first > block.length) throw bad('bad first name offset')
    const count = first / DIRENT
    const out: ErofsDirent[] = []
    let prevEnd = first
    for (let i = 0; i < count; i++) {
      const start = block.readUInt16LE(i * DIRENT + 8)
      let end: number
      if (i + 1 < count) end = block.readUInt16LE((i + 1) * DIRENT + 8)
      else {
        // The last name runs to the end of the block's data or to a NUL.
        const nul = block.indexOf(0, start)
        end = nul >= 0 && nul < block.length ? nul : block.length
      }
      if (start !== prevEnd || end <= start || end > block.length) throw bad(`entry ${i} has a bad name offset`)
      if (end - start > MAX_NAME) throw bad(`entry ${i} has a name of ${end - start} bytes`)
      prevEnd = end
      const name = block.subarray(start, end)
      if (name.includes(0x2f) || name.includes(0)) throw bad(`entry ${i} has a name with "/" or NUL`)
      const isDot = name.length === 1 && name[0] === 0x2e
      const isDotDot = name.length === 2 && name[0] === 0x2e && name[1] === 0x2e
      if (isDot || isDotDot) continue
      const entryNid = block.readBigUInt64LE(i * DIRENT)
      if (entryNid > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`entry ${i} names inode ${entryNid}`)
      out.push({ nid: Number(entryNid), fileType: block[i * DIRENT + 10]!, name: Buffer.from(name) })
    }
    return out
  }

  /** Whether an entry's file type agrees with its inode's mode (an unknown type agrees with all). */
  typeMatches(entry: ErofsDirent, inode: ErofsInode): boolean {
    return entry.fileType === 0 || FT_OF_MODE.get(inode.mode & S_IFMT) === entry.fileType
  }

  /** An inode's xattrs, shared ones first as the kernel lists them, names with their prefixes. */
  xattrs(inode: ErofsInode): Array<[string, Buffer]> {
    if (inode.xattrSize === 0) return []
    const { nid } = inode
    const body = Buffer.from(this.view(inode.xattrPos, inode.xattrSize))
    const shared = body[4]!
    let at = XATTR_IBODY_HEADER + shared * 4
    if (at > body.length) throw this.corrupt(`inode ${nid} lists ${shared} shared xattrs in ${body.length} bytes`)
    const out: Array<[string, Buffer]> = []
    for (let i = 0; i < shared; i++) {
      const pos = this.sb.xattrStart + body.readUInt32LE(XATTR_IBODY_HEADER + i * 4) * 4
      const head = Buffer.from(this.view(pos, XATTR_ENTRY))
      const entry = this.view(pos, XATTR_ENTRY + head[0]! + head.readUInt16LE(2))
      this.#xattrEntry(entry, nid, out)
    }
    while (at < body.length) {
      if (at + XATTR_ENTRY > body.length) throw this.corrupt(`inode ${nid} has a truncated xattr entry`)
      const len = XATTR_ENTRY + body[at]! + body.readUInt16LE(at + 2)
      if (at + len > body.length) throw this.corrupt(`inode ${nid} has an xattr entry past its xattr body`)
      this.#xattrEntry(body.subarray(at, at + len), nid, out)
      at += Math.ceil(len / 4) * 4
    }
    return out
  }

  #xattrEntry(entry: Buffer, nid: number, out: Array<[string, Buffer]>): void {
    const nameLen = entry[0]!
    const index = entry[1]!
    if (index === XATTR_INDEX_LUSTRE) return
    const prefix = XATTR_PREFIXES[index]
    if (prefix === undefined) {
      if (index & 0x80) throw this.unsupported(`long xattr name prefixes (inode ${nid})`)
      throw this.corrupt(`inode ${nid} has an xattr of unknown name index ${index}`)
    }
    const suffix = entry.subarray(XATTR_ENTRY, XATTR_ENTRY + nameLen)
    if (suffix.includes(0)) throw this.corrupt(`inode ${nid} has an xattr name with NUL`)
    if ((index === 2 || index === 3) !== (nameLen === 0)) throw this.corrupt(`inode ${nid} has a bad xattr name`)
    out.push([prefix + suffix.toString('latin1'), Buffer.from(entry.subarray(XATTR_ENTRY + nameLen))])
  }
}

/** lcluster types of compression indexes. */
const LC_PLAIN = 0
const LC_HEAD = 1
const LC_NONHEAD = 2
/** Marks the first non-head lcluster of a big pcluster: its low bits count the pcluster's blocks. */
const D0_CBLKCNT = 1 << 11
const ADVISE_COMPACTED_2B = 0x1
const ADVISE_BIG_PCLUSTER_1 = 0x2
const ADVISE_BIG_PCLUSTER_2 = 0x4
const KNOWN_ADVISE = ADVISE_COMPACTED_2B | ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2
const ALGORITHM_LZ4 = 0
/** The kernel's limit on a physical cluster. */
const MAX_PCLUSTER = 1 << 20

/** One logical cluster's index entry. `lo` is the head's offset in the lcluster, or for a
 *  non-head its distance back to the head (undefined where the compact format keeps the distance
 *  forward instead). */
interface Lcluster {
  type: number
  lo: number | undefined
  /** Where a head's pcluster starts, in blocks. */
  pblk: number
  /** A big pcluster's size in blocks, from its first non-head lcluster. */
  cblkcnt: number
}

/** How a compressed inode maps its content. */
interface ZMap {
  lclusterbits: number
  bigPcluster: boolean
  count: number
  entry(lcn: number): Lcluster
}

function parseSuperblock(raw: Buffer, file: string, code: StackerErrorCode, size: number): ErofsSuperblock {
  const bad = (why: string) => new StackerError(code, `${file}: malformed erofs image: ${why}`)
  const blkszbits = raw.readUInt8(12)
  // mkfs.erofs 1.5 writes 4 KiB blocks; the kernel reads 512 B to 64 KiB.
  if (blkszbits < 9 || blkszbits > 16) throw bad(`block size 2^${blkszbits}`)
  const blksz = 2 ** blkszbits
  const featureIncompat = raw.readUInt32LE(80)
  const unknown = featureIncompat & ~KNOWN_INCOMPAT
  if (unknown !== 0) {
    const names = Object.entries(INCOMPAT_NAMES)
      .filter(([bit]) => unknown & Number(bit))
      .map(([, n]) => n)
    const what = names.length > 0 ? names.join(', ') : `incompatible features 0x${unknown.toString(16)}`
    throw new StackerError(code, `${file}: erofs image uses ${what}, which this reader does not support`, {
      hint: 'images made by mkfs.erofs 1.5 (uncompressed, or lz4/lz4hc) are supported',
    })
  }
  const metaStart = raw.readUInt32LE(40) * blksz
  const xattrStart = raw.readUInt32LE(44) * blksz
  if (metaStart >= size) throw bad('the inode area is past the end of the image')
  return {
    blkszbits,
    blksz,
    rootNid: raw.readUInt16LE(14),
    inodeCount: Number(raw.readBigUInt64LE(16)),
    buildTime: Number(raw.readBigInt64LE(24)),
    buildTimeNsec: raw.readUInt32LE(32),
    featureIncompat,
    metaStart,
    xattrStart,
  }
}

/** The kernel refuses an image whose superblock checksum (when it has one) does not match. */
function checkSuperblockChecksum(fd: number, raw: Buffer, sb: ErofsSuperblock, file: string, code: StackerErrorCode) {
  if ((raw.readUInt32LE(8) & COMPAT_SB_CHKSUM) === 0) return
  const block = Buffer.alloc(sb.blksz > EROFS_SUPER_OFFSET ? sb.blksz - EROFS_SUPER_OFFSET : sb.blksz)
  if (readSync(fd, block, 0, block.length, EROFS_SUPER_OFFSET) !== block.length) {
    throw new StackerError(code, `${file}: malformed erofs image: truncated superblock block`)
  }
  const stored = block.readUInt32LE(4)
  block.writeUInt32LE(0, 4)
  if (crc32c(0xffffffff, block) !== stored) {
    throw new StackerError(code, `${file}: malformed erofs image: superblock checksum mismatch`)
  }
}

/** The kind of file an inode's mode says. */
export function fileKind(mode: number): 'dir' | 'file' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket' {
  switch (mode & S_IFMT) {
    case S_IFDIR:
      return 'dir'
    case S_IFREG:
      return 'file'
    case S_IFLNK:
      return 'symlink'
    case S_IFCHR:
      return 'char'
    case S_IFBLK:
      return 'block'
    case S_IFIFO:
      return 'fifo'
    default:
      return 'socket'
  }
}

export { INCOMPAT_LZ4_0PADDING, INCOMPAT_BIG_PCLUSTER }
