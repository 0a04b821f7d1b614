import { canonicalJson } from '@stacker/core'
import { Annotations, type Descriptor, type OciLayout } from '@stacker/oci'

/**
 * Sets a build's tags, in build order, as `OciLayout.setTag` would one after the other, without
 * rewriting index.json (an fsync'd atomic write per tag) when that would give the file it already
 * is. setTag moves a tag to the end of the index, so after a build its tags are, in order, the end
 * of the index. While the index already holds, one after the other, exactly the entries being set,
 * setting them is put off; at the first difference the put-off tags are set after all, in order,
 * and everything after is set as it comes. `finish()`, after the last tag of a successful build,
 * sets the put-off tags unless they were the very end of the index with no duplicate before them.
 * Either way the index ends up as setting every tag makes it. A build that fails leaves put-off
 * tags where they were, with the entries they would have been given.
 *
 * One per build; not for concurrent use (the build applies tags one at a time).
 */
export class TagWriter {
  readonly #layout: OciLayout
  #index: Descriptor[] | undefined
  #next = -1
  #deferred: Array<[string, Descriptor]> = []
  #diverged = false

  constructor(layout: OciLayout) {
    this.#layout = layout
  }

  async set(tag: string, desc: Descriptor): Promise<void> {
    if (!this.#diverged) {
      if (this.#index === undefined) {
        this.#index = (await this.#layout.readIndex()).manifests
        this.#next = this.#index.findIndex((m) => refName(m) === tag)
      }
      const current = this.#next >= 0 ? this.#index[this.#next] : undefined
      const again = this.#deferred.some(([t]) => t === tag)
      if (!again && current !== undefined && canonicalJson(current) === canonicalJson(tagEntry(tag, desc))) {
        this.#deferred.push([tag, desc])
        this.#next++
        return
      }
      await this.#diverge()
    }
    await this.#layout.setTag(tag, desc)
  }

  async finish(): Promise<void> {
    if (this.#diverged || this.#index === undefined || this.#deferred.length === 0) return
    const start = this.#next - this.#deferred.length
    const names = new Set(this.#deferred.map(([t]) => t))
    const atEnd = this.#next === this.#index.length
    if (atEnd && !this.#index.slice(0, start).some((m) => names.has(refName(m) ?? ''))) return
    await this.#diverge()
  }

  async #diverge(): Promise<void> {
    this.#diverged = true
    const deferred = this.#deferred
    this.#deferred = []
    for (const [t, d] of deferred) await this.#layout.setTag(t, d)
  }
}

function refName(d: Descriptor): string | undefined {
  return d.annotations?.[Annotations.refName]
}

/** The index entry `OciLayout.setTag(tag, desc)` writes. Should the two ever differ, entries never
 *  compare equal and every tag is written: slower, never wrong. */
function tagEntry(tag: string, desc: Descriptor): Descriptor {
  const entry: Descriptor = { mediaType: desc.mediaType, digest: desc.digest, size: desc.size }
  if (desc.platform) entry.platform = desc.platform
  if (desc.urls) entry.urls = desc.urls
  if (desc.artifactType !== undefined) entry.artifactType = desc.artifactType
  entry.annotations = { ...(desc.annotations ?? {}), [Annotations.refName]: tag }
  return entry
}
