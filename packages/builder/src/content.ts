import { lstatSync, readdirSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { getAttributeSync, removeAttributeSync } from '@napi-rs/xattr'
import { digestHex, Hasher, sha256Digest, type Digest } from '@stacker/core'
import { createTarStream, OVERLAY_OPAQUE_XATTR } from '@stacker/layers'
import { type BuildContext, openChain } from './context.js'

/** Content ids of generated layer diffs start with this; the rest is derived from the content. */
export const DIFF_PREFIX = 'd_'

/**
 * Stores what a build wrote into `upper` as an immutable content dir and returns its id, or
 * undefined when the build changed nothing. The id is derived from the content itself (the digest
 * of its canonical tar, with SOURCE_DATE_EPOCH's clamping), never from the layer's inputs: a rebuild
 * that produces other bytes (`--no-cache`, binds, a step whose output is not a function of its
 * inputs) gets another id, so nothing stored earlier can stand in for it, and one that produces the
 * same bytes shares the stored dir. `upper` is moved away (or removed when that content is stored
 * already). `lower` is the chain the build ran on, bottom to top.
 */
export async function commitLayerContent(
  ctx: BuildContext,
  upper: string,
  lower: readonly string[],
): Promise<string | undefined> {
  if ((await readdir(upper)).length === 0) return undefined
  // The chain is read only here, for what the opaque marks hide: a layer that wrote nothing leaves
  // base layers that nothing else reads unextracted.
  await openChain(ctx, lower)
  dropNeedlessOpaqueMarks(
    upper,
    lower.map((id) => ctx.store.contentPath(id)),
  )
  const digest = await contentDigest(upper, ctx.s.sourceDateEpoch)
  const id = contentIdFor(digest, ctx.s.sourceDateEpoch)
  await ctx.store.adoptContent(id, upper)
  return id
}

/** The sha256 of the tar layer `dir` projects to (its diff_id with the same SOURCE_DATE_EPOCH):
 *  names, types, modes, owners, clamped mtimes, xattrs, hard links, whiteouts and file bytes. */
export async function contentDigest(dir: string, sourceDateEpoch: number | undefined): Promise<Digest> {
  const h = new Hasher()
  const tar = createTarStream(dir, sourceDateEpoch !== undefined ? { sourceDateEpoch } : {})
  for await (const chunk of tar) h.update(chunk)
  return h.digest()
}

/** The clamping depends on the epoch, so the id does too: two trees whose tars agree under one
 *  epoch may differ under another, and must not share a dir that a later projection re-clamps. */
export function contentIdFor(digest: Digest, sourceDateEpoch: number | undefined): string {
  return `${DIFF_PREFIX}${digestHex(sha256Digest(`${digest}|${sourceDateEpoch ?? 'none'}`)).slice(0, 48)}`
}

/**
 * overlayfs marks a directory opaque whenever it cannot tell that nothing below needs hiding: a dir
 * renamed into place (`mv foo.new foo`) gets the mark even where no lower layer has `foo`. Such a
 * mark hides nothing, yet would put a `.wh..wh..opq` entry into the layer. It is removed where no
 * lower content dir has a directory at that path; a mark that may hide something is kept.
 */
export function dropNeedlessOpaqueMarks(upper: string, lowerDirs: readonly string[]): number {
  let dropped = 0
  const walk = (rel: string): void => {
    const abs = join(upper, rel)
    for (const e of readdirSync(abs, { withFileTypes: true })) {
      if (!e.isDirectory()) continue
      const childRel = rel ? `${rel}/${e.name}` : e.name
      const childAbs = join(abs, e.name)
      if (isOpaque(childAbs) && !lowerDirs.some((d) => isDirAt(join(d, childRel)))) {
        removeAttributeSync(childAbs, OVERLAY_OPAQUE_XATTR)
        dropped++
      }
      walk(childRel)
    }
  }
  walk('')
  return dropped
}

function isOpaque(path: string): boolean {
  try {
    return getAttributeSync(path, OVERLAY_OPAQUE_XATTR)?.toString() === 'y'
  } catch {
    return false
  }
}

function isDirAt(path: string): boolean {
  try {
    return lstatSync(path).isDirectory()
  } catch {
    return false
  }
}
