// What a built or found layer leaves behind: its record and roots views, and its outputs' tags.
import type { Descriptor } from '@stacker/oci'
import type { CacheEntry } from './cache.js'
import type { BuildContext, BuiltLayer } from './context.js'
import { ensureOutput } from './image.js'
import { outputKey, tagFor } from './types.js'

/** Points the layer's record (what chroot, grab and stacker:// read) and its roots views at `entry`,
 *  the filesystem this build uses for it: a cache hit may name another state than the last build. */
export async function recordLayer(ctx: BuildContext, entry: CacheEntry): Promise<void> {
  const rec = await ctx.store.readLayer(entry.name)
  const same =
    rec !== undefined &&
    rec.chain.length === entry.chain.length &&
    rec.chain.every((id, i) => id === entry.chain[i]) &&
    (rec.meta as { key?: unknown } | undefined)?.key === entry.key
  if (!same) await ctx.store.writeLayer(entry.name, { version: 1, chain: entry.chain, meta: { key: entry.key } })
  await ctx.store.setLayerView(entry.name, entry.ownContent ?? undefined)
}

export type LayerResult = { built: BuiltLayer; tags: Array<[string, Descriptor]>; closing?: string }

/** Makes every requested output of a layer, reusing cached ones, and returns the tags to set. */
export async function writeOutputs(
  ctx: BuildContext,
  b: BuiltLayer,
  cached: boolean,
): Promise<Array<[string, Descriptor]>> {
  const tags: Array<[string, Descriptor]> = []
  let added = false
  for (const out of ctx.outputs) {
    const k = outputKey(out)
    const prev = b.entry.outputs[k]
    const had = prev !== undefined && (await ctx.layout.hasBlob(prev.digest))
    // What ensureOutput returns for an output whose manifest is there, without asking again.
    const desc = had ? prev : await ensureOutput(ctx, b, out)
    if (!had) added = true
    const tag = tagFor(b.layer.name, out.type)
    if (cached && had) ctx.logger.info(`found cached layer ${tag}`)
    else if (cached) ctx.logger.info(`generating missing output ${tag} from the cached filesystem`)
    tags.push([tag, desc])
  }
  if (cached && added) await ctx.cache.put(b.entry)
  return tags
}
