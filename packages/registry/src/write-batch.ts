import type { BlobWriter } from '@stacker/oci'

/**
 * Feeds a BlobWriter from a stream of small chunks (a socket's): chunks are gathered into pieces of
 * `pieceSize` bytes, and up to `inFlight` pieces are being written while more arrive, so the network
 * is not idle while the disk writes, nor the disk while the network reads, and the writer sees a few
 * large writes instead of thousands of small ones. A piece goes out as one writev of its chunks:
 * copying them into one buffer first costs more (a copy and fresh memory for every piece) than the
 * write itself. Not reusable: add() then flush(), once.
 */
/** Chunks in one writev at most: the system's IOV_MAX is 1024. */
const MAX_PARTS = 1024

export class WriteBatch {
  readonly #writer: BlobWriter
  readonly #pieceSize: number
  readonly #inFlight: number
  #parts: Uint8Array[] = []
  #bytes = 0
  readonly #pending: Promise<void>[] = []

  constructor(writer: BlobWriter, opts: { pieceSize?: number; inFlight?: number } = {}) {
    this.#writer = writer
    this.#pieceSize = opts.pieceSize ?? 1 << 20
    this.#inFlight = Math.max(1, opts.inFlight ?? 4)
  }

  /** Takes a chunk, which must not be modified afterwards. Resolves once there is room for more;
   *  rejects with the writer's error. */
  async add(chunk: Uint8Array): Promise<void> {
    this.#parts.push(chunk)
    this.#bytes += chunk.byteLength
    if (this.#bytes >= this.#pieceSize || this.#parts.length >= MAX_PARTS) await this.#emit()
  }

  /** Writes what is gathered and waits for every write; rejects with the first error. */
  async flush(): Promise<void> {
    if (this.#bytes > 0) this.#emit()
    const pending = this.#pending.splice(0)
    await Promise.all(pending)
  }

  #emit(): Promise<void> | undefined {
    const parts = this.#parts
    this.#parts = []
    this.#bytes = 0
    const p = this.#writer.writev(parts)
    // Awaited below or in flush(); until then a failure must not count as unhandled.
    p.catch(() => {})
    this.#pending.push(p)
    if (this.#pending.length >= this.#inFlight) return this.#pending.shift()
    return undefined
  }
}
