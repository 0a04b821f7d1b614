import { randomBytes } from 'node:crypto'
import { lstat, mkdir, readdir, readlink, rename, rm, symlink } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import { isDirectory } from '@stacker/core'
import { removeTree } from './mounts.js'

// The views beside the store in the roots dir, where upstream keeps its dirs: `<name>/overlay` and
// `<name>/rootfs` for layers, `sha256_<hex>/overlay` for layer blobs. They are symlinks into the
// store's content, so nothing in them is ever the only copy.

const BLOB_VIEW = /^sha256_[0-9a-f]{64}$/

/** `<roots>/<name>`, where a layer's views go; undefined for names that cannot have one there
 *  (they would reach outside the roots dir or into the store). */
export function layerViewDir(rootsDir: string, name: string): string | undefined {
  const parts = name.split('/')
  if (parts.some((p) => p === '' || p === '.' || p === '..') || parts[0]?.startsWith('.')) return undefined
  if (BLOB_VIEW.test(parts[0] ?? '')) return undefined
  return join(rootsDir, ...parts)
}

/** Points the views in `dir` at a layer's state: `overlay` at `ownContent` (an empty dir when
 *  undefined) and an empty `rootfs`. Replaces what was there atomically. */
export async function setLayerViewAt(dir: string, ownContent: string | undefined): Promise<void> {
  if (!(await isDirectory(join(dir, 'rootfs')))) await mkdir(join(dir, 'rootfs'), { recursive: true })
  if (ownContent === undefined) {
    const overlay = join(dir, 'overlay')
    const st = await lstat(overlay).catch(() => undefined)
    if (st?.isDirectory()) return
    if (st) await rm(overlay, { force: true })
    await mkdir(overlay)
    return
  }
  await pointAt(join(dir, 'overlay'), ownContent)
}

/** `<roots>/sha256_<hex>/overlay` -> `content`; digests of other algorithms get no view. */
export async function setBlobViewAt(rootsDir: string, digest: string, content: string): Promise<void> {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest)
  if (!m) return
  const link = join(rootsDir, `sha256_${m[1]}`, 'overlay')
  await mkdir(dirname(link), { recursive: true })
  await pointAt(link, content)
}

/** Removes `sha256_<hex>` views whose content is gone. */
export async function pruneBlobViews(rootsDir: string): Promise<void> {
  for (const name of await readdir(rootsDir)) {
    if (!BLOB_VIEW.test(name)) continue
    if (await isDirectory(join(rootsDir, name, 'overlay'))) continue
    await rm(join(rootsDir, name), { recursive: true, force: true })
  }
}

/** Makes `link` a relative symlink to `target`, replacing whatever is there (atomically for a
 *  symlink; a real dir left by an older state is removed first). */
async function pointAt(link: string, target: string): Promise<void> {
  const rel = relative(dirname(link), target)
  if ((await readlink(link).catch(() => undefined)) === rel) return
  const st = await lstat(link).catch(() => undefined)
  if (st?.isDirectory()) await removeTree(link)
  const tmp = `${link}.${randomBytes(4).toString('hex')}.tmp`
  await symlink(rel, tmp)
  try {
    await rename(tmp, link)
  } catch (e) {
    await rm(tmp, { force: true })
    throw e
  }
}
