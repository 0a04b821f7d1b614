import { setImmediate } from 'node:timers/promises'
import { ErofsImage, S_IFDIR } from './erofs-image.js'
import { sealErofsSuperblock } from './superblock.js'

const S_IFMT = 0o170000
const FT_DIR = 2
const YIELD_EVERY = 4096

/** Makes an erofs image's times what a tar layer of the same tree records: every mtime later than
 *  `sourceDateEpoch` becomes it, every mtime loses its fraction of a second, and the build time is
 *  `sourceDateEpoch`. mkfs.erofs (run with SOURCE_DATE_EPOCH, which makes every inode extended and
 *  clamps) keeps the nanoseconds of older times, and only extended inodes carry a time of their
 *  own: a compact one takes the build time, which is already right. Edits the image in place,
 *  before verity data is added; the layout does not change. Idempotent. Every inode a path
 *  reaches from the root is changed, none other. */
export async function clampErofsTimes(file: string, sourceDateEpoch: number): Promise<void> {
  const img = ErofsImage.open(file, { writable: true, code: 'LAYER' })
  try {
    const isDir = (mode: number) => (mode & S_IFMT) === S_IFDIR
    const { rootNid, inodeCount } = img.sb

    // Inodes are not laid out in any order a walk of the tree follows, so the walk only lists them
    // (it reads directories alone) and they are then changed in the order they lie in the image:
    // each metadata block is read once. A hardlinked file is listed once per link.
    const nids: number[] = [rootNid]
    const dirs = new Set([rootNid])
    const pending = [rootNid]
    let sinceYield = 0
    while (pending.length > 0) {
      const nid = pending.pop()!
      const dir = img.inode(nid)
      if (!isDir(dir.mode)) throw img.corrupt(`inode ${nid} is listed as a directory`)
      for (const block of img.dirents(dir)) {
        for (const { nid: child, fileType } of block) {
          nids.push(child)
          if (fileType !== FT_DIR) continue
          if (dirs.has(child) || dirs.size >= inodeCount) throw img.corrupt('the directory tree has a cycle')
          dirs.add(child)
          pending.push(child)
        }
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
      const inode = img.inode(nid)
      // A directory whose entry said otherwise would have gone unread, its files unchanged.
      if (isDir(inode.mode) !== dirs.has(nid)) throw img.corrupt(`inode ${nid} has another type than its entry`)
      if (inode.extended) {
        const at = inode.pos + 32
        const old = img.view(at, 12)
        if (inode.mtime > sourceDateEpoch) {
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
    sealErofsSuperblock(img.fd, file, (s) => {
      s.writeBigUInt64LE(BigInt(sourceDateEpoch), 24)
      s.writeUInt32LE(0, 32)
    })
  } finally {
    img.close()
  }
}
