import { type Dirent, readdirSync } from 'node:fs'
import { setImmediate } from 'node:timers/promises'
import { join } from 'node:path'
import { listXattrs, removeXattr } from '../xattr.js'

/** overlayfs xattrs that describe the layer's content and stay in an image: an opaque dir, and
 *  the xattr form of whiteouts (a file marked `overlay.whiteout` in a dir marked
 *  `overlay.whiteouts`). Dropping the latter would turn a deletion into an empty file. */
const KEPT_OVERLAY_XATTRS = new Set(['opaque', 'whiteout', 'whiteouts'])
const OVERLAY_XATTR_RE = /^[a-z]+\.overlay\.(.+)$/

/** Whether an xattr is overlayfs bookkeeping (origin, impure, redirect, nlink, ...) that is only
 *  meaningful to the overlay mount that wrote it, and holds host-specific file handles. */
export function isOverlayBookkeepingXattr(name: string): boolean {
  const m = OVERLAY_XATTR_RE.exec(name)
  return m !== null && !KEPT_OVERLAY_XATTRS.has(m[1]!)
}

/** Removes overlayfs bookkeeping xattrs from every entry of `dir`, in place, as upstream does
 *  before generating any layer. mksquashfs 4.5 and mkfs.erofs 1.5 have no xattr filter, and these
 *  xattrs would make images differ between hosts. Symlinks are skipped (they cannot carry user.*
 *  xattrs). Returns how many were removed. `dir` must not be an active overlay upperdir.
 *  Uses synchronous calls (about 10x faster than the async binding per entry) and yields to the
 *  event loop every few thousand entries. */
export async function stripOverlayXattrs(dir: string): Promise<number> {
  let removed = 0
  let sinceYield = 0
  const strip = (path: string) => {
    // A filesystem without xattr support (e.g. a squashfs image made without them, opened as a
    // base layer) has none to strip.
    const names = listXattrs(path)
    if (names === undefined) return
    for (const name of names) {
      if (!isOverlayBookkeepingXattr(name)) continue
      removeXattr(path, name)
      removed++
    }
  }
  strip(dir)
  const dirs = [dir]
  while (dirs.length > 0) {
    const parent = dirs.pop()!
    const entries = readdirSync(parent, { withFileTypes: true })
    for (const e of entries) {
      if (e.isSymbolicLink()) continue
      const path = join(parent, e.name)
      strip(path)
      if (e.isDirectory()) dirs.push(path)
    }
    sinceYield += entries.length
    if (sinceYield >= YIELD_EVERY) {
      sinceYield = 0
      await setImmediate()
    }
  }
  return removed
}

const YIELD_EVERY = 4096

/** Whether the filesystem holding `path` supports xattrs at all. A squashfs image made without
 *  xattrs, opened as a base layer, does not: listing them fails with ENOTSUP. */
export function supportsXattrs(path: string): boolean {
  return listXattrs(path) !== undefined
}

/** The first entry below `dir` whose name is longer than `maxBytes`, as a path relative to `dir`
 *  with its name's length in bytes; undefined when there is none. Names are compared as the bytes
 *  on disk, whatever their encoding. Yields to the event loop every few thousand entries. */
export async function findLongName(
  dir: string,
  maxBytes: number,
): Promise<{ path: string; bytes: number } | undefined> {
  let sinceYield = 0
  const root = Buffer.from(dir.length > 1 ? dir.replace(/\/+$/, '') : dir)
  const dirs: Buffer[] = [root]
  const slash = Buffer.from('/')
  while (dirs.length > 0) {
    const parent = dirs.pop()!
    const entries = readdirSync(parent, { withFileTypes: true, encoding: 'buffer' }) as unknown as Dirent<Buffer>[]
    for (const e of entries) {
      if (e.name.length > maxBytes) {
        return {
          path: Buffer.concat([parent, slash, e.name])
            .subarray(root.length + 1)
            .toString(),
          bytes: e.name.length,
        }
      }
      if (e.isDirectory()) dirs.push(Buffer.concat([parent, slash, e.name]))
    }
    sinceYield += entries.length
    if (sinceYield >= YIELD_EVERY) {
      sinceYield = 0
      await setImmediate()
    }
  }
  return undefined
}
