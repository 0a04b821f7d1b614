import type { Digest } from '@stacker/core'
import type { Descriptor, ImageIndex, Manifest } from '@stacker/oci'
import type { ImageRef } from './ref.js'

/** The annotation, on a pulled image's entry in a layout's index.json, that names where it was
 *  pulled from: `<registry>/<repository>` (no tag, no digest). */
export const SOURCE_ANNOTATION = 'io.stackeroci.source.repository'

/** What MountSources.addFromLayout reads of a layout; @stacker/oci's OciLayout is one. */
export interface AnnotatedLayoutLike {
  readIndex(): Promise<ImageIndex>
  readJson<T>(d: Digest): Promise<T>
}

/**
 * Which repositories of which registries are known to hold which blobs, so that a push to another
 * repository of the same registry can mount a blob instead of uploading it. In memory only; what it
 * says may be stale (the registry then answers the mount with an upload session, and the blob is
 * uploaded as usual), so it is a hint, never a promise.
 */
export class MountSources {
  /** registry -> digest -> repositories, latest first. */
  readonly #known = new Map<string, Map<Digest, string[]>>()

  /** Records that `registry`/`repository` holds `digests`. */
  add(registry: string, repository: string, digests: Iterable<Digest>): void {
    let byDigest = this.#known.get(registry)
    if (!byDigest) {
      byDigest = new Map()
      this.#known.set(registry, byDigest)
    }
    for (const d of digests) {
      const repos = byDigest.get(d) ?? []
      byDigest.set(d, [repository, ...repos.filter((r) => r !== repository)])
    }
  }

  /** A repository of `ref`'s registry, other than `ref`'s own, that holds `digest`. */
  sourceFor(ref: ImageRef, digest: Digest): string | undefined {
    return this.#known
      .get(ref.registry)
      ?.get(digest)
      ?.find((r) => r !== ref.repository)
  }

  /** sourceFor bound to `ref`: what pushImage's `mountFrom` takes. */
  forRef(ref: ImageRef): (digest: Digest) => string | undefined {
    return (digest) => this.sourceFor(ref, digest)
  }

  /** Records the blobs of every image in the layout whose index entry carries SOURCE_ANNOTATION
   *  (images pulled from a registry). Entries it cannot read are passed over. */
  async addFromLayout(layout: AnnotatedLayoutLike): Promise<void> {
    const index = await layout.readIndex()
    for (const entry of index.manifests ?? []) {
      const source = entry.annotations?.[SOURCE_ANNOTATION]
      const slash = source?.indexOf('/') ?? -1
      if (!source || slash <= 0) continue
      try {
        const m = await layout.readJson<Partial<Manifest>>(entry.digest)
        const blobs: Descriptor[] = [...(m.config ? [m.config] : []), ...(Array.isArray(m.layers) ? m.layers : [])]
        this.add(
          source.slice(0, slash),
          source.slice(slash + 1),
          blobs.map((b) => b.digest),
        )
      } catch {
        // A hint only: an unreadable entry means no mount, not a failure.
      }
    }
  }
}

/** The value of SOURCE_ANNOTATION for a reference. */
export function sourceAnnotation(ref: ImageRef): Record<string, string> {
  return { [SOURCE_ANNOTATION]: `${ref.registry}/${ref.repository}` }
}
