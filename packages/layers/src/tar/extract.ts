import {
  chmodSync,
  closeSync,
  constants as fsConstants,
  fchmodSync,
  fchownSync,
  ftruncateSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  type Stats,
  symlinkSync,
  unlinkSync,
  write,
  writeSync,
} from 'node:fs'
import { mkdir, realpath } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createGunzip } from 'node:zlib'
import { setAttributeSync } from '@napi-rs/xattr'
import { type Logger, runningInUserNamespace, silentLogger, StackerError } from '@stacker/core'
import { readTar, type TarEntry } from './reader.js'
import {
  isOverlayXattr,
  mknod,
  OPAQUE_WHITEOUT,
  OVERLAY_OPAQUE_XATTR,
  WHITEOUT_META_PREFIX,
  WHITEOUT_PREFIX,
} from './overlay.js'
import { sniffCompression, throughProgram, throughTransform, toChunks } from './streams.js'

/** What to do with OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`):
 *  - `overlay`: turn them into overlayfs ones (0:0 char device, `user.overlay.opaque=y`), for a
 *    content directory that will be a lower layer of an overlay mount;
 *  - `apply`: delete what they name from the target, which already holds the lower layers;
 *  - `keep`: write them as the plain empty files they are in the tar. */
export type WhiteoutMode = 'overlay' | 'apply' | 'keep'

/** Options of extractTarLayer. */
export interface ExtractOptions {
  /** What to make of the layer's whiteouts (see WhiteoutMode). */
  whiteouts: WhiteoutMode
  /** Default `auto`: gzip and zstd are recognised by their magic bytes. */
  compression?: 'auto' | 'gzip' | 'zstd' | 'none'
  /** Names the layer in error messages, e.g. its digest. */
  sourceDescription?: string
  /** Receives warnings (non-UTF-8 names) and debug lines. Default: dropped. */
  logger?: Logger
  /** Called with the running count of input (possibly compressed) bytes consumed. */
  onProgress?: (bytes: number) => void
  /** Checked before each entry: once aborted, extraction stops and rejects with the signal's reason
   *  (a StackerError reason is thrown as it is), leaving a partial layer. */
  signal?: AbortSignal
}

/** A layer's bytes (compressed or not): chunks, or a readable stream such as OciLayout.openBlob's. */
export type LayerInput = AsyncIterable<Uint8Array> | Iterable<Uint8Array> | NodeJS.ReadableStream

const MAX_SYMLINK_HOPS = 255

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code
}

/** Metadata calls and bodies up to this size are synchronous: on a cached target a thread-pool
 *  round trip costs several times the system call, and a layer of small files is mostly round
 *  trips. Larger bodies are written asynchronously so decompression keeps running meanwhile. */
const SYNC_BODY_MAX = 256 << 10

const FILE_FLAGS = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW

const writeAsync = promisify(write)

function writeAllSync(fd: number, chunk: Buffer, position: number | null = null): void {
  let off = 0
  while (off < chunk.length) {
    off += writeSync(fd, chunk, off, chunk.length - off, position === null ? null : position + off)
  }
}

async function writeAll(fd: number, chunk: Buffer, position: number | null = null): Promise<void> {
  let off = 0
  while (off < chunk.length) {
    const at = position === null ? null : position + off
    off += (await writeAsync(fd, chunk, off, chunk.length - off, at)).bytesWritten
  }
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path)
  } catch (e) {
    if (errno(e) === 'ENOENT') return null
    throw e
  }
}

/** A hostile or unusable entry: the message is what the user sees, prefixed by the layer. */
class EntryError extends Error {}

/** Gives `path` (or `fd`, `path` opened without following it) the entry's owner. In a user
 *  namespace only the ids it maps can own files (the kernel answers EINVAL for the others). */
function chown(path: string, e: TarEntry, fd?: number): void {
  try {
    if (fd === undefined) lchownSync(path, e.uid, e.gid)
    else fchownSync(fd, e.uid, e.gid)
  } catch (err) {
    if (errno(err) !== 'EINVAL' || !runningInUserNamespace()) throw err
    throw new EntryError(
      `owner ${e.uid}:${e.gid} is outside the ids this user namespace maps (an unprivileged build maps 0-65535): build as root, or use a base whose files have ids below 65536`,
    )
  }
}

function splitName(name: string): string[] {
  return name.split('/').filter((c) => c !== '' && c !== '.')
}

type Placement = { parent: string[]; base: string } | { root: true }

/** Applies one layer's entries to a root directory, confining every write to it. */
class Extractor {
  readonly #root: string
  readonly #mode: WhiteoutMode
  readonly #logger: Logger
  /** Directories whose times are set once their contents are in place. */
  readonly #dirTimes: Array<{ path: string; mtime: number }> = []
  /** Paths (relative, resolved) this layer created; only tracked for `apply`, where whiteouts
   *  must spare them. */
  readonly #created = new Set<string>()

  constructor(root: string, mode: WhiteoutMode, logger: Logger) {
    this.#root = root
    this.#mode = mode
    this.#logger = logger
  }

  #abs(rel: readonly string[]): string {
    return rel.length === 0 ? this.#root : join(this.#root, ...rel)
  }

  #noteCreated(rel: readonly string[]): void {
    if (this.#mode === 'apply') this.#created.add(rel.join('/'))
  }

  /** Resolves directory components the way the kernel would if the root were `/`: symlinks are
   *  followed but re-rooted, `..` stops at the root. Missing directories are created (0755, root)
   *  when `create`; otherwise a missing one is an error. Returns the real components. */
  #resolveDir(components: readonly string[], create: boolean): string[] {
    const cur: string[] = []
    const queue = [...components]
    let hops = 0
    while (queue.length > 0) {
      const c = queue.shift()!
      if (c === '' || c === '.') continue
      if (c === '..') {
        cur.pop()
        continue
      }
      const path = this.#abs([...cur, c])
      const st = lstatOrNull(path)
      if (st === null) {
        if (!create) throw new EntryError(`${[...cur, c].join('/')} does not exist`)
        mkdirSync(path, 0o755)
        cur.push(c)
        this.#noteCreated(cur)
        continue
      }
      if (st.isSymbolicLink()) {
        if (++hops > MAX_SYMLINK_HOPS) throw new EntryError('too many levels of symbolic links')
        const target = readlinkSync(path)
        if (target.startsWith('/')) cur.length = 0
        queue.unshift(...target.split('/'))
        continue
      }
      if (!st.isDirectory()) throw new EntryError(`${[...cur, c].join('/')} is not a directory`)
      cur.push(c)
    }
    return cur
  }

  /** Splits an entry name into its resolved parent directory and final component. The final
   *  component is never followed. */
  #place(name: string, create = true): Placement {
    const parts = splitName(name)
    if (parts.length === 0) return { root: true }
    const base = parts.pop()!
    if (base === '..') throw new EntryError('name ends in ".."')
    if (parts.includes('..')) this.#logger.debug(`tar entry ${JSON.stringify(name)} uses "..": kept inside the target`)
    return { parent: this.#resolveDir(parts, create), base }
  }

  /** Removes whatever is at `path` without following it. */
  #remove(path: string, st: Stats): void {
    if (st.isDirectory()) rmSync(path, { recursive: true, force: true })
    else unlinkSync(path)
  }

  async apply(e: TarEntry): Promise<void> {
    if (e.name.includes('\uFFFD')) this.#logger.warn(`tar entry name ${JSON.stringify(e.name)} is not valid UTF-8`)
    const parts = splitName(e.name)
    const last = parts[parts.length - 1]
    if (this.#mode !== 'keep' && last?.startsWith(WHITEOUT_PREFIX)) {
      await this.#whiteout(e, last)
      return
    }
    const where = this.#place(e.name)
    if ('root' in where) {
      if (e.type !== 'dir') throw new EntryError('the root can only be a directory')
      this.#metadata(this.#root, e, 'dir')
      return
    }
    const rel = [...where.parent, where.base]
    const path = this.#abs(rel)
    const existing = lstatOrNull(path)

    if (e.type === 'dir') {
      if (existing && !existing.isDirectory()) this.#remove(path, existing)
      if (!existing?.isDirectory()) mkdirSync(path, 0o700)
      this.#noteCreated(rel)
      this.#metadata(path, e, 'dir')
      return
    }

    if (e.type === 'link') {
      const target = this.#linkTarget(e.linkname)
      if (target === path) throw new EntryError('hard link to itself')
      if (existing) this.#remove(path, existing)
      linkSync(target, path)
      this.#noteCreated(rel)
      return
    }

    if (existing) this.#remove(path, existing)
    if (e.type === 'file' && e.sparse) {
      // Holes stay holes: each region is written where it belongs, then the size is set.
      const fd = openSync(path, FILE_FLAGS, 0o600)
      this.#noteCreated(rel)
      try {
        for await (const { offset, chunk } of e.data()) {
          if (chunk.length <= SYNC_BODY_MAX) writeAllSync(fd, chunk, offset)
          else await writeAll(fd, chunk, offset)
        }
        ftruncateSync(fd, e.size)
        this.#metadata(path, e, 'file', fd)
      } finally {
        closeSync(fd)
      }
      return
    }
    if (e.type === 'file') {
      // Read a small body before creating the file, so the file's calls run back to back.
      const small: Buffer[] = []
      if (e.size <= SYNC_BODY_MAX) for await (const chunk of e.body()) small.push(chunk)
      const fd = openSync(path, FILE_FLAGS, 0o600)
      this.#noteCreated(rel)
      try {
        if (e.size <= SYNC_BODY_MAX) for (const chunk of small) writeAllSync(fd, chunk)
        else for await (const chunk of e.body()) await writeAll(fd, chunk)
        this.#metadata(path, e, 'file', fd)
      } finally {
        closeSync(fd)
      }
      return
    }
    if (e.type === 'symlink') symlinkSync(e.linkname, path)
    else if (e.type !== 'fifo' && runningInUserNamespace()) {
      // The kernel lets a user namespace make no device but a whiteout; an empty file stands in
      // for it, as upstream's rootless extraction does, so the rest of the image stays usable.
      this.#logger.warn(
        `creating an empty file in place of ${e.type} device ${e.devmajor}:${e.devminor} ${JSON.stringify(e.name)}: an unprivileged build cannot make devices`,
      )
      closeSync(openSync(path, FILE_FLAGS, 0o600))
      this.#noteCreated(rel)
      this.#metadata(path, e, 'file')
      return
    } else await mknod(path, e.type, e.mode, e.devmajor, e.devminor)
    this.#noteCreated(rel)
    this.#metadata(path, e, e.type)
  }

  /** A hard link's target: resolved inside the root, must exist and not be a directory. */
  #linkTarget(linkname: string): string {
    if (linkname === '') throw new EntryError('hard link without a target')
    let where: Placement
    try {
      where = this.#place(linkname, false)
    } catch (err) {
      if (err instanceof EntryError)
        throw new EntryError(`hard link target ${JSON.stringify(linkname)}: ${err.message}`)
      throw err
    }
    if ('root' in where) throw new EntryError(`hard link to a directory (${JSON.stringify(linkname)})`)
    const target = this.#abs([...where.parent, where.base])
    const st = lstatOrNull(target)
    if (!st) throw new EntryError(`hard link target ${JSON.stringify(linkname)} does not exist`)
    if (st.isDirectory()) throw new EntryError(`hard link to a directory (${JSON.stringify(linkname)})`)
    return target
  }

  async #whiteout(e: TarEntry, base: string): Promise<void> {
    const parentParts = splitName(e.name).slice(0, -1)
    if (base === OPAQUE_WHITEOUT) {
      const dir = this.#resolveDir(parentParts, true)
      if (this.#mode === 'overlay') setAttributeSync(this.#abs(dir), OVERLAY_OPAQUE_XATTR, 'y')
      else this.#pruneLower(dir)
      return
    }
    if (base.startsWith(WHITEOUT_META_PREFIX)) {
      this.#logger.debug(`ignoring reserved whiteout entry ${JSON.stringify(e.name)}`)
      return
    }
    const name = base.slice(WHITEOUT_PREFIX.length)
    if (name === '' || name === '.' || name === '..') throw new EntryError('invalid whiteout name')
    if (this.#mode === 'apply') {
      let parent: string[]
      try {
        parent = this.#resolveDir(parentParts, false)
      } catch (err) {
        if (err instanceof EntryError) return // nothing below a missing dir to delete
        throw err
      }
      const rel = [...parent, name]
      // Whiteouts hide lower layers only; a name this layer wrote itself stays.
      if (this.#created.has(rel.join('/'))) return
      const st = lstatOrNull(this.#abs(rel))
      if (st) this.#remove(this.#abs(rel), st)
      return
    }
    const parent = this.#resolveDir(parentParts, true)
    const path = this.#abs([...parent, name])
    const existing = lstatOrNull(path)
    if (existing) this.#remove(path, existing)
    await mknod(path, 'char', 0, 0, 0)
    chown(path, e)
    lutimesSync(path, e.mtime, e.mtime)
  }

  /** `apply` for an opaque directory: drop what lower layers put below it, keeping what this
   *  layer created (and pruning inside the directories it created, which hide lower ones too). */
  #pruneLower(dir: readonly string[]): void {
    const abs = this.#abs(dir)
    for (const name of readdirSync(abs)) {
      const rel = [...dir, name]
      const st = lstatSync(join(abs, name))
      if (!this.#created.has(rel.join('/'))) this.#remove(join(abs, name), st)
      else if (st.isDirectory()) this.#pruneLower(rel)
    }
  }

  /** `fd`, when given, is `path` opened without following it; the calls that can use it do. */
  #metadata(path: string, e: TarEntry, type: TarEntry['type'], fd?: number): void {
    chown(path, e, fd)
    if (type === 'symlink') {
      lutimesSync(path, e.mtime, e.mtime)
      return
    }
    // After chown, which clears setuid/setgid.
    if (fd === undefined) chmodSync(path, e.mode & 0o7777)
    else fchmodSync(fd, e.mode & 0o7777)
    // After chown too, which drops security.capability.
    for (const [name, value] of e.xattrs) {
      if (isOverlayXattr(name)) {
        this.#logger.debug(`not setting overlay xattr ${name} from tar entry ${JSON.stringify(e.name)}`)
        continue
      }
      try {
        setAttributeSync(path, name, value)
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err)
        // EPERM/EOPNOTSUPP: this filesystem or file type cannot hold it; the file is still usable.
        if (/os error (1|95)\)/.test(msg)) this.#logger.warn(`cannot set xattr ${name} on ${e.name}: ${msg}`)
        else throw new EntryError(`cannot set xattr ${name}: ${msg}`)
      }
    }
    if (type === 'dir') this.#dirTimes.push({ path, mtime: e.mtime })
    else if (fd === undefined) lutimesSync(path, e.mtime, e.mtime)
    else futimesSync(fd, e.mtime, e.mtime)
  }

  /** Sets directory times last: creating their contents changed them. */
  finish(): void {
    for (let i = this.#dirTimes.length - 1; i >= 0; i--) {
      const { path, mtime } = this.#dirTimes[i]!
      try {
        lutimesSync(path, mtime, mtime)
      } catch (e) {
        if (errno(e) !== 'ENOENT') throw e // replaced or whited out later in the same layer
      }
    }
  }
}

function describe(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e)
  return msg.replace(/\s*\n\s*/g, ' ')
}

/**
 * Extracts one tar layer into `targetDir` (created if missing), converting whiteouts as `whiteouts`
 * says. Every write stays inside `targetDir`: names are resolved as if it were `/`, through symlinks
 * planted by this or earlier layers; an existing final component is replaced, never followed; hard
 * links must point inside and not at a directory. Owners, modes (setuid included), xattrs (except
 * overlayfs ones), devices and times are restored; run as root. Not atomic: on error the target
 * holds a partial layer. Throws StackerError EXTRACT naming the entry for hostile or broken input.
 */
export async function extractTarLayer(
  input: LayerInput,
  targetDir: string,
  opts: ExtractOptions,
): Promise<{ entries: number }> {
  const what = opts.sourceDescription ?? 'layer'
  const logger = opts.logger ?? silentLogger
  let current: string | undefined
  let entries = 0
  try {
    await mkdir(targetDir, { recursive: true })
    const root = await realpath(targetDir)
    let consumed = 0
    const onProgress = opts.onProgress
    async function* counted(): AsyncGenerator<Buffer> {
      for await (const c of toChunks(input)) {
        consumed += c.length
        onProgress?.(consumed)
        yield c
      }
    }
    let kind = opts.compression ?? 'auto'
    let stream: AsyncIterable<Buffer> = counted()
    if (kind === 'auto') ({ kind, stream } = await sniffCompression(stream))
    let tar: AsyncIterable<Uint8Array> = stream
    if (kind === 'gzip') tar = throughTransform(stream, createGunzip({ chunkSize: 128 << 10 }))
    else if (kind === 'zstd') tar = throughProgram('zstd', ['-d', '-q', '-c'], stream, 'EXTRACT')
    const x = new Extractor(root, opts.whiteouts, logger)
    for await (const entry of readTar(tar)) {
      opts.signal?.throwIfAborted()
      current = entry.name
      await x.apply(entry)
      entries++
      current = undefined
    }
    x.finish()
    return { entries }
  } catch (e) {
    if (e instanceof StackerError && e.code !== 'EXTRACT') throw e
    const where = current === undefined ? '' : `: entry ${JSON.stringify(current)}`
    let msg = e instanceof StackerError ? e.message : describe(e)
    if (String((e as { code?: unknown }).code).startsWith('Z_')) msg = `gzip: ${msg}`
    throw new StackerError('EXTRACT', `cannot extract ${what}${where}: ${msg}`, { cause: e })
  }
}

/** Options of unpackImageLayers. */
export interface UnpackImageLayersOptions {
  /** Receives each layer's warnings and debug lines. Default: dropped. */
  logger?: Logger
  /** Names layer `index` (0-based) in error messages; default `layer <n>/<count>`. */
  describe?: (index: number) => string
}

/** Applies image layers in order onto `targetDir` (`apply` whiteouts), e.g. to flatten an image
 *  into one rootfs. Each factory is called when its turn comes, so only one layer is open at a
 *  time. */
export async function unpackImageLayers(
  layers: ReadonlyArray<() => LayerInput>,
  targetDir: string,
  opts: UnpackImageLayersOptions = {},
): Promise<{ entries: number }> {
  let entries = 0
  for (const [i, open] of layers.entries()) {
    const r = await extractTarLayer(open(), targetDir, {
      whiteouts: 'apply',
      sourceDescription: opts.describe?.(i) ?? `layer ${i + 1}/${layers.length}`,
      ...(opts.logger ? { logger: opts.logger } : {}),
    })
    entries += r.entries
  }
  return { entries }
}
