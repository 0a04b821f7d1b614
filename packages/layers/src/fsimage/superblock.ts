import { closeSync, openSync, readSync, writeSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { StackerError } from '@stacker/core'
import type { FsImageKind } from './media-types.js'

export const VERITY_BLOCK = 4096

const SQUASHFS_MAGIC = 0x73717368 // "hsqs"
export const EROFS_SUPER_OFFSET = 1024
export const EROFS_MAGIC = 0xe0f5e1e2
const EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x1

export function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to
}

async function readAt(file: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(file, 'r')
  try {
    const buf = Buffer.alloc(length)
    const { bytesRead } = await fh.read(buf, 0, length, position)
    return buf.subarray(0, bytesRead)
  } finally {
    await fh.close()
  }
}

/** The filesystem in an image file, from its magic; undefined when neither matches. */
export async function detectFsImageKind(file: string): Promise<FsImageKind | undefined> {
  const head = await readAt(file, 0, EROFS_SUPER_OFFSET + 4)
  if (head.length >= 4 && head.readUInt32LE(0) === SQUASHFS_MAGIC) return 'squashfs'
  if (head.length >= EROFS_SUPER_OFFSET + 4 && head.readUInt32LE(EROFS_SUPER_OFFSET) === EROFS_MAGIC) return 'erofs'
  return undefined
}

/** The bytes the filesystem itself occupies, rounded up to 4096: where verity data starts.
 *  Read from the superblock (squashfs bytes_used; erofs blocks << blkszbits), so it is right for
 *  an image with or without verity data appended. Throws LAYER if the superblock does not match. */
export async function fsImageDataSize(file: string, kind: FsImageKind): Promise<number> {
  if (kind === 'squashfs') {
    const sb = await readAt(file, 0, 96)
    if (sb.length < 96 || sb.readUInt32LE(0) !== SQUASHFS_MAGIC) {
      throw new StackerError('LAYER', `${file} is not a squashfs image`)
    }
    return roundUp(Number(sb.readBigUInt64LE(40)), VERITY_BLOCK)
  }
  const sb = await readAt(file, EROFS_SUPER_OFFSET, 128)
  if (sb.length < 128 || sb.readUInt32LE(0) !== EROFS_MAGIC) {
    throw new StackerError('LAYER', `${file} is not an erofs image`)
  }
  const blkszbits = sb.readUInt8(12)
  if (blkszbits < 9 || blkszbits > 16) throw new StackerError('LAYER', `${file}: bad erofs block size 2^${blkszbits}`)
  return roundUp(sb.readUInt32LE(36) * 2 ** blkszbits, VERITY_BLOCK)
}

/** Zeroes the build time in an erofs superblock and fixes its checksum: an image made without
 *  SOURCE_DATE_EPOCH keeps per-file mtimes and is still reproducible (mkfs.erofs stamps the time it
 *  ran at, with microseconds). Inodes whose mtime equals that time are stored compact and inherit
 *  it, so this is only exact when no file has the mtime mkfs ran at, to the microsecond (files are
 *  not changed while an image is built). */
export function zeroErofsBuildTime(file: string): void {
  const fd = openSync(file, 'r+')
  try {
    sealErofsSuperblock(fd, file, (sb) => {
      sb.writeBigUInt64LE(0n, 24)
      sb.writeUInt32LE(0, 32)
    })
  } finally {
    closeSync(fd)
  }
}

/** Lets `edit` change the erofs superblock of the image open as `fd`, then recomputes the checksum,
 *  which covers the rest of the first block (inodes may live there, so call this after editing
 *  them). `edit` gets the superblock's bytes from its start to the end of the block. */
export function sealErofsSuperblock(fd: number, file: string, edit: (sb: Buffer) => void): void {
  const head = Buffer.alloc(EROFS_SUPER_OFFSET + 128)
  readSync(fd, head, 0, head.length, 0)
  const sb = head.subarray(EROFS_SUPER_OFFSET)
  if (sb.readUInt32LE(0) !== EROFS_MAGIC) throw new StackerError('LAYER', `${file} is not an erofs image`)
  const blksz = 2 ** sb.readUInt8(12)
  const block = Buffer.alloc(blksz)
  if (readSync(fd, block, 0, blksz, 0) !== blksz) throw new StackerError('LAYER', `${file}: truncated erofs image`)
  const dsb = block.subarray(EROFS_SUPER_OFFSET)
  edit(dsb)
  if (dsb.readUInt32LE(8) & EROFS_FEATURE_COMPAT_SB_CHKSUM) {
    dsb.writeUInt32LE(0, 4)
    dsb.writeUInt32LE(crc32c(0xffffffff, dsb), 4)
  }
  writeSync(fd, dsb, 0, dsb.length, EROFS_SUPER_OFFSET)
}

let table: Uint32Array | undefined

/** CRC-32C (Castagnoli) without the final inversion, as erofs computes its superblock checksum. */
export function crc32c(seed: number, data: Uint8Array): number {
  if (!table) {
    table = new Uint32Array(256)
    for (let i = 0; i < 256; i++) {
      let c = i
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
      table[i] = c >>> 0
    }
  }
  let crc = seed >>> 0
  for (const b of data) crc = (table[(crc ^ b) & 0xff]! ^ (crc >>> 8)) >>> 0
  return crc
}
