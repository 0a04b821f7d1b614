import { randomBytes } from 'node:crypto'
import { readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { type Logger, onCleanup, StackerError, silentLogger } from '@stacker/core'
import { Annotations } from '@stacker/oci'
import { run, stringEnv } from './exec.js'
import { type FsImageKind, fsImageMediaType } from './media-types.js'
import { clampErofsTimes } from './erofs-times.js'
import { findLongName, stripOverlayXattrs, supportsXattrs } from './scan.js'
import { zeroErofsBuildTime } from './superblock.js'
import { appendVerity } from './verity.js'

/** Options of writeFsImage. */
export interface FsImageOptions {
  /** The filesystem to write. */
  kind: FsImageKind
  /** Append a dm-verity hash tree and report its root hash (upstream's default). */
  verity: boolean
  /** Clamps mtimes as the tar writer does (later ones become it, all are whole seconds; the root
   *  directory too) and sets the filesystem's creation time. Without it, erofs keeps every mtime to
   *  the nanosecond and squashfs to the second. */
  sourceDateEpoch?: number
  /** squashfs zstd: 1-22, default 3. squashfs gzip: 1-9, default mksquashfs's 9.
   *  erofs: 1-12 selects lz4hc at that level; 0 writes uncompressed (upstream's erofs);
   *  default lz4. */
  compressionLevel?: number
  /** Build an image of an empty root when `dir` is empty, instead of nothing. */
  allowEmpty?: boolean
  /** Receives the tools' debug lines. Default: dropped. */
  logger?: Logger
}

/** An image writeFsImage made. */
export interface FsImageResult {
  /** The finished image (with verity appended), in outDir. The caller owns it: rename or remove it. */
  file: string
  /** The layer media type for its descriptor (see fsImageMediaType). */
  mediaType: string
  /** Size of `file` in bytes, verity data included. */
  size: number
  /** The dm-verity root hash (hex), with `verity: true`. */
  verityRootHash?: string
  /** Where the verity data starts (the filesystem size rounded up to 4096). */
  verityHashOffset?: number
  /** Descriptor annotations: the verity root hash when verity is on, else none. */
  annotations: Record<string, string>
}

/** The default zstd level. Measured on a mixed tree (see the package README): level 15 (upstream's,
 *  mksquashfs's default) takes 10-17x as long as 3 for output 1.6% (mixed) to 15% (text) smaller. */
export const DEFAULT_SQUASHFS_ZSTD_LEVEL = 3

/** A fixed erofs UUID. Images must not depend on when or where they were built; layers are told
 *  apart by digest, never by filesystem UUID. */
export const EROFS_UUID = '5eb0c0fe-57ac-4e4f-8000-000000000000'

/** Names what decides an erofs image's bytes besides mkfs.erofs and the options (how times are
 *  clamped and truncated): a projection record of a blob another writer made must not stand for
 *  one this writer makes. Changes whenever the same tree would give other bytes. */
export const EROFS_WRITER_ID = 'erofs2'

/** Builds an image of `dir` into a new file inside `outDir` (on the blob store's filesystem so the
 *  caller can rename it in). Returns undefined, creating nothing, if `dir` is empty.
 *  Deterministic: the same tree, options and tool versions give the same bytes, verity included.
 *  Whiteouts stay overlayfs-native (0:0 char devices, `overlay.opaque` xattrs); overlayfs
 *  bookkeeping xattrs are removed from `dir` first (see stripOverlayXattrs); nothing else in `dir`
 *  is changed. Ownership is kept as on disk. The output file is removed on failure. */
export async function writeFsImage(
  dir: string,
  outDir: string,
  opts: FsImageOptions,
): Promise<FsImageResult | undefined> {
  const logger = opts.logger ?? silentLogger
  if (!opts.allowEmpty && (await readdir(dir)).length === 0) return undefined
  if (opts.sourceDateEpoch !== undefined) checkEpoch(opts.sourceDateEpoch)
  const stripped = await stripOverlayXattrs(dir)
  if (stripped > 0) logger.debug('removed overlay bookkeeping xattrs', { dir, count: stripped })

  const file = join(outDir, `.fsimage-${process.pid}-${randomBytes(6).toString('hex')}.${opts.kind}`)
  const unregister = onCleanup(() => rm(file, { force: true }))
  try {
    const mediaType =
      opts.kind === 'squashfs' ? await buildSquashfs(dir, file, opts) : await buildErofs(dir, file, opts)
    const annotations: Record<string, string> = {}
    const result: FsImageResult = { file, mediaType, size: 0, annotations }
    if (opts.verity) {
      const { rootHash, hashOffset } = await appendVerity(file)
      result.verityRootHash = rootHash
      result.verityHashOffset = hashOffset
      annotations[Annotations.verityRootHash] = rootHash
    }
    result.size = (await stat(file)).size
    logger.debug(`built ${opts.kind} image`, { dir, size: result.size, mediaType })
    return result
  } catch (e) {
    await rm(file, { force: true })
    throw e
  } finally {
    unregister()
  }
}

async function buildSquashfs(dir: string, file: string, opts: FsImageOptions): Promise<string> {
  const comp = await squashfsCompression()
  const level = opts.compressionLevel ?? (comp === 'zstd' ? DEFAULT_SQUASHFS_ZSTD_LEVEL : undefined)
  if (level !== undefined) checkLevel(`squashfs ${comp}`, level, 1, comp === 'zstd' ? 22 : 9)
  const env = stringEnv(process.env)
  // mksquashfs reads SOURCE_DATE_EPOCH itself and clamps file times to it (its own semantics,
  // root dir included); it refuses -mkfs-time alongside it, so exactly one of the two is given.
  delete env['SOURCE_DATE_EPOCH']
  const args = [dir, file, '-noappend', '-no-progress', '-quiet', '-reproducible', '-exit-on-error', '-xattrs']
  args.push('-comp', comp)
  if (level !== undefined) args.push('-Xcompression-level', String(level))
  if (opts.sourceDateEpoch !== undefined) env['SOURCE_DATE_EPOCH'] = String(opts.sourceDateEpoch)
  else args.push('-mkfs-time', '0')
  await run('mksquashfs', args, { code: 'LAYER', env })
  return fsImageMediaType('squashfs', comp)
}

/** mkfs.erofs 1.5 keeps a name in a 255-byte buffer with its terminating NUL: it cuts a 255-byte
 *  name to 254 bytes and then fails to find the file, or, when a file has that shorter name too,
 *  stores that file twice and loses the other one. */
const EROFS_MAX_NAME = 254

async function buildErofs(dir: string, file: string, opts: FsImageOptions): Promise<string> {
  const level = opts.compressionLevel
  const args = ['--quiet', `-U${EROFS_UUID}`]
  // mkfs.erofs 1.5 fails on a source without xattr support unless xattrs are turned off.
  if (!supportsXattrs(dir)) args.push('-x-1')
  if (level === undefined) args.push('-zlz4')
  else if (level !== 0) {
    checkLevel('erofs lz4hc', level, 1, 12)
    args.push(`-zlz4hc,${level}`)
  }
  const long = await findLongName(dir, EROFS_MAX_NAME)
  if (long) {
    throw new StackerError(
      'LAYER',
      `erofs cannot hold the ${long.bytes}-byte file name of ${long.path} (this mkfs.erofs stores at most ${EROFS_MAX_NAME} bytes); use another --layer-type, such as squashfs or tar`,
    )
  }
  const env = stringEnv(process.env)
  delete env['SOURCE_DATE_EPOCH']
  // With SOURCE_DATE_EPOCH in its environment, mkfs.erofs 1.5 makes it the build time, clamps later
  // mtimes to it and writes every inode extended (with a time of its own); -T would instead give
  // every file that time. Extended inodes are also asked for explicitly: the image's layout must
  // not depend on whether a file's time happened to equal the build time before clamping.
  if (opts.sourceDateEpoch !== undefined) {
    env['SOURCE_DATE_EPOCH'] = String(opts.sourceDateEpoch)
    args.push('-Eforce-inode-extended')
  }
  args.push(file, dir)
  await run('mkfs.erofs', args, { code: 'LAYER', env })
  if (opts.sourceDateEpoch === undefined) zeroErofsBuildTime(file)
  else await clampErofsTimes(file, opts.sourceDateEpoch)
  return fsImageMediaType('erofs', 'lz4hc')
}

function checkLevel(what: string, level: number, min: number, max: number): void {
  if (!Number.isInteger(level) || level < min || level > max) {
    throw new StackerError('USAGE', `invalid ${what} compression level ${level} (${min}-${max})`)
  }
}

function checkEpoch(sde: number): void {
  // Both tools store 32-bit unsigned seconds.
  if (!Number.isInteger(sde) || sde < 0 || sde > 0xffffffff) {
    throw new StackerError(
      'USAGE',
      `invalid SOURCE_DATE_EPOCH value ${JSON.stringify(String(sde))} for a filesystem image`,
    )
  }
}

let compression: Promise<'zstd' | 'gzip'> | undefined

/** The compressor squashfs layers are written with: zstd when `mksquashfs -help` lists it, else
 *  gzip. Detected once per process; a failed detection is retried on the next call. */
export function squashfsCompression(): Promise<'zstd' | 'gzip'> {
  compression ??= detectCompression().catch((e: unknown) => {
    compression = undefined
    throw e
  })
  return compression
}

async function detectCompression(): Promise<'zstd' | 'gzip'> {
  // -help exits 0 on 4.5 and non-zero on older versions; only the text matters.
  const { execa } = await import('execa')
  const r = await execa('mksquashfs', ['-help'], { reject: false, all: true, stdin: 'ignore' })
  if (r.code === 'ENOENT') {
    throw new StackerError('TOOL_MISSING', 'mksquashfs not found', { hint: 'install squashfs-tools' })
  }
  return /\bzstd\b/.test(String(r.all ?? '')) ? 'zstd' : 'gzip'
}
