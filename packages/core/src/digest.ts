import { createHash, type Hash } from 'node:crypto'
import { StackerError } from './errors.js'

/** An OCI content digest. Only sha256 is produced; sha512 is accepted on input. */
export type Digest = `${'sha256' | 'sha512'}:${string}`

const DIGEST_RE = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/

/** Whether `s` is a well-formed sha256 or sha512 digest (lowercase hex of the right length). */
export function isDigest(s: string): s is Digest {
  return DIGEST_RE.test(s)
}

/** Validates a digest string; throws DIGEST with the offending text otherwise. */
export function parseDigest(s: string): Digest {
  if (!isDigest(s)) throw new StackerError('DIGEST', `invalid digest ${JSON.stringify(s)}`)
  return s
}

/** The hex part of a digest, as blob files are named. */
export function digestHex(d: Digest): string {
  return d.slice(d.indexOf(':') + 1)
}

/** The algorithm part of a digest. */
export function digestAlgorithm(d: Digest): 'sha256' | 'sha512' {
  return d.startsWith('sha512:') ? 'sha512' : 'sha256'
}

/** The sha256 digest of bytes (a string is hashed as UTF-8). */
export function sha256Digest(data: string | Uint8Array): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

/** Incremental digest with a byte count, for streaming writers. */
export class Hasher {
  readonly #hash: Hash
  #size = 0
  readonly algorithm: 'sha256' | 'sha512'
  constructor(algorithm: 'sha256' | 'sha512' = 'sha256') {
    this.algorithm = algorithm
    this.#hash = createHash(algorithm)
  }
  update(chunk: Uint8Array): void {
    this.#hash.update(chunk)
    this.#size += chunk.byteLength
  }
  get size(): number {
    return this.#size
  }
  digest(): Digest {
    return `${this.algorithm}:${this.#hash.digest('hex')}`
  }
}
