// The pieces of a blob upload: progress reported in steps, and one byte stream cut into the exact
// sizes of PATCH chunks.
import { StackerError, type Logger } from '@stacker/core'
import type { Descriptor } from '@stacker/oci'

/** Bytes between two progress reports of one transfer. */
export const PROGRESS_STEP = 1 << 20

/** `sha256:` and the first 12 hex digits: how progress lines name a blob. */
export function shortDigest(d: string): string {
  return d.slice(0, d.indexOf(':') + 13)
}

/** Reports upload progress in steps so a large blob does not flood the logger. */
export class UploadProgress {
  #current = 0
  #reported = 0
  readonly #logger: Logger
  readonly #desc: Descriptor
  constructor(logger: Logger, desc: Descriptor) {
    this.#logger = logger
    this.#desc = desc
  }
  add(n: number): void {
    this.#current += n
    if (this.#current - this.#reported >= PROGRESS_STEP) {
      this.#reported = this.#current
      this.#emit(false)
    }
  }
  done(): void {
    this.#emit(true)
  }
  #emit(done: boolean): void {
    const d = this.#desc
    this.#logger.progress({
      id: d.digest,
      kind: 'push',
      label: shortDigest(d.digest),
      current: this.#current,
      total: d.size,
      ...(done ? { done } : {}),
    })
  }
}

/** Cuts one byte stream into consecutive pieces of exact sizes, without copying more than needed. */
export class ChunkReader {
  readonly #it: AsyncIterator<Uint8Array>
  #pending: Uint8Array | undefined
  #ended = false

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]()
  }

  async *take(n: number, progress: UploadProgress): AsyncGenerator<Uint8Array> {
    let left = n
    while (left > 0) {
      let chunk = this.#pending
      this.#pending = undefined
      if (!chunk) {
        if (this.#ended) break
        const r = await this.#it.next()
        if (r.done) {
          this.#ended = true
          break
        }
        chunk = r.value
      }
      if (chunk.byteLength > left) {
        this.#pending = chunk.subarray(left)
        chunk = chunk.subarray(0, left)
      }
      left -= chunk.byteLength
      progress.add(chunk.byteLength)
      yield chunk
    }
    if (left > 0) throw new StackerError('DIGEST', `blob source ended ${left} bytes short`)
  }

  /** Fails if the source has bytes beyond the descriptor's size. */
  async expectEnd(desc: Descriptor): Promise<void> {
    if (this.#pending && this.#pending.byteLength > 0) {
      throw new StackerError('DIGEST', `blob ${desc.digest} is larger than its ${desc.size} bytes`)
    }
    if (this.#ended) return
    for (;;) {
      const r = await this.#it.next()
      if (r.done) break
      if (r.value.byteLength > 0) {
        throw new StackerError('DIGEST', `blob ${desc.digest} is larger than its ${desc.size} bytes`)
      }
    }
    this.#ended = true
  }

  async close(): Promise<void> {
    if (!this.#ended) {
      this.#ended = true
      await this.#it.return?.()
    }
  }
}
