import { constants as fsConstants, type BigIntStats, type Dirent } from 'node:fs'
import { lstat, open, readdir, readlink } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { getAttribute, listAttributes } from '@napi-rs/xattr'
import { type Digest, Hasher, type Logger, silentLogger, StackerError } from '@stacker/core'
import { Annotations, type Descriptor, MediaTypes } from '@stacker/oci'
import { encodeHeader, END_OF_ARCHIVE, padding, type TarEntryType, type TarHeader } from './format.js'
import {
  isOverlayWhiteout,
  isOverlayXattr,
  OPAQUE_WHITEOUT,
  OVERLAY_OPAQUE_XATTR,
  splitDev,
  WHITEOUT_PREFIX,
} from './overlay.js'
import { type Compression, rechunk, throughProgram } from './streams.js'

/** Where a layer's compressed bytes go. `commit` makes the blob durable and returns its digest
 *  and size; `abort` discards everything written. Exactly one of the two is called, once.
 *  An OCI layout's blob writer fits as is. */
export interface BlobSink {
  write(chunk: Uint8Array): Promise<void>
  commit(): Promise<{ digest: Digest; size: number }>
  abort(): Promise<void>
}

export interface TarStreamOptions {
  /** Mtimes newer than this (seconds) are clamped to it. */
  sourceDateEpoch?: number
  logger?: Logger
}

export interface TarLayerOptions extends TarStreamOptions {
  compression: Compression
  /** gzip 1-9 (default 6); zstd 1-22 (default 3). */
  level?: number
  /** Compressor threads (default: the CPU count). The output does not depend on it: pigz cuts its
   *  input into the same blocks whatever the thread count, and zstd does the same. */
  threads?: number
  /** Called with the running count of uncompressed tar bytes produced. */
  onProgress?: (bytes: number) => void
}

export interface TarLayerResult {
  /** tar / tar+gzip / tar+zstd; compressed ones carry `ci.umo.uncompressed_blob_size`. */
  descriptor: Descriptor
  /** Digest of the uncompressed tar (the config's rootfs diff_id). */
  diffId: Digest
  uncompressedSize: number
}

const READ_SIZE = 1 << 20
const COMPRESS_CHUNK = 128 << 10
/** Entries of a directory whose metadata (and small bodies) are fetched ahead of the one being
 *  emitted: each costs several thread-pool round trips, which otherwise run one at a time. */
const PREFETCH = 16
/** Files up to this size are read whole while prefetching... */
const SMALL_FILE = 256 << 10
/** ...as long as no more than this is held in read-ahead bodies across the whole walk. */
const PREFETCH_BYTES = 8 << 20

function toBuf(s: string): Buffer {
  return Buffer.from(s, 'utf8')
}

interface Child {
  name: string
  /** The name as it will appear in the archive: `.wh.<name>` for whiteouts, `<name>/` for dirs. */
  key: Buffer
  whiteout: boolean
}

function ioError(path: string, e: unknown): StackerError {
  if (e instanceof StackerError) return e
  const msg = e instanceof Error ? e.message : String(e)
  return new StackerError('LAYER', `cannot archive ${path}: ${msg}`, { cause: e })
}

function mtimeSeconds(st: BigIntStats, sde: number | undefined): number {
  const ns = st.mtimeNs
  let s = ns / 1_000_000_000n
  if (ns < 0n && s * 1_000_000_000n !== ns) s -= 1n
  const secs = Number(s)
  return sde !== undefined && secs > sde ? sde : secs
}

async function readXattrs(path: string): Promise<{ xattrs: Array<[string, Buffer]>; opaque: boolean }> {
  let names: string[]
  try {
    names = await listAttributes(path)
  } catch (e) {
    // A filesystem without xattr support (e.g. a squashfs image made without them) has none.
    if (/os error 95|not supported/i.test((e as Error).message)) return { xattrs: [], opaque: false }
    throw e
  }
  const xattrs: Array<[string, Buffer]> = []
  let opaque = false
  for (const name of names) {
    if (isOverlayXattr(name)) {
      if (name === OVERLAY_OPAQUE_XATTR) {
        const v = await getAttribute(path, name)
        opaque = v !== null && v.toString() === 'y'
      }
      continue
    }
    const v = await getAttribute(path, name)
    if (v !== null) xattrs.push([name, v])
  }
  xattrs.sort((a, b) => Buffer.compare(toBuf(a[0]), toBuf(b[0])))
  return { xattrs, opaque }
}

async function listChildren(abs: string, logger: Logger): Promise<Child[]> {
  const raw = (await readdir(abs, { withFileTypes: true, encoding: 'buffer' })) as unknown as Dirent<Buffer>[]
  const out: Child[] = []
  for (const d of raw) {
    const name = d.name.toString('utf8')
    if (!Buffer.from(name, 'utf8').equals(d.name)) {
      throw new StackerError('LAYER', `cannot archive ${join(abs, d.name.toString('latin1'))}: file name is not UTF-8`)
    }
    if (d.isSocket()) {
      logger.warn(`ignoring socket ${join(abs, name)}: sockets cannot be stored in a tar layer`)
      continue
    }
    let whiteout = false
    if (d.isCharacterDevice()) whiteout = isOverlayWhiteout(await lstat(join(abs, name), { bigint: true }))
    const key = whiteout ? WHITEOUT_PREFIX + name : d.isDirectory() ? `${name}/` : name
    out.push({ name, key: toBuf(key), whiteout })
  }
  // Keys carry the trailing `/` of directories, so this per-directory order makes the whole
  // archive sorted bytewise by entry name, parents before children.
  out.sort((a, b) => Buffer.compare(a.key, b.key))
  return out
}

function typeOf(st: BigIntStats): TarEntryType | undefined {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isCharacterDevice()) return 'char'
  if (st.isBlockDevice()) return 'block'
  if (st.isFIFO()) return 'fifo'
  return undefined
}

function shrank(path: string): StackerError {
  return new StackerError('LAYER', `cannot archive ${path}: file shrank while being archived`)
}

async function readWhole(path: string, size: number): Promise<Buffer> {
  const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW)
  try {
    const buf = Buffer.allocUnsafe(size)
    let off = 0
    while (off < size) {
      const { bytesRead } = await fh.read(buf, off, size - off, off)
      if (bytesRead === 0) throw shrank(path)
      off += bytesRead
    }
    return buf
  } finally {
    await fh.close()
  }
}

async function* fileBody(path: string, size: number): AsyncGenerator<Buffer> {
  const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW)
  try {
    let left = size
    while (left > 0) {
      const buf = Buffer.allocUnsafe(Math.min(READ_SIZE, left))
      const { bytesRead } = await fh.read(buf, 0, buf.length, null)
      if (bytesRead === 0) throw shrank(path)
      left -= bytesRead
      yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead)
    }
  } finally {
    await fh.close()
  }
}

interface WalkState {
  sde: number | undefined
  logger: Logger
  /** dev:ino of multiply-linked inodes -> the archive name they were first written under. */
  links: Map<string, string>
  entries: number
  /** Bytes of file bodies read ahead and not yet emitted. */
  buffered: number
}

/** What the walk needs about one child, gathered ahead of its turn. */
interface Prepared {
  child: Child
  path: string
  st: BigIntStats
  xattrs: Array<[string, Buffer]>
  opaque: boolean
  linkname: string
  /** The whole body of a small file not linked elsewhere; counted in `state.buffered`. */
  body: Buffer | undefined
}

async function prepare(abs: string, child: Child, state: WalkState): Promise<Prepared> {
  const path = join(abs, child.name)
  try {
    const p: Prepared = {
      child,
      path,
      st: await lstat(path, { bigint: true }),
      xattrs: [],
      opaque: false,
      linkname: '',
      body: undefined,
    }
    if (child.whiteout) return p
    const type = typeOf(p.st)
    // Symlinks cannot carry user.* xattrs and extraction never sets any on them.
    if (type !== undefined && type !== 'symlink') ({ xattrs: p.xattrs, opaque: p.opaque } = await readXattrs(path))
    if (type === 'symlink') p.linkname = await readlink(path)
    const size = Number(p.st.size)
    if (type === 'file' && p.st.nlink === 1n && size <= SMALL_FILE && state.buffered + size <= PREFETCH_BYTES) {
      state.buffered += size
      try {
        p.body = await readWhole(path, size)
      } catch (e) {
        state.buffered -= size
        throw e
      }
    }
    return p
  } catch (e) {
    throw ioError(path, e)
  }
}

async function* walk(abs: string, prefix: string, state: WalkState): AsyncGenerator<Buffer> {
  let children: Child[]
  try {
    children = await listChildren(abs, state.logger)
  } catch (e) {
    throw ioError(abs, e)
  }
  // Children are prepared up to PREFETCH ahead and emitted strictly in order; a failure surfaces
  // when its entry's turn comes, as it would without the read-ahead.
  const pending: Array<Promise<Prepared>> = []
  let next = 0
  const fill = () => {
    while (next < children.length && pending.length < PREFETCH) {
      const p = prepare(abs, children[next++] as Child, state)
      p.catch(() => {})
      pending.push(p)
    }
  }
  try {
    fill()
    while (pending.length > 0) {
      const item = await (pending.shift() as Promise<Prepared>)
      fill()
      try {
        yield* emit(item, prefix, state)
      } finally {
        if (item.body) {
          state.buffered -= item.body.length
          item.body = undefined
        }
      }
    }
  } finally {
    // Bodies read ahead for entries never emitted (an error or an early stop) are given back.
    for (const p of pending)
      void p.then(
        (item) => {
          if (item.body) state.buffered -= item.body.length
        },
        () => {},
      )
  }
}

async function* emit(item: Prepared, prefix: string, state: WalkState): AsyncGenerator<Buffer> {
  const { child, path, st } = item
  const mtime = mtimeSeconds(st, state.sde)
  const base = { uid: Number(st.uid), gid: Number(st.gid), mtime, size: 0, linkname: '', devmajor: 0, devminor: 0 }
  if (child.whiteout) {
    state.entries++
    yield encodeHeader({ ...base, name: prefix + WHITEOUT_PREFIX + child.name, type: 'file', mode: 0, xattrs: [] })
    return
  }
  const type = typeOf(st)
  if (!type) {
    state.logger.warn(`ignoring ${path}: file type cannot be stored in a tar layer`)
    return
  }
  const mode = Number(st.mode) & 0o7777
  const name = prefix + child.name + (type === 'dir' ? '/' : '')
  if (type !== 'dir' && st.nlink > 1n) {
    const id = `${st.dev}:${st.ino}`
    const first = state.links.get(id)
    if (first !== undefined) {
      state.entries++
      yield encodeHeader({ ...base, name, type: 'link', mode, linkname: first, xattrs: [] })
      return
    }
    state.links.set(id, name)
  }
  const header: TarHeader = { ...base, name, type, mode, xattrs: item.xattrs }
  if (type === 'symlink') header.linkname = item.linkname
  if (type === 'char' || type === 'block') {
    const { major, minor } = splitDev(st.rdev)
    header.devmajor = major
    header.devminor = minor
  }
  if (type === 'file') header.size = Number(st.size)
  state.entries++
  yield encodeHeader(header)
  if (type === 'file') {
    if (item.body) yield item.body
    else {
      try {
        yield* fileBody(path, header.size)
      } catch (e) {
        throw ioError(path, e)
      }
    }
    yield padding(header.size)
  } else if (type === 'dir') {
    if (item.opaque) {
      state.entries++
      yield encodeHeader({ ...base, name: name + OPAQUE_WHITEOUT, type: 'file', mode: 0, xattrs: [] })
    }
    yield* walk(path, name, state)
  }
}

/** The uncompressed tar of `dir`'s contents (the directory itself gets no entry), converting
 *  overlay whiteouts and opaque directories to OCI ones. Streams: file bodies are read as they
 *  are emitted. Deterministic for a given tree and options. `entryCount()` is valid once the
 *  stream has been read to the end. */
export function createTarStream(
  dir: string,
  opts: TarStreamOptions = {},
): AsyncIterable<Uint8Array> & { entryCount(): number } {
  const state: WalkState = {
    sde: opts.sourceDateEpoch,
    logger: opts.logger ?? silentLogger,
    links: new Map(),
    entries: 0,
    buffered: 0,
  }
  return {
    entryCount: () => state.entries,
    async *[Symbol.asyncIterator]() {
      yield* walk(dir, '', state)
      yield END_OF_ARCHIVE
    },
  }
}

function mediaTypeFor(c: Compression): string {
  if (c === 'gzip') return MediaTypes.layerTarGzip
  if (c === 'zstd') return MediaTypes.layerTarZstd
  return MediaTypes.layerTar
}

function checkLevel(c: Compression, level: number | undefined): number {
  const lv = level ?? (c === 'zstd' ? 3 : 6)
  const [lo, hi] = c === 'zstd' ? [1, 22] : [1, 9]
  if (c !== 'none' && (!Number.isInteger(lv) || lv < lo || lv > hi)) {
    throw new StackerError('LAYER', `invalid ${c} compression level ${lv} (expected ${lo}-${hi})`)
  }
  return lv
}

/**
 * Writes `dir` (an overlay content directory) as one OCI tar layer into `sink`, in one streaming
 * pass: walk -> tar -> sha256 (diff_id) -> compress -> sink. Returns undefined, after aborting the
 * sink, when the directory holds nothing to archive. On any error the sink is aborted and the
 * error rethrown. Same tree and options give the same bytes.
 */
export async function writeTarLayer(
  dir: string,
  sink: BlobSink,
  opts: TarLayerOptions,
): Promise<TarLayerResult | undefined> {
  let settled = false
  try {
    const level = checkLevel(opts.compression, opts.level)
    let empty: boolean
    try {
      empty = (await readdir(dir)).length === 0
    } catch (e) {
      throw ioError(dir, e)
    }
    if (empty) {
      settled = true
      await sink.abort()
      return undefined
    }
    const tar = createTarStream(dir, opts)
    const diff = new Hasher()
    const onProgress = opts.onProgress
    async function* hashed(): AsyncGenerator<Buffer> {
      for await (const chunk of rechunk(tar, COMPRESS_CHUNK)) {
        diff.update(chunk)
        onProgress?.(diff.size)
        yield chunk
      }
    }
    let out: AsyncIterable<Uint8Array>
    const threads = opts.threads ?? availableParallelism()
    // pigz: gzip on every core, byte-identical whatever the thread count (-n: no name, no time).
    if (opts.compression === 'gzip')
      out = throughProgram('pigz', ['-n', `-${level}`, '-p', String(threads)], hashed(), 'LAYER')
    else if (opts.compression === 'zstd') {
      const args = ['-q', '-c', '--no-progress', `-${level}`, `-T${threads}`]
      if (level > 19) args.unshift('--ultra')
      out = throughProgram('zstd', args, hashed(), 'LAYER')
    } else out = hashed()
    for await (const chunk of out) await sink.write(chunk)
    if (tar.entryCount() === 0) {
      settled = true
      await sink.abort()
      return undefined
    }
    settled = true
    const { digest, size } = await sink.commit()
    const descriptor: Descriptor = { mediaType: mediaTypeFor(opts.compression), digest, size }
    if (opts.compression !== 'none') descriptor.annotations = { [Annotations.uncompressedBlobSize]: String(diff.size) }
    return { descriptor, diffId: diff.digest(), uncompressedSize: diff.size }
  } catch (e) {
    if (!settled) await sink.abort().catch(() => {})
    throw e
  }
}
