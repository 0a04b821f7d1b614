// Layers taken from the shared build cache (`--cache-from`) instead of being run.
import { StackerError } from '@stacker/core'
import type { Layer } from '@stacker/stackerfile'
import { CACHE_VERSION, type CacheEntry } from './cache.js'
import type { BuildContext, BuiltLayer } from './context.js'
import { seedProjection } from './projections.js'
import { hasPulledContent, registerPulledContent } from './pulled-contents.js'
import { contentIdFor, DIFF_PREFIX } from './content.js'
import { outputKey, type OutputType } from './types.js'
import { originOf, prepareChain, type LayerPlan } from './layer-inputs.js'
import { recordLayer, writeOutputs, type LayerResult } from './layer-outputs.js'

/** Connects to the `--cache-from` registries while the first layers hash their inputs, when some
 *  layer has never been built here (a fresh machine asks the shared cache for every layer). */
export async function warmRemoteCache(ctx: BuildContext, order: readonly Layer[]): Promise<void> {
  for (const l of order)
    if (l.binds.length === 0 && !(await ctx.cache.lastFor(l.name))) {
      ctx.remote?.warm()
      return
    }
}

/**
 * Uses the shared cache's record of the layer's key instead of running it: the chain below the
 * layer's own diff is made here (base, overlay_dirs, `dest` imports, as a build would), the
 * record's blobs are pulled (verified), its own diff is extracted and checked against its content
 * id, and the outputs are made from the pulled projections. Undefined (after one warning line)
 * when anything does not fit: the layer is then built locally.
 */
export async function useRemoteRecord(
  ctx: BuildContext,
  layer: Layer,
  plan: LayerPlan,
): Promise<LayerResult | undefined> {
  const remote = ctx.remote
  if (!remote) return undefined
  const log = ctx.logger
  const found = await remote.find(layer, plan.key, log)
  if (!found) return undefined
  const { record } = found
  try {
    const prepared = await prepareChain(ctx, layer, plan)
    const own = record.ownContent
    if (own !== null && !own.startsWith(DIFF_PREFIX))
      throw new StackerError('REGISTRY', `bad own content id ${own}`, {
        detail: { reason: 'protocol', retryable: false },
      })
    const expected = [...prepared.chain, ...(own !== null ? [own] : [])]
    if (expected.length !== record.chain.length || expected.some((id, i) => id !== record.chain[i]))
      throw new StackerError('REGISTRY', "its filesystem chain differs from this machine's", {
        detail: { reason: 'protocol', retryable: false },
      })
    const outs = layer.buildOnly ? [] : ctx.outputs
    for (const out of outs)
      if (!record.outputs[outputKey(out)])
        throw new StackerError('REGISTRY', `it has no ${outputKey(out)} output`, {
          detail: { reason: 'protocol', retryable: false },
        })
    const keys = new Set(outs.map(outputKey))
    const projections = record.projections.filter((p) => keys.has(p.output))
    const stackerDir = ctx.s.dirs.stackerDir
    const ownBlob =
      own !== null && !(await ctx.store.hasContent(own)) && !(await hasPulledContent(stackerDir, own))
        ? record.ownContentBlob
        : null
    if (own !== null && ownBlob && contentIdFor(ownBlob.diffId, ctx.s.sourceDateEpoch) !== own)
      throw new StackerError('DIGEST', `content id ${own} does not match its diff ${ownBlob.diffId}`)
    await remote.fetchBlobs(
      ctx,
      found,
      [...projections.map((p) => p.descriptor), ...(ownBlob ? [ownBlob.descriptor] : [])],
      new Map(ownBlob ? [[ownBlob.descriptor.digest, ownBlob.diffId]] : []),
    )
    // The diff is extracted (and checked again, tree against id) when something first reads it.
    if (own !== null && ownBlob)
      await registerPulledContent(stackerDir, ctx.layout, own, ownBlob.descriptor, {
        diffId: ownBlob.diffId,
        sourceDateEpoch: ctx.s.sourceDateEpoch ?? null,
      })
    for (const p of projections) {
      const out = outs.find((o) => outputKey(o) === p.output) as OutputType
      await seedProjection(
        ctx,
        p.content,
        out,
        { uncompressed: p.uncompressed, allowEmpty: p.allowEmpty },
        { descriptor: p.descriptor, diffId: p.diffId },
      )
    }
    const entry: CacheEntry = {
      version: CACHE_VERSION,
      name: layer.name,
      key: plan.key,
      parts: plan.parts,
      chain: expected,
      chainNotes: [...prepared.chainNotes, ...(own !== null ? [`stacker build of ${layer.name}`] : [])],
      buildOnly: layer.buildOnly,
      origin: originOf(plan.base),
      ownContent: own,
      generatedLabels: record.generatedLabels.map(([k, v]) => [k, v]),
      outputs: {},
    }
    const built: BuiltLayer = { layer, entry }
    ctx.built.set(layer.name, built)
    const tags = layer.buildOnly ? [] : await writeOutputs(ctx, built, false)
    await ctx.cache.put(entry)
    await recordLayer(ctx, entry)
    for (const [k, desc] of Object.entries(entry.outputs)) {
      const theirs = record.outputs[k]
      if (theirs && theirs.manifest !== desc.digest)
        log.debug(`${layer.name} ${k}: manifest ${desc.digest} here, ${theirs.manifest} where the cache was pushed`)
    }
    log.info(`found remote cached layer ${layer.name}`)
    return { built, tags }
  } catch (e) {
    ctx.s.signal?.throwIfAborted()
    ctx.built.delete(layer.name)
    const why = e instanceof Error ? e.message : String(e)
    log.warn(`remote cached layer ${layer.name} in ${found.endpoint.label} is unusable (${why}); building it locally`)
    return undefined
  }
}
