// What a layer is built from, worked out before anything runs: its imports, base and overlay_dirs
// (their digests make the cache key), and the chain of contents below its own diff.
import { dirname, join, resolve } from 'node:path'
import { digestHex, sha256Digest, StackerError, settleAll } from '@stacker/core'
import { layerDefinition, type Layer } from '@stacker/stackerfile'
import { resolveBase, type ResolvedBase } from './bases.js'
import { cacheKey, type CacheEntry, type CacheParts, type OverlayDirPart, type Origin } from './cache.js'
import type { BuildContext } from './context.js'
import { hashTree } from './hashing.js'
import { hasPulledContent } from './pulled-contents.js'
import { baseDirMeta, type DirMeta, destDirOf, destImportContent, resolveImports } from './imports.js'
import { resolveInRoot, withChainView } from './rootfs-path.js'
import { copyTree } from './util.js'

export async function resolveOverlayDirs(ctx: BuildContext, layer: Layer): Promise<OverlayDirPart[]> {
  const out: OverlayDirPart[] = []
  for (const od of layer.overlayDirs) {
    const { stat } = await import('node:fs/promises')
    let st: Awaited<ReturnType<typeof stat>>
    try {
      st = await stat(od.source)
    } catch {
      throw new StackerError('IMPORT', `Given overlay_dir ${od.source} doesn't exists`, { pos: layer.pos })
    }
    if (!st.isDirectory())
      throw new StackerError('IMPORT', `Given overlay_dir ${od.source} should be a directory`, { pos: layer.pos })
    const tree = await hashTree(od.source, ctx.hashes)
    out.push({ source: od.source, dest: od.dest || '/', digest: tree.digest, entries: tree.entries })
  }
  return out
}

/** The ids of `chain` whose content is gone (e.g. the roots dir was deleted). */
export async function missingContent(ctx: BuildContext, chain: readonly string[]): Promise<string[]> {
  const out: string[] = []
  for (const id of chain)
    if (!(await ctx.store.hasContent(id)) && !(await hasPulledContent(ctx.s.dirs.stackerDir, id))) out.push(id)
  return out
}

/** Upstream's words when a layer's inputs are unchanged but what it built is gone. */
export function missingContentReason(
  overlayDirs: readonly OverlayDirPart[],
  chain: readonly string[],
  missing: readonly string[],
): string {
  // The layer's own overlay_dir copies are the last ones of its chain, in overlay_dirs order.
  const own = chain.filter((id) => id.startsWith(OVERLAY_DIR_PREFIX)).slice(-overlayDirs.length)
  const i = own.findIndex((id) => missing.includes(id))
  const od = overlayDirs.length > 0 && i >= 0 ? overlayDirs[i] : undefined
  if (od) return `cache miss because overlay_dir was missing: ${od.source}`
  return `cache miss because the layer's filesystem was missing: ${missing[0]}`
}

export const OVERLAY_DIR_PREFIX = 'ovl_'

/** The content id of an overlay_dir copy: its source tree's digest and where it lands in the image
 *  (`dest` with the base's symlinks resolved). */
export function overlayDirContentId(od: OverlayDirPart, dest: string): string {
  // `owner0`: contents made before the copy dropped host ownership must not be reused.
  return `${OVERLAY_DIR_PREFIX}${digestHex(sha256Digest(`${od.digest}|${dest}|owner0`)).slice(0, 32)}`
}

export function originOf(base: ResolvedBase): Origin {
  if (base.parent) return { kind: 'parent', name: base.parent.layer.name }
  if (base.image)
    return {
      kind: 'image',
      layout: base.image.layout.dir,
      digest: base.image.descriptor.digest,
      contents: base.image.contents,
    }
  return { kind: 'empty' }
}

/** The directory a layer's relative paths are resolved against, as its stackerfile was loaded (the
 *  file's dir; the working directory for a stackerfile given by URL). */
export function stackerfileDir(ctx: BuildContext, layer: Layer): string {
  return ctx.set.files.get(layer.file)?.referenceDir ?? dirname(resolve(layer.file))
}

/** Everything a layer's cache key needs, worked out before anything runs (docs/architecture.md, "The cache"). */
export async function planLayer(ctx: BuildContext, layer: Layer) {
  // The base (a pull, perhaps) is found while the imports and overlay_dirs are hashed; an error of
  // the imports comes first, then the base's.
  const [[imports, overlayDirs], base] = await settleAll([
    resolveImports(ctx, layer).then(async (i) => [i, await resolveOverlayDirs(ctx, layer)] as const),
    resolveBase(ctx, layer),
  ])
  const parts: CacheParts = {
    name: layer.name,
    definition: layerDefinition(layer),
    base: base.key,
    sourceDateEpoch: ctx.s.sourceDateEpoch ?? null,
    imports: imports.map((i) => i.part),
    overlayDirs,
  }
  return { imports, base, overlayDirs, parts, key: cacheKey(parts, stackerfileDir(ctx, layer)) }
}

/** The cached entry of a layer if its inputs are unchanged and its filesystem is still there. */
export async function cachedEntry(ctx: BuildContext, layer: Layer): Promise<CacheEntry | undefined> {
  const { key } = await planLayer(ctx, layer)
  const hit = await ctx.cache.get(key)
  return hit && (await missingContent(ctx, hit.chain)).length === 0 ? hit : undefined
}

export type LayerPlan = Awaited<ReturnType<typeof planLayer>>

/** The layer's chain before its run: its base's, then a content dir per overlay_dir and per
 *  import with `dest` (made here if missing), with their history notes. */
export async function prepareChain(
  ctx: BuildContext,
  layer: Layer,
  plan: LayerPlan,
): Promise<{ chain: string[]; chainNotes: string[] }> {
  const { base, overlayDirs, imports } = plan
  const log = ctx.logger
  const chain = [...base.chain]
  const chainNotes = base.parent ? [...base.parent.entry.chainNotes] : base.chain.map(() => 'base image layer')
  const overlayNote = `stacker overlay dir for ${layer.name}`
  const destImports = imports.filter((i) => i.spec.dest !== undefined)
  // Destinations are resolved in the base's filesystem, so one that passes through a symlinked dir
  // (`/lib -> usr/lib`) writes where the link points and the link stays a link.
  // The directories an import lands in keep the owner and mode they have in the base: the import's
  // layer holds them too, and would otherwise reset them (a /tmp without its sticky bit, a WORKDIR
  // made for a user taken back by root).
  const view =
    overlayDirs.length + destImports.length > 0 && chain.length > 0
      ? await withChainView(ctx, chain, async (root) => {
          const seen = new Map<string, string>()
          const dirs = new Map<string, DirMeta[]>()
          for (const d of [...overlayDirs.map((o) => o.dest), ...destImports.map((i) => destDirOf(i))])
            seen.set(d, resolveInRoot(root, d))
          for (const imp of destImports) {
            const d = seen.get(destDirOf(imp)) ?? destDirOf(imp)
            dirs.set(d, await baseDirMeta(root, d))
          }
          return { resolveDest: (d: string) => seen.get(d) ?? d, dirMeta: (d: string) => dirs.get(d) ?? [] }
        })
      : { resolveDest: (d: string) => d, dirMeta: (): DirMeta[] => [] }
  const resolveDest = view.resolveDest
  for (const od of overlayDirs) {
    const dest = resolveDest(od.dest)
    if (dest !== resolve('/', od.dest)) log.info(`overlay dest ${od.dest} is a symlink, patching to ${dest}`)
    const id = overlayDirContentId(od, dest)
    await ctx.store.ensureContent(id, async (dir) => {
      await copyTree(od.source, join(dir, dest), { contents: true, ownership: false })
    })
    chain.push(id)
    chainNotes.push(overlayNote)
  }
  for (const imp of destImports) {
    const dir = resolveDest(destDirOf(imp))
    chain.push(await destImportContent(ctx, imp, dir, view.dirMeta(dir)))
    chainNotes.push(overlayNote)
  }
  return { chain, chainNotes }
}
