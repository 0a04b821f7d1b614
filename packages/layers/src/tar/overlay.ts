import { StackerError } from '@stacker/core'

/** Marks a directory in a content directory as opaque (it hides everything below it in lower
 *  layers). The store mounts overlayfs with `userxattr`, hence the `user.` namespace. */
export const OVERLAY_OPAQUE_XATTR = 'user.overlay.opaque'

export const WHITEOUT_PREFIX = '.wh.'
export const OPAQUE_WHITEOUT = '.wh..wh..opq'
/** Names beginning like this are reserved by the aufs/OCI convention and carry no file. */
export const WHITEOUT_META_PREFIX = '.wh..wh.'

/** An overlayfs whiteout: a character device 0:0 standing for a deleted name. */
export function isOverlayWhiteout(stat: { isCharacterDevice(): boolean; rdev: number | bigint }): boolean {
  return stat.isCharacterDevice() && Number(stat.rdev) === 0
}

/** `trusted.overlay.origin`, `user.overlay.opaque`, ...: overlayfs bookkeeping, never layer
 *  content. Written layers drop them; extraction refuses to plant them from a stranger's tar. */
export function isOverlayXattr(name: string): boolean {
  return name.split('.')[1] === 'overlay'
}

/** Linux dev_t split (glibc's gnu_dev_major/minor), from a bigint so 64-bit values survive. */
export function splitDev(rdev: bigint): { major: number; minor: number } {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)
  return { major: Number(major), minor: Number(minor) }
}

/** Creates a device node or fifo. Node has no mknod(2), so this runs mknod(1). The caller makes
 *  sure no intermediate path component is a symlink and that `path` does not exist yet. */
export async function mknod(
  path: string,
  kind: 'char' | 'block' | 'fifo',
  mode: number,
  major = 0,
  minor = 0,
): Promise<void> {
  const args = ['-m', (mode & 0o7777).toString(8), path]
  if (kind === 'fifo') args.push('p')
  else args.push(kind === 'char' ? 'c' : 'b', String(major), String(minor))
  // Loaded on first use: execa's import costs a layer write about a tenth of a second of start-up.
  const { execa } = await import('execa')
  try {
    await execa('mknod', args, { stdin: 'ignore', stdout: 'ignore' })
  } catch (e) {
    const err = e as { code?: string; stderr?: string; shortMessage?: string }
    if (err.code === 'ENOENT') throw new StackerError('TOOL_MISSING', 'mknod not found in PATH', { cause: e })
    throw new StackerError('EXTRACT', `mknod ${path}: ${(err.stderr || err.shortMessage || String(e)).trim()}`, {
      cause: e,
    })
  }
}
