import type { Digest } from '@stacker/core'
import { Mutex } from '@stacker/core'

/** Per-layout-path coordination shared by every OciLayout instance on that path in this process. */
export interface LayoutState {
  /** Serialises index.json read-modify-write and gc. */
  readonly indexLock: Mutex
  /** Serialises a blob's final rename against gc's deletions. */
  readonly blobLock: Mutex
  /** Temp files being written now. */
  readonly tempFiles: Set<string>
  /** Digests a writer is about to publish (known up front via `expected`, or at commit). Counted. */
  readonly digests: Map<Digest, number>
}

const states = new Map<string, LayoutState>()

export function layoutState(absDir: string): LayoutState {
  let s = states.get(absDir)
  if (!s) {
    s = { indexLock: new Mutex(), blobLock: new Mutex(), tempFiles: new Set(), digests: new Map() }
    states.set(absDir, s)
  }
  return s
}

/** Marks `d` in flight; the returned function unmarks it (once). */
export function holdDigest(s: LayoutState, d: Digest): () => void {
  s.digests.set(d, (s.digests.get(d) ?? 0) + 1)
  let released = false
  return () => {
    if (released) return
    released = true
    const n = (s.digests.get(d) ?? 1) - 1
    if (n <= 0) s.digests.delete(d)
    else s.digests.set(d, n)
  }
}
