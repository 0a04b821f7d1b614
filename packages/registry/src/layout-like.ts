import { type Digest, StackerError, type StackerErrorCode } from '@stacker/core'
import { subjectError, subjectOf } from './errors.js'
import type { BlobInfo, BlobWriter, Descriptor, ExpectedBlob } from '@stacker/oci'

/** What pull and push need of an OCI layout; @stacker/oci's OciLayout is one. */
export interface OciLayoutLike {
  hasBlob(d: Digest): Promise<boolean>
  /** A writer whose bytes become visible only at commit(), which verifies `expected`. */
  createBlobWriter(expected?: ExpectedBlob): BlobWriter
  putBlob(data: Uint8Array, expected?: ExpectedBlob): Promise<BlobInfo>
  /** The blob's bytes; the stream errors if the stored content does not match its digest. */
  openBlob(d: Digest): AsyncIterable<Uint8Array>
  readBlob(d: Digest): Promise<Buffer>
  /** Where the blob's file is, for a layout that has one per blob: uploads then read it directly, in
   *  larger pieces than openBlob's. */
  blobPath?(d: Digest): string
  /** A tag or digest to its descriptor (NOT_FOUND otherwise). */
  resolve(ref: string): Promise<Descriptor>
  setTag(name: string, desc: Descriptor): Promise<void>
}

/** Runs `fn`; an error not already about `prefix` gets it (`<prefix>: <message>`), so every error of
 *  a pull or push is one line naming the reference. Code, hint and detail are kept. */
export async function withContext<T>(prefix: string, code: StackerErrorCode, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (e) {
    if (e instanceof StackerError) {
      if (subjectOf(e) === prefix) throw e
      throw subjectError(prefix, e.code, e.message, {
        cause: e,
        ...(e.hint !== undefined ? { hint: e.hint } : {}),
        ...(e.detail !== undefined ? { detail: e.detail } : {}),
      })
    }
    const msg = e instanceof Error ? e.message : String(e)
    throw subjectError(prefix, code, msg.replace(/\s+/g, ' '), { cause: e })
  }
}
