import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import {
  chmodSync,
  closeSync,
  constants as fsConstants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lutimesSync,
  mkdirSync,
  openSync,
  symlinkSync,
  writeSync,
} from 'node:fs'
import { once } from 'node:events'
import { join } from 'node:path'
import { setImmediate } from 'node:timers/promises'
import { type Logger, runningInUserNamespace, StackerError, silentLogger } from '@stacker/core'
import { mknod } from '../tar/overlay.js'
import { EOPNOTSUPP, EPERM, setXattr, xattrErrno } from '../xattr.js'
import {
  type ErofsDirent,
  ErofsImage,
  type ErofsInode,
  fileKind,
  INCOMPAT_LZ4_0PADDING,
  LAYOUT_FLAT_INLINE,
  LAYOUT_FLAT_PLAIN,
} from './erofs-image.js'
import { LZ4_MIN_WINDOW, Lz4FormatError, lz4DecodeBlock } from './lz4.js'

/** How extractErofs reports, stops and sets times. */
export interface ExtractErofsOptions {
  logger?: Logger
  /** Checked before each entry: once aborted, extraction stops with the signal's reason. */
  signal?: AbortSignal
  /** How times with a part finer than a microsecond are set (Node's calls stop at microseconds):
   *  `auto` uses one perl process for all of them (utimensat), falling back to one `touch` per
   *  entry where perl or the call's number is missing; `touch` forces the fallback (for tests). */
  nanosecondTimes?: 'auto' | 'touch'
}

const FILE_FLAGS = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW
/** File data is read and written this much at a time. */
const DATA_CHUNK = 1 << 20
/** Yield to the event loop after this many entries or bytes written. */
const YIELD_ENTRIES = 1024
const YIELD_BYTES = 16 << 20
/** A symlink's target must fit in PATH_MAX with its NUL. */
const MAX_SYMLINK = 4095

/** A hostile or unusable entry: the message is what the user sees, after the entry's path. */
class EntryError extends Error {}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code
}

function writeAllSync(fd: number, data: Uint8Array): void {
  for (let off = 0; off < data.length; ) off += writeSync(fd, data, off, data.length - off)
}

interface DirFrame {
  path: string
  rel: string
  inode: ErofsInode
  blocks: Generator<ErofsDirent[]>
  entries: ErofsDirent[]
  next: number
}

/**
 * Extracts the erofs image `file` into `target`, an existing empty directory, without the kernel:
 * what a read-only kernel mount copied out with `cp -a --preserve=xattr` gives. The image root's
 * owner, mode, times and xattrs go to `target`; below it directories, files (data streamed, memory
 * bounded whatever their size), symlinks, hard links (an inode with several links is written once
 * and linked), devices, fifos, owners, modes with setuid/setgid, mtimes to the nanosecond and every
 * xattr the image holds (overlayfs whiteouts, 0:0 character devices, and `user.overlay.opaque`
 * stay as they are). In a user namespace, as the tar extractor does, a device other than a whiteout
 * becomes an empty file (with a warning), xattrs the kernel refuses there (trusted.*) are left out
 * with a warning, and an owner the namespace does not map is an error. Sockets are left out with a
 * warning. Nothing is written outside `target`: every name is one path component created afresh.
 * Throws StackerError EXTRACT naming the entry for a malformed or unsupported image; `target` then
 * holds a partial tree, which the caller removes.
 */
export async function extractErofs(
  file: string,
  target: string,
  opts: ExtractErofsOptions = {},
): Promise<{ entries: number }> {
  const logger = opts.logger ?? silentLogger
  let current: string | undefined
  let img: ErofsImage | undefined
  const times = new NanosecondTimes(opts.nanosecondTimes ?? 'auto')
  try {
    img = ErofsImage.open(file, { code: 'EXTRACT' })
    const x = new Extractor(img, logger, times)
    const entries = await x.run(target, opts.signal, (rel) => {
      current = rel
    })
    current = undefined
    await times.close()
    return { entries }
  } catch (e) {
    times.kill()
    if (e instanceof StackerError && e.code !== 'EXTRACT') throw e
    const where = current === undefined ? '' : `: entry ${JSON.stringify(current)}`
    if (e instanceof StackerError && current === undefined) throw e
    let msg = e instanceof Error ? e.message : String(e)
    if (e instanceof Lz4FormatError) msg = `malformed erofs image: ${msg}`
    if (msg.startsWith(`${file}: `)) msg = msg.slice(file.length + 2)
    throw new StackerError('EXTRACT', `cannot extract erofs image ${file}${where}: ${msg}`, { cause: e })
  } finally {
    img?.close()
  }
}

class Extractor {
  readonly #img: ErofsImage
  readonly #logger: Logger
  readonly #times: NanosecondTimes
  readonly #userns = runningInUserNamespace()
  /** Inodes with several links already written, by the path of their first link. */
  readonly #links = new Map<number, string>()
  readonly #dirs = new Set<number>()
  readonly #data = Buffer.allocUnsafe(DATA_CHUNK)
  readonly #window = Buffer.allocUnsafe(Math.max(LZ4_MIN_WINDOW, DATA_CHUNK))
  #pcluster = Buffer.allocUnsafe(0)
  #sinceYield = 0
  #bytesSinceYield = 0
  readonly #warned = new Set<string>()

  constructor(img: ErofsImage, logger: Logger, times: NanosecondTimes) {
    this.#img = img
    this.#logger = logger
    this.#times = times
  }

  async run(target: string, signal: AbortSignal | undefined, at: (rel: string | undefined) => void): Promise<number> {
    const img = this.#img
    const root = img.inode(img.sb.rootNid)
    if (fileKind(root.mode) !== 'dir') throw img.corrupt('the root is not a directory')
    this.#dirs.add(root.nid)
    at('.')
    this.#owner(target, root)
    this.#xattrs(target, root, '.')
    at(undefined)
    const stack: DirFrame[] = [{ path: target, rel: '', inode: root, blocks: img.dirents(root), entries: [], next: 0 }]
    let entries = 0
    while (stack.length > 0) {
      const dir = stack[stack.length - 1]!
      if (dir.next >= dir.entries.length) {
        const block = dir.blocks.next()
        if (!block.done) {
          dir.entries = block.value
          dir.next = 0
          continue
        }
        stack.pop()
        at(dir.rel || '.')
        // Last, as cp does: creating what is inside changed the time, and a mode without write
        // permission would have stood in the way.
        chmodSync(dir.path, dir.inode.mode & 0o7777)
        await this.#setTime(dir.path, dir.inode)
        at(undefined)
        continue
      }
      const entry = dir.entries[dir.next++]!
      const name = this.#name(entry.name, dir.rel)
      const rel = dir.rel === '' ? name : `${dir.rel}/${name}`
      signal?.throwIfAborted()
      at(rel)
      const path = join(dir.path, name)
      const inode = img.inode(entry.nid)
      if (!img.typeMatches(entry, inode)) throw new EntryError(`its entry's type disagrees with its inode ${inode.nid}`)
      entries++
      if (fileKind(inode.mode) === 'dir') {
        if (this.#dirs.has(inode.nid) || this.#dirs.size >= img.sb.inodeCount) {
          throw img.corrupt(`directory inode ${inode.nid} is reached twice`)
        }
        this.#dirs.add(inode.nid)
        mkdirSync(path, 0o700)
        this.#owner(path, inode)
        this.#xattrs(path, inode, rel)
        stack.push({ path, rel, inode, blocks: img.dirents(inode), entries: [], next: 0 })
      } else await this.#nondir(path, rel, inode)
      at(undefined)
      if (++this.#sinceYield >= YIELD_ENTRIES || this.#bytesSinceYield >= YIELD_BYTES) await this.#yield()
    }
    return entries
  }

  async #yield(): Promise<void> {
    this.#sinceYield = 0
    this.#bytesSinceYield = 0
    await setImmediate()
  }

  /** A name as a path component. Names are bytes; one that is not UTF-8 is kept as the tar
   *  extractor keeps it (invalid bytes replaced), with a warning. */
  #name(raw: Buffer, parent: string): string {
    const name = raw.toString('utf8')
    if (!Buffer.from(name).equals(raw)) {
      this.#logger.warn(
        `erofs entry name ${JSON.stringify(name)} in ${JSON.stringify(parent || '.')} is not valid UTF-8`,
      )
    }
    return name
  }

  async #nondir(path: string, rel: string, inode: ErofsInode): Promise<void> {
    const kind = fileKind(inode.mode)
    if (inode.nlink > 1) {
      const first = this.#links.get(inode.nid)
      if (first !== undefined) {
        linkSync(first, path)
        return
      }
    }
    if (kind === 'file') await this.#file(path, rel, inode)
    else if (kind === 'symlink') {
      symlinkSync(this.#symlinkTarget(inode), path)
      this.#owner(path, inode)
      this.#xattrs(path, inode, rel)
      await this.#setTime(path, inode)
    } else if (kind === 'socket') {
      this.#logger.warn(`leaving out socket ${JSON.stringify(rel)}: a socket cannot be created without a listener`)
      return
    } else {
      const { major, minor } = decodeDev(inode.rawU)
      const whiteout = kind === 'char' && major === 0 && minor === 0
      if (kind !== 'fifo' && !whiteout && this.#userns) {
        // The kernel lets a user namespace make no device but a whiteout; an empty file stands in
        // for it, as the tar extractor and upstream's rootless extraction do.
        this.#logger.warn(
          `creating an empty file in place of ${kind} device ${major}:${minor} ${JSON.stringify(rel)}: an unprivileged build cannot make devices`,
        )
        closeSync(openSync(path, FILE_FLAGS, 0o600))
      } else await mknod(path, kind as 'char' | 'block' | 'fifo', 0o600, major, minor)
      this.#owner(path, inode)
      chmodSync(path, inode.mode & 0o7777)
      this.#xattrs(path, inode, rel)
      await this.#setTime(path, inode)
    }
    if (inode.nlink > 1) this.#links.set(inode.nid, path)
  }

  async #file(path: string, rel: string, inode: ErofsInode): Promise<void> {
    const fd = openSync(path, FILE_FLAGS, 0o600)
    try {
      if (inode.layout === LAYOUT_FLAT_PLAIN || inode.layout === LAYOUT_FLAT_INLINE) this.#writeFlat(fd, inode)
      else await this.#writeCompressed(fd, inode)
      this.#owner(path, inode, fd)
      // After chown, which clears setuid and setgid.
      fchmodSync(fd, inode.mode & 0o7777)
      // After chown too, which drops security.capability.
      this.#xattrs(path, inode, rel)
      await this.#setTime(path, inode, fd)
    } finally {
      closeSync(fd)
    }
  }

  #writeFlat(fd: number, inode: ErofsInode): void {
    for (const { pos, length } of this.#img.flatRanges(inode)) {
      for (let done = 0; done < length; ) {
        const n = Math.min(DATA_CHUNK, length - done)
        this.#img.readInto(this.#data, pos + done, n)
        writeAllSync(fd, this.#data.subarray(0, n))
        done += n
      }
      this.#bytesSinceYield += length
    }
  }

  async #writeCompressed(fd: number, inode: ErofsInode): Promise<void> {
    const img = this.#img
    const zeroPadding = (img.sb.featureIncompat & INCOMPAT_LZ4_0PADDING) !== 0
    let written = 0
    for (const ext of img.extents(inode)) {
      if (ext.start !== written) throw img.corrupt(`inode ${inode.nid} has a gap in its extents`)
      if (!ext.compressed) {
        img.readInto(this.#data, ext.pos, ext.length)
        writeAllSync(fd, this.#data.subarray(0, ext.length))
      } else {
        if (this.#pcluster.length < ext.plen) this.#pcluster = Buffer.allocUnsafe(ext.plen)
        const src = this.#pcluster.subarray(0, ext.plen)
        img.readInto(src, ext.pos, ext.plen)
        // With 0PADDING the compressed data ends the pcluster and zeros lead it (within its
        // first block); without, it starts the pcluster and whatever follows it is ignored.
        let margin = 0
        if (zeroPadding) {
          const limit = Math.min(ext.plen, img.sb.blksz)
          while (margin < limit && src[margin] === 0) margin++
          if (margin === ext.plen) throw img.corrupt(`a pcluster of inode ${inode.nid} is empty`)
        }
        const pieces = lz4DecodeBlock(src.subarray(margin), this.#window, {
          outputSize: ext.length,
          partial: !zeroPadding,
        })
        for (const piece of pieces) writeAllSync(fd, piece)
      }
      written += ext.length
      this.#bytesSinceYield += ext.length
      if (this.#bytesSinceYield >= YIELD_BYTES) await this.#yield()
    }
    if (written !== inode.size) throw img.corrupt(`the extents of inode ${inode.nid} do not cover it`)
  }

  #symlinkTarget(inode: ErofsInode): Buffer {
    if (inode.size === 0 || inode.size > MAX_SYMLINK) throw new EntryError(`symlink target of ${inode.size} bytes`)
    const ranges = this.#img.flatRanges(inode)
    const target = Buffer.concat(ranges.map((r) => Buffer.from(this.#img.view(r.pos, r.length))))
    if (target.includes(0)) throw new EntryError('symlink target with NUL')
    return target
  }

  /** Gives `path` (or `fd`, `path` opened without following it) the inode's owner. In a user
   *  namespace only the ids it maps can own files (the kernel answers EINVAL for the others). */
  #owner(path: string, inode: ErofsInode, fd?: number): void {
    try {
      if (fd === undefined) lchownSync(path, inode.uid, inode.gid)
      else fchownSync(fd, inode.uid, inode.gid)
    } catch (err) {
      if (errno(err) !== 'EINVAL' || !this.#userns) throw err
      throw new EntryError(
        `owner ${inode.uid}:${inode.gid} is outside the ids this user namespace maps (an unprivileged build maps 0-65535): build as root, or use a base whose files have ids below 65536`,
      )
    }
  }

  #xattrs(path: string, inode: ErofsInode, rel: string): void {
    for (const [name, value] of this.#img.xattrs(inode)) {
      try {
        setXattr(path, name, value)
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err)
        // EPERM/EOPNOTSUPP: this filesystem, file type or namespace cannot hold it (trusted.* in a
        // user namespace); the file is still usable, and the kernel would not have shown it there.
        const code = xattrErrno(err)
        if (code !== EPERM && code !== EOPNOTSUPP) throw new EntryError(`cannot set xattr ${name}: ${msg}`)
        const key = `${name}\0${msg}`
        if (!this.#warned.has(key)) {
          this.#warned.add(key)
          this.#logger.warn(`cannot set xattr ${name} on ${rel} (and maybe others): ${msg}`)
        } else this.#logger.debug(`cannot set xattr ${name} on ${rel}: ${msg}`)
      }
    }
  }

  /** Sets atime and mtime to the inode's time, as the kernel shows it for both. */
  async #setTime(path: string, inode: ErofsInode, fd?: number): Promise<void> {
    const { mtime, mtimeNsec } = inode
    // libuv takes a double and keeps whole microseconds of it, truncating: half a microsecond
    // more survives the double's rounding up to 2^33 s.
    if (mtimeNsec % 1000 === 0 && mtime >= 0 && mtime < 2 ** 33) {
      const t = mtime + (mtimeNsec / 1000 + 0.5) / 1e6
      if (fd !== undefined) futimesSync(fd, t, t)
      else lutimesSync(path, t, t)
      return
    }
    await this.#times.set(path, mtime, mtimeNsec)
  }
}

/** Linux's dev_t encoding (new_encode_dev) as erofs stores it in 32 bits. */
function decodeDev(dev: number): { major: number; minor: number } {
  return { major: (dev >>> 8) & 0xfff, minor: (dev & 0xff) | ((dev >>> 12) & 0xfff00) }
}

/** utimensat(2)'s number where perl's syscall() can reach it (64-bit Linux). */
const UTIMENSAT: Partial<Record<string, number>> = { x64: 280, arm64: 88, riscv64: 88, loong64: 88 }

/** Reads NUL-separated (path, seconds, nanoseconds) records and sets each path's atime and mtime,
 *  not following symlinks. */
const PERL_TIMES = `
use strict;
my $nr = shift @ARGV;
$/ = "\\0";
while (defined(my $path = <STDIN>)) {
  chomp $path;
  my $s = <STDIN>; my $ns = <STDIN>;
  chomp $s; chomp $ns;
  my $ts = pack("l!l!l!l!", $s, $ns, $s, $ns);
  syscall($nr, -100, $path, $ts, 0x100) == 0 or die "cannot set the time of $path: $!\\n";
}
`

/** Sets times to the nanosecond, which no Node call does: through one perl process for the whole
 *  extraction, or one `touch` per time where that is not possible. */
class NanosecondTimes {
  readonly #mode: 'auto' | 'touch'
  #perl: ChildProcess | undefined
  #exited: Promise<void> | undefined
  #failure: Error | undefined
  #useTouch = false

  constructor(mode: 'auto' | 'touch') {
    this.#mode = mode
  }

  async set(path: string, sec: number, nsec: number): Promise<void> {
    if (this.#failure) throw this.#failure
    if (!this.#perl && !this.#useTouch) this.#start()
    const perl = this.#perl
    if (!perl?.stdin) {
      await touch(path, sec, nsec)
      return
    }
    if (!perl.stdin.write(Buffer.concat([Buffer.from(path), Buffer.from(`\0${sec}\0${nsec}\0`)]))) {
      await Promise.race([once(perl.stdin, 'drain'), this.#exited])
    }
    if (this.#failure) throw this.#failure
  }

  #start(): void {
    const nr = UTIMENSAT[process.arch]
    if (this.#mode === 'touch' || nr === undefined || spawnSync('perl', ['-e', '0']).status !== 0) {
      this.#useTouch = true
      return
    }
    const perl = spawn('perl', ['-e', PERL_TIMES, String(nr)], { stdio: ['pipe', 'ignore', 'pipe'] })
    let stderr = ''
    perl.stderr?.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
    })
    // A write after perl died fails with EPIPE; the exit says why.
    perl.stdin?.on('error', () => {})
    this.#exited = new Promise((resolve) => {
      perl.on('error', (e) => {
        this.#failure ??= e
        resolve()
      })
      perl.on('close', (code, signal) => {
        if (code !== 0) this.#failure ??= new Error(stderr.trim() || `perl exited with ${code ?? signal}`)
        resolve()
      })
    })
    this.#perl = perl
  }

  /** Waits until every time is set; throws if one could not be. */
  async close(): Promise<void> {
    if (this.#perl) {
      this.#perl.stdin?.end()
      await this.#exited
      this.#perl = undefined
    }
    if (this.#failure) throw this.#failure
  }

  kill(): void {
    this.#perl?.kill('SIGKILL')
    this.#perl = undefined
  }
}

async function touch(path: string, sec: number, nsec: number): Promise<void> {
  const { execa } = await import('execa')
  // touch reads a negative time with a fraction as that much before the epoch, not as whole
  // seconds plus nanoseconds.
  const [whole, frac] = sec < 0 && nsec > 0 ? [sec + 1, 1e9 - nsec] : [sec, nsec]
  const sign = sec < 0 && whole === 0 ? '-' : ''
  const stamp = `@${sign}${whole}.${String(frac).padStart(9, '0')}`
  try {
    await execa('touch', ['-h', '-d', stamp, '--', path], { stdin: 'ignore', stdout: 'ignore' })
  } catch (e) {
    const err = e as { stderr?: string; shortMessage?: string }
    throw new EntryError(`cannot set the time: ${(err.stderr || err.shortMessage || String(e)).trim()}`)
  }
}
