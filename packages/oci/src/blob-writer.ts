import { randomBytes } from 'node:crypto'
import { type FileHandle, mkdir, open, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { type Digest, digestAlgorithm, Hasher, onCleanup, parseDigest, StackerError, pathExists } from '@stacker/core'
import { type FileHasher, openFileHasher } from './file-hasher.js'
import { holdDigest, type LayoutState } from './state.js'

/** What a blob must turn out to be; a mismatch is a DIGEST error and nothing is stored. */
export interface ExpectedBlob {
  /** The digest the content must have. */
  digest?: Digest
  /** The size in bytes the content must have. */
  size?: number
  /** The producer checks the bytes against `digest` itself (a registry client verifying a download
   *  as it streams): the writer then counts them but does not hash them again. Needs `digest`. */
  verifiedByProducer?: boolean
}

/** A stored blob: its digest and size in bytes. */
export interface BlobInfo {
  digest: Digest
  size: number
}

/**
 * A blob being written by a producer that pushes chunks. Bytes go to a temp file inside the layout
 * and are hashed as they pass; nothing appears under blobs/ until commit() renames the finished file
 * into place, so readers never see a partial blob. The writer owns its temp file: commit() or abort()
 * releases it, and an interrupted process removes it through core's cleanup registry.
 */
export interface BlobWriter {
  /** The temp file (inside `<layout>/.tmp/`). */
  readonly path: string
  /** Appends a chunk. The chunk must not be modified until the returned promise settles. Calls may
   *  overlap; they are applied in call order. */
  write(chunk: Uint8Array): Promise<void>
  /** Appends several chunks with one system call (a socket's reads gathered without copying them
   *  into one buffer). The same rules as write(); an empty list writes nothing. */
  writev(chunks: readonly Uint8Array[]): Promise<void>
  /** Finishes the blob: fsyncs, verifies `expected` (merged with the writer's own), and renames it
   *  into place. Idempotent with respect to the store: an existing blob with the same digest is kept.
   *  On a mismatch the temp file is removed and DIGEST is thrown. */
  commit(expected?: ExpectedBlob): Promise<BlobInfo>
  /** Ends writing: fsyncs the temp file and resolves with what it holds (its digest computed from
   *  the bytes, or the expected one with `verifiedByProducer`), checking nothing and showing
   *  nothing. A producer of several blobs can so learn that each is right before it commits any;
   *  commit() afterwards checks and renames without reading the file again. */
  seal(): Promise<BlobInfo>
  /** Removes the temp file. Safe to call at any time, any number of times. */
  abort(): Promise<void>
}

export interface BlobWriterContext {
  readonly dir: string
  readonly state: LayoutState
  readonly blobPath: (d: Digest) => string
}

/** Blobs of at least this many bytes (when the size is known up front) are hashed off the main
 *  thread (file-hasher.ts); below it a worker's round trips cost more than the hashing. */
export const OFF_THREAD_MIN = 4 << 20

/** After this many bytes more, a writer asks the kernel to write the file out (see #startWriteback). */
const WRITEBACK_STEP = 16 << 20

/** Files in `<layout>/.tmp/` are named `blob-<pid>-<random>` so gc can tell whose they are. */
export const TEMP_DIR = '.tmp'
export const TEMP_PREFIX = 'blob-'

export class LayoutBlobWriter implements BlobWriter {
  readonly path: string
  readonly #ctx: BlobWriterContext
  /** Hashes on this thread as chunks come; undefined when the producer verifies the content
   *  (ExpectedBlob.verifiedByProducer) or the file is hashed off the thread (#offThread). */
  readonly #hasher: Hasher | undefined
  /** The algorithm a FileHasher hashes the temp file with, as it is written. */
  readonly #offThread: 'sha256' | 'sha512' | undefined
  #fileHasher: Promise<FileHasher> | undefined
  /** Bytes on their way to the file, and bytes in it. */
  #written = 0
  #flushed = 0
  readonly #expected: ExpectedBlob
  readonly #unregister: () => void
  readonly #releaseDigest: (() => void) | undefined
  #fh: FileHandle | undefined
  #queue: Promise<void> = Promise.resolve()
  #error: unknown
  #state: 'open' | 'committing' | 'done' | 'aborted' = 'open'
  #committing: Promise<unknown> | undefined
  #sealing: Promise<BlobInfo> | undefined
  /** A datasync started while writing goes on, and the byte count it was started at. */
  #writeback: Promise<void> | undefined
  #writebackAt = 0

  constructor(ctx: BlobWriterContext, expected: ExpectedBlob = {}) {
    if (expected.digest !== undefined) parseDigest(expected.digest)
    this.#ctx = ctx
    this.#expected = expected
    const algorithm = expected.digest ? digestAlgorithm(expected.digest) : 'sha256'
    const verified = expected.verifiedByProducer && expected.digest !== undefined
    // A large blob of known size (a download) is hashed by another thread, from the file.
    this.#offThread = !verified && (expected.size ?? 0) >= OFF_THREAD_MIN ? algorithm : undefined
    this.#hasher = verified || this.#offThread ? undefined : new Hasher(algorithm)
    this.path = join(ctx.dir, TEMP_DIR, `${TEMP_PREFIX}${process.pid}-${randomBytes(8).toString('hex')}`)
    ctx.state.tempFiles.add(this.path)
    this.#releaseDigest = expected.digest ? holdDigest(ctx.state, expected.digest) : undefined
    this.#unregister = onCleanup(() => rm(this.path, { force: true }))
  }

  write(chunk: Uint8Array): Promise<void> {
    return this.writev([chunk])
  }

  writev(chunks: readonly Uint8Array[]): Promise<void> {
    if (this.#state !== 'open') return Promise.reject(new StackerError('INTERNAL', `blob writer is ${this.#state}`))
    if (this.#sealing) return Promise.reject(new StackerError('INTERNAL', 'blob writer is sealed'))
    let total = 0
    for (const c of chunks) {
      this.#hasher?.update(c)
      total += c.byteLength
    }
    this.#written += total
    const p = this.#queue.then(async () => {
      if (this.#error !== undefined) throw this.#error
      try {
        const fh = await this.#handle()
        await writeAll(fh, chunks, total)
        this.#flushed += total
        if (this.#flushed - this.#writebackAt >= WRITEBACK_STEP && !this.#writeback) this.#startWriteback(fh)
        if (this.#fileHasher) (await this.#fileHasher).advance(this.#flushed)
      } catch (e) {
        this.#error ??= e
        throw e
      }
    })
    // The queue must keep going after a failure so later calls see #error rather than hang.
    this.#queue = p.catch(() => {})
    return p
  }

  commit(expected: ExpectedBlob = {}): Promise<BlobInfo> {
    if (this.#state !== 'open') return Promise.reject(new StackerError('INTERNAL', `blob writer is ${this.#state}`))
    this.#state = 'committing'
    const p = this.#commit(expected)
    this.#committing = p
    return p
  }

  seal(): Promise<BlobInfo> {
    if (this.#state !== 'open') return Promise.reject(new StackerError('INTERNAL', `blob writer is ${this.#state}`))
    this.#sealing ??= this.#seal()
    return this.#sealing
  }

  /** Gets the bytes written so far to the disk while more are written, so that seal()'s fsync waits
   *  only for the tail rather than for the whole of a large blob. A failure is kept for seal(): the
   *  kernel reports a failed writeback to one fsync of the file only. */
  #startWriteback(fh: FileHandle): void {
    this.#writebackAt = this.#flushed
    this.#writeback = fh.datasync().then(
      () => {
        this.#writeback = undefined
      },
      (e: unknown) => {
        this.#error ??= e
        this.#writeback = undefined
      },
    )
  }

  async #seal(): Promise<BlobInfo> {
    await this.#queue
    await this.#writeback
    if (this.#error !== undefined) throw this.#error
    const fh = await this.#handle()
    const hashed = this.#fileHasher?.then((h) => h.finish(this.#flushed))
    hashed?.catch(() => {})
    await fh.sync()
    await fh.close()
    this.#fh = undefined
    const digest = hashed ? await hashed : this.#hasher ? this.#hasher.digest() : (this.#expected.digest as Digest)
    return { digest, size: this.#written }
  }

  async #commit(expected: ExpectedBlob): Promise<BlobInfo> {
    let held: (() => void) | undefined
    try {
      const { digest, size } = await (this.#sealing ?? this.#seal())
      checkExpected({ digest, size }, this.#expected)
      checkExpected({ digest, size }, expected)
      held = holdDigest(this.#ctx.state, digest)
      const final = this.#ctx.blobPath(digest)
      await this.#ctx.state.blobLock.run(async () => {
        if (await pathExists(final)) {
          await rm(this.path, { force: true })
        } else {
          await mkdir(join(final, '..'), { recursive: true })
          await rename(this.path, final)
        }
      })
      this.#finish('done')
      return { digest, size }
    } catch (e) {
      await this.#discard('aborted')
      throw e
    } finally {
      held?.()
    }
  }

  async abort(): Promise<void> {
    if (this.#state === 'committing') {
      // A commit in progress either lands the blob or removes the temp file itself.
      await this.#committing?.catch(() => {})
      return
    }
    if (this.#state === 'done' || this.#state === 'aborted') return
    this.#state = 'aborted'
    await this.#queue
    await this.#sealing?.catch(() => {})
    await this.#discard('aborted')
  }

  async #handle(): Promise<FileHandle> {
    if (!this.#fh) {
      await mkdir(join(this.#ctx.dir, TEMP_DIR), { recursive: true })
      this.#fh = await open(this.path, 'wx', 0o644)
      if (this.#offThread) {
        this.#fileHasher = openFileHasher(this.path, this.#offThread)
        // Awaited by the next write or the commit; a discard drops it.
        this.#fileHasher.catch(() => {})
      }
    }
    return this.#fh
  }

  async #discard(state: 'aborted'): Promise<void> {
    const fh = this.#fh
    this.#fileHasher?.then((h) => h.drop()).catch(() => {})
    this.#fh = undefined
    await this.#writeback
    try {
      await fh?.close()
    } catch {
      // The handle may already be closed by a failed commit; the file is removed below either way.
    }
    await rm(this.path, { force: true })
    this.#finish(state)
  }

  #finish(state: 'done' | 'aborted'): void {
    this.#state = state
    this.#ctx.state.tempFiles.delete(this.path)
    this.#releaseDigest?.()
    this.#unregister()
  }
}

/** Writes every byte of `chunks` at the file's position: one writev, and more only after a short
 *  write (which a regular file rarely does, but may on a full disk or a signal). */
async function writeAll(fh: FileHandle, chunks: readonly Uint8Array[], total: number): Promise<void> {
  let rest: readonly Uint8Array[] = chunks
  let left = total
  while (left > 0) {
    const { bytesWritten } = rest.length === 1 ? await fh.write(rest[0] as Uint8Array) : await fh.writev(rest)
    if (bytesWritten <= 0) throw Object.assign(new Error('the file took no bytes'), { code: 'EIO' })
    left -= bytesWritten
    if (left > 0) rest = skipBytes(rest, bytesWritten)
  }
}

/** `chunks` without their first `n` bytes (views, no copy). */
function skipBytes(chunks: readonly Uint8Array[], n: number): Uint8Array[] {
  const out: Uint8Array[] = []
  let skip = n
  for (const c of chunks) {
    if (skip >= c.byteLength) {
      skip -= c.byteLength
      continue
    }
    out.push(skip > 0 ? c.subarray(skip) : c)
    skip = 0
  }
  return out
}

export function checkExpected(actual: BlobInfo, expected: ExpectedBlob): void {
  if (expected.digest !== undefined && expected.digest !== actual.digest) {
    throw new StackerError(
      'DIGEST',
      `blob digest mismatch: expected ${expected.digest}, got ${actual.digest} (${actual.size} bytes)`,
    )
  }
  if (expected.size !== undefined && expected.size !== actual.size) {
    throw new StackerError(
      'DIGEST',
      `blob size mismatch for ${actual.digest}: expected ${expected.size} bytes, got ${actual.size}`,
    )
  }
}
