import { closeSync, openSync, readSync, writeSync } from 'node:fs'
import { setImmediate } from 'node:timers/promises'
import { StackerError } from '@stacker/core'
import { EROFS_MAGIC, EROFS_SUPER_OFFSET, sealErofsSuperblock } from './superblock.js'

/** On-disk erofs structures, as the kernel's fs/erofs/erofs_fs.h lays them out. */
const COMPACT_INODE = 32
const EXTENDED_INODE = 64
const XATTR_IBODY_HEADER = 12
const DIRENT = 12
const FT_DIR = 2
const LAYOUT_FLAT_PLAIN = 0
const LAYOUT_FLAT_INLINE = 2
const S_IFMT = 0o170000
const S_IFDIR = 0o040000

/** The cache reads 64 KiB at a time and keeps 1 MiB. Inodes are visited in the order they lie in
 *  the image, so it mostly serves the chunk just read: inline file data makes metadata sparse, and
 *  a read per 4 KiB block costs several times as much. */
const CHUNK = 64 << 10
const CACHED_CHUNKS = 16
const YIELD_EVERY = 4096

interface Inode {
  pos: number
  extended: boolean
  layout: number
  mode: number
  size: number
  rawBlkaddr: number
  /** Where inline data (a directory's last partial block) starts. */
  inlinePos: number
}

interface Chunk {
  buf: Buffer
  /** Bytes of the file it holds: less than CHUNK at the end of the file. */
  length: number
  dirty: boolean
}

/** Cached positional reads and writes on an open image. Changed chunks are written back when
 *  evicted and by `flush`. */
class ImageFile {
  readonly #cache = new Map<number, Chunk>()
  #lastN = -1
  #last: Chunk | undefined

  constructor(
    readonly fd: number,
    readonly file: string,
  ) {}

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
    if (writeSync(this.fd, c.buf, 0, c.length, n * CHUNK) !== c.length) throw corrupt(this.file, 'short write')
    c.dirty = false
  }

  /** `len` bytes at `pos`, to be read before the next call: a view of the cache when they lie in
   *  one chunk, else a copy. */
  view(pos: number, len: number): Buffer {
    const off = pos % CHUNK
    if (off + len <= CHUNK) {
      const c = this.#chunk((pos - off) / CHUNK)
      if (off + len > c.length) throw corrupt(this.file, `${len} bytes at ${pos} are past the end of the image`)
      return c.buf.subarray(off, off + len)
    }
    const out = Buffer.alloc(len)
    for (let done = 0; done < len; )
      done += this.view(pos + done, Math.min(len - done, CHUNK - ((pos + done) % CHUNK))).copy(out, done)
    return out
  }

  write(pos: number, data: Buffer): void {
    for (let done = 0; done < data.length; ) {
      const off = (pos + done) % CHUNK
      const c = this.#chunk((pos + done - off) / CHUNK)
      const n = Math.min(data.length - done, CHUNK - off)
      if (off + n > c.length) throw corrupt(this.file, `write at ${pos + done} is past the end of the image`)
      done += data.copy(c.buf, off, done, done + n)
      c.dirty = true
    }
  }

  flush(): void {
    for (const [n, c] of this.#cache) if (c.dirty) this.#writeBack(n, c)
  }
}

function corrupt(file: string, why: string): StackerError {
  return new StackerError('LAYER', `${file}: unexpected erofs metadata: ${why}`)
}

function readInode(img: ImageFile, metaStart: number, nid: number): Inode {
  const pos = metaStart + nid * COMPACT_INODE
  const head = img.view(pos, COMPACT_INODE)
  const format = head.readUInt16LE(0)
  const extended = (format & 1) === 1
  const icount = head.readUInt16LE(2)
  const xattrSize = icount === 0 ? 0 : XATTR_IBODY_HEADER + (icount - 1) * 4
  return {
    pos,
    extended,
    layout: (format >> 1) & 0x7,
    mode: head.readUInt16LE(4),
    size: extended ? Number(head.readBigUInt64LE(8)) : head.readUInt32LE(8),
    rawBlkaddr: head.readUInt32LE(16),
    inlinePos: pos + (extended ? EXTENDED_INODE : COMPACT_INODE) + xattrSize,
  }
}

/** What a directory lists, "." and ".." left out: each entry's inode number and whether its type
 *  says directory. */
function* children(img: ImageFile, blksz: number, dir: Inode, nid: number): Generator<[number, boolean]> {
  const { file } = img
  if (dir.layout !== LAYOUT_FLAT_PLAIN && dir.layout !== LAYOUT_FLAT_INLINE) {
    throw corrupt(file, `directory inode ${nid} has data layout ${dir.layout}`)
  }
  const tail = dir.layout === LAYOUT_FLAT_INLINE ? dir.size % blksz : 0
  const blocks = Math.ceil((dir.size - tail) / blksz)
  for (let i = 0; i < blocks; i++) {
    yield* dirents(img, img.view((dir.rawBlkaddr + i) * blksz, Math.min(blksz, dir.size - i * blksz)), nid)
  }
  if (tail > 0) yield* dirents(img, img.view(dir.inlinePos, tail), nid)
}

/** Entries of one directory block. `block` must stay valid while they are read: the caller reads
 *  no other block meanwhile. */
function* dirents(img: ImageFile, block: Buffer, nid: number): Generator<[number, boolean]> {
  const first = block.length >= DIRENT ? block.readUInt16LE(8) : 0
  if (first < DIRENT || first % DIRENT !== 0 || first > block.length) {
    throw corrupt(img.file, `directory inode ${nid} has a bad entry block`)
  }
  const count = first / DIRENT
  for (let i = 0; i < count; i++) {
    const start = block.readUInt16LE(i * DIRENT + 8)
    let end = i + 1 < count ? block.readUInt16LE((i + 1) * DIRENT + 8) : block.length
    const nul = block.indexOf(0, start)
    if (i + 1 === count && nul >= 0 && nul < end) end = nul
    if (start < first || end < start || end > block.length) {
      throw corrupt(img.file, `directory inode ${nid} has a bad entry name offset`)
    }
    const len = end - start
    if (len === 1 && block[start] === 0x2e) continue
    if (len === 2 && block[start] === 0x2e && block[start + 1] === 0x2e) continue
    yield [Number(block.readBigUInt64LE(i * DIRENT)), block[i * DIRENT + 10] === FT_DIR]
  }
}

/** Makes an erofs image's times what a tar layer of the same tree records: every mtime later than
 *  `sourceDateEpoch` becomes it, every mtime loses its fraction of a second, and the build time is
 *  `sourceDateEpoch`. mkfs.erofs (run with SOURCE_DATE_EPOCH, which makes every inode extended and
 *  clamps) keeps the nanoseconds of older times, and only extended inodes carry a time of their
 *  own: a compact one takes the build time, which is already right. Edits the image in place,
 *  before verity data is added; the layout does not change. Idempotent. Every inode a path
 *  reaches from the root is changed, none other. */
export async function clampErofsTimes(file: string, sourceDateEpoch: number): Promise<void> {
  const fd = openSync(file, 'r+')
  try {
    const sb = Buffer.alloc(128)
    readSync(fd, sb, 0, sb.length, EROFS_SUPER_OFFSET)
    if (sb.readUInt32LE(0) !== EROFS_MAGIC) throw new StackerError('LAYER', `${file} is not an erofs image`)
    const blkszbits = sb.readUInt8(12)
    if (blkszbits < 9 || blkszbits > 16) throw corrupt(file, `block size 2^${blkszbits}`)
    const blksz = 2 ** blkszbits
    const img = new ImageFile(fd, file)
    const metaStart = sb.readUInt32LE(40) * blksz
    const inodeCount = Number(sb.readBigUInt64LE(16))
    const isDir = (inode: Inode) => (inode.mode & S_IFMT) === S_IFDIR

    // Inodes are not laid out in any order a walk of the tree follows, so the walk only lists them
    // (it reads directories alone) and they are then changed in the order they lie in the image:
    // each metadata block is read once. A hardlinked file is listed once per link.
    const rootNid = sb.readUInt16LE(14)
    const nids: number[] = [rootNid]
    const dirs = new Set([rootNid])
    const pending = [rootNid]
    let sinceYield = 0
    while (pending.length > 0) {
      const nid = pending.pop()!
      const dir = readInode(img, metaStart, nid)
      if (!isDir(dir)) throw corrupt(file, `inode ${nid} is listed as a directory`)
      for (const [child, childIsDir] of children(img, blksz, dir, nid)) {
        nids.push(child)
        if (!childIsDir) continue
        if (dirs.has(child) || dirs.size >= inodeCount) throw corrupt(file, 'the directory tree has a cycle')
        dirs.add(child)
        pending.push(child)
      }
      sinceYield += dir.size
      if (sinceYield >= YIELD_EVERY * 64) {
        sinceYield = 0
        await setImmediate()
      }
    }

    const time = Buffer.alloc(12)
    const sorted = Float64Array.from(nids).sort()
    for (let i = 0; i < sorted.length; i++) {
      const nid = sorted[i]!
      if (i > 0 && nid === sorted[i - 1]) continue
      const inode = readInode(img, metaStart, nid)
      // A directory whose entry said otherwise would have gone unread, its files unchanged.
      if (isDir(inode) !== dirs.has(nid)) throw corrupt(file, `inode ${nid} has another type than its entry`)
      if (inode.extended) {
        const at = inode.pos + 32
        const old = img.view(at, 12)
        // Seconds as a signed 64-bit number, exact in a double for any time a file can have.
        const mtime = old.readInt32LE(4) * 2 ** 32 + old.readUInt32LE(0)
        if (mtime > sourceDateEpoch) {
          time.writeUInt32LE(sourceDateEpoch, 0)
          time.writeUInt32LE(0, 4)
        } else old.copy(time, 0, 0, 8)
        time.writeUInt32LE(0, 8)
        if (!time.equals(old)) img.write(at, time)
      }
      if (++sinceYield >= YIELD_EVERY) {
        sinceYield = 0
        await setImmediate()
      }
    }
    img.flush()
    sealErofsSuperblock(fd, file, (s) => {
      s.writeBigUInt64LE(BigInt(sourceDateEpoch), 24)
      s.writeUInt32LE(0, 32)
    })
  } finally {
    closeSync(fd)
  }
}
