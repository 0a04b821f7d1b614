import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { StackerError } from '@stacker/core'
import { OciLayout } from '@stacker/oci'
import { parseImageRef, pullImage, RegistryClient, sourceAnnotation } from '@stacker/registry'
import type { Layer } from '@stacker/stackerfile'
import type { BaseImage } from './bases.js'
import { contentIdForBlob } from './fs-contents.js'
import type { BuildContext } from './context.js'

/** Pulls a `docker://` base into `<stacker-dir>/layer-bases/oci`, cached by manifest digest: blobs
 *  already held are not fetched again, and when the registry cannot be reached a cached copy is used. */
export async function pullBase(ctx: BuildContext, layer: Layer, url: string): Promise<BaseImage> {
  const dir = join(ctx.s.dirs.stackerDir, 'layer-bases', 'oci')
  // Layers building in parallel often share a base (or its blobs): one pull at a time into the
  // layout, so the second finds the blobs the first fetched instead of fetching them again.
  return ctx.flights.basePulls.run(dir, () => pullBaseNow(ctx, layer, url, dir))
}

async function pullBaseNow(ctx: BuildContext, layer: Layer, url: string, dir: string): Promise<BaseImage> {
  const ref = parseImageRef(url)
  const layout = await OciLayout.open(dir, { create: true, logger: ctx.logger })
  const cacheTag = `b${createHash('sha256').update(`${ref.toString()}|${layer.os}|${layer.arch}`).digest('hex').slice(0, 40)}`
  const cached = await layout.getTag(cacheTag)
  let descriptor = cached
  if (!(ref.digest && cached && cached.digest === ref.digest)) {
    // The client finds credentials in auth.json itself, and so can name their source in a 401.
    const client = new RegistryClient(ref, { insecure: !!layer.from?.insecure, logger: ctx.logger })
    try {
      ctx.logger.info(`loading ${url}`)
      descriptor = await pullImage({
        ref,
        layout,
        platform: { os: layer.os, architecture: layer.arch },
        tag: cacheTag,
        // Where the blobs came from, so `stacker publish` to the same registry can mount them.
        tagAnnotations: sourceAnnotation(ref),
        client,
        logger: ctx.logger,
      })
    } catch (e) {
      const err = e instanceof StackerError ? e : new StackerError('REGISTRY', String(e))
      const unreachable =
        err.code === 'REGISTRY' &&
        /refused|unknown host|timed out|ECONN|ENOTFOUND|EAI_AGAIN|unreachable/i.test(err.message)
      if (!cached || !unreachable) throw err
      ctx.logger.warn(`${err.message}; using the cached copy of ${url} (${cached.digest})`)
      descriptor = cached
    } finally {
      client.close()
    }
  }
  if (!descriptor) throw new StackerError('REGISTRY', `couldn't pull ${url}`)
  const img = await layout.readImage(descriptor.digest)
  return {
    layout,
    descriptor: img.descriptor,
    manifest: img.manifest,
    config: img.config,
    contents: img.manifest.layers.map(contentIdForBlob),
  }
}
