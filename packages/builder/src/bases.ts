import { createHash } from 'node:crypto'
import { mkdir, rm } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { StackerError, pathExists } from '@stacker/core'
import { extractTarLayer } from '@stacker/layers'
import { contentIdForBlob, FSIMAGE_PREFIX, registerFsImage } from './fs-contents.js'
import { deferBaseContent } from './pulled-contents.js'
import { layerKind, OciLayout, type Descriptor, type ImageConfig, type Manifest } from '@stacker/oci'
import { parseSource, type Layer } from '@stacker/stackerfile'
import { builtIdentity, openChain, type BuildContext, type BuiltLayer } from './context.js'
import { hashFile } from './hashing.js'
import { copyImport, type ResolvedImport } from './imports.js'

/** An image from a registry or an OCI layout that a chain of layers starts from. */
export interface BaseImage {
  layout: OciLayout
  descriptor: Descriptor
  manifest: Manifest
  config: ImageConfig
  /** Content ids of the image's layers, bottom to top (parallel to manifest.layers). */
  contents: string[]
}

export interface ResolvedBase {
  /** Part of the cache key: what the base is, by content. */
  key: string
  /** The filesystem the layer starts from. */
  chain: string[]
  parent?: BuiltLayer
  image?: BaseImage
  /** For `tar` bases: the tarball to unpack into the layer's own diff. */
  tarball?: string
}

export async function resolveBase(ctx: BuildContext, layer: Layer): Promise<ResolvedBase> {
  const from = layer.from
  if (!from) throw new StackerError('STACKERFILE', 'invalid layer: no base (from directive)', { pos: layer.pos })
  switch (from.type) {
    case 'scratch':
      return { key: 'scratch', chain: [] }
    case 'built': {
      const tag = from.tag ?? ''
      const parent = ctx.built.get(tag)
      if (!parent)
        throw new StackerError('DEPENDENCY', `couldn't find a cache of base layer for ${layer.name}: ${tag}`, {
          pos: from.pos,
          detail: { missing: [tag] },
        })
      return { key: `built:${builtIdentity(parent)}`, chain: [...parent.entry.chain], parent }
    }
    case 'tar': {
      const tarball = await acquireTar(ctx, layer)
      return { key: `tar:${await hashFile(tarball)}`, chain: [], tarball }
    }
    case 'oci': {
      const url = from.url ?? ''
      const i = url.indexOf(':')
      if (i < 0)
        throw new StackerError('STACKERFILE', `bad OCI base url ${JSON.stringify(url)}: expected <layout path>:<ref>`, {
          pos: from.pos,
        })
      if (url.startsWith('docker://')) return registryBase(ctx, layer, url)
      const image = await openLayoutImage(ctx, resolve(url.slice(0, i)), url.slice(i + 1), layer)
      return { key: `oci:${image.descriptor.digest}`, chain: [...image.contents], image }
    }
    case 'docker': {
      const url = from.url ?? ''
      if (url.startsWith('oci:')) {
        const rest = url.slice('oci:'.length)
        const i = rest.indexOf(':')
        const path = i < 0 ? rest : rest.slice(0, i)
        const ref = i < 0 ? 'latest' : rest.slice(i + 1)
        const image = await openLayoutImage(ctx, resolve(path), ref, layer)
        return { key: `oci:${image.descriptor.digest}`, chain: [...image.contents], image }
      }
      return registryBase(ctx, layer, url)
    }
    default:
      throw new StackerError('STACKERFILE', `unknown layer type: ${from.type}`, { pos: from.pos })
  }
}

async function registryBase(ctx: BuildContext, layer: Layer, url: string): Promise<ResolvedBase> {
  const { pullBase } = await import('./registry-base.js')
  const image = await pullBase(ctx, layer, url)
  await extractImageLayers(ctx, image)
  return { key: `docker:${image.descriptor.digest}`, chain: [...image.contents], image }
}

async function openLayoutImage(ctx: BuildContext, dir: string, ref: string, layer: Layer): Promise<BaseImage> {
  let layout: OciLayout
  try {
    layout = await OciLayout.open(dir, { create: false })
  } catch (e) {
    throw new StackerError(
      'NOT_FOUND',
      `couldn't open base image ${dir}:${ref} for ${layer.name}: ${(e as Error).message}`,
      { cause: e },
    )
  }
  const img = await layout.readImage(ref)
  const image: BaseImage = {
    layout,
    descriptor: img.descriptor,
    manifest: img.manifest,
    config: img.config,
    contents: img.manifest.layers.map(contentIdForBlob),
  }
  ctx.logger.info(`loading ${dir}:${ref}`)
  // The blobs are read in place, not copied; with --progress they are still announced the way a
  // copy of the image announces them, which scripts look for.
  for (const d of img.manifest.layers) {
    const label = d.digest.slice(0, d.digest.indexOf(':') + 13)
    const event = { id: `base:${d.digest}`, kind: 'pull', label, current: 0, total: d.size } as const
    ctx.logger.progress(event)
    ctx.logger.progress({ ...event, current: d.size, done: true })
  }
  await extractImageLayers(ctx, image)
  return image
}

/** Makes each layer of a base image available in the store once per digest, shared by every layer
 *  built on it: tar layers are kept as their blob and extracted by their first reader
 *  (pulled-contents.ts), or extracted now where the blob cannot be kept without a copy;
 *  squashfs/erofs ones are opened now. */
export async function extractImageLayers(ctx: BuildContext, image: BaseImage): Promise<void> {
  const stackerDir = ctx.s.dirs.stackerDir
  await Promise.all(
    image.manifest.layers.map(async (d, i) => {
      const id = image.contents[i] as string
      if (layerKind(d.mediaType) !== 'tar') {
        await registerFsImage(stackerDir, image.layout, d)
        return
      }
      if (await ctx.store.hasContent(id)) {
        await ctx.store.setBlobView(d.digest, id)
        return
      }
      if (await deferBaseContent(stackerDir, image.layout, id, d)) return
      await ctx.store.ensureContent(id, async (dir) => {
        ctx.logger.debug(`extracting ${d.digest} (${d.mediaType})`)
        await extractTarLayer(image.layout.openBlob(d.digest), dir, {
          ...(ctx.s.signal !== undefined ? { signal: ctx.s.signal } : {}),
          whiteouts: 'overlay',
          compression: 'auto',
          sourceDescription: d.digest,
        })
      })
      await ctx.store.setBlobView(d.digest, id)
    }),
  )
  await openChain(
    ctx,
    image.contents.filter((id) => id.startsWith(FSIMAGE_PREFIX)),
  )
}

/** Fetches a `tar` base into `<stacker-dir>/layer-bases/tar/`: a local path (relative to the cwd), an
 *  http(s) URL, or `stacker://<layer>/<path>`. */
async function acquireTar(ctx: BuildContext, layer: Layer): Promise<string> {
  const url = layer.from?.url ?? ''
  const src = layer.from?.source ?? parseSource(url)
  if (src.kind === 'local') {
    const p = resolve(url)
    if (!(await pathExists(p)))
      throw new StackerError('NOT_FOUND', `couldn't find tar base ${url}`, { pos: layer.from?.pos })
    return p
  }
  if (src.kind === 'unsupported')
    throw new StackerError('STACKERFILE', `unsupported url scheme ${src.scheme}`, { pos: layer.from?.pos })
  const dir = join(
    ctx.s.dirs.stackerDir,
    'layer-bases',
    'tar',
    createHash('sha256').update(url).digest('hex').slice(0, 32),
  )
  const file = join(dir, basename(url) || 'base.tar')
  await mkdir(dir, { recursive: true })
  if (src.kind === 'stacker') {
    const imp: ResolvedImport = {
      spec: { path: url, source: src, pos: layer.from?.pos ?? layer.pos },
      part: { path: url, kind: 'stacker', digest: '' },
      stacker: { layer: src.layer, path: src.path },
    }
    await rm(file, { force: true })
    await copyImport(ctx, imp, file, false)
    return file
  }
  const { resolveImports } = await import('./imports.js')
  const fake: Layer = { ...layer, imports: [{ path: url, source: src, pos: layer.from?.pos ?? layer.pos }] }
  const [r] = await resolveImports(ctx, fake)
  if (!r?.local) throw new StackerError('IMPORT', `couldn't download ${url}`)
  return r.local
}
