// The one place that calls the native xattr binding and interprets its failures. The binding reports
// a failed system call only as text ("Operation not supported (os error 95)"); this module turns
// that into the errno once, so callers decide on numbers, never on message text.
import { getAttributeSync, listAttributesSync, removeAttributeSync, setAttributeSync } from '@napi-rs/xattr'

/** EPERM: the caller may not set this xattr (a trusted.* name as a non-root user, for one). */
export const EPERM = 1
/** EOPNOTSUPP: the filesystem holds no xattrs, or none of this namespace. */
export const EOPNOTSUPP = 95

/** The errno of a failed xattr call, when the binding reported one. */
export function xattrErrno(e: unknown): number | undefined {
  const text = e instanceof Error ? e.message : String(e)
  const m = / \(os error (\d+)\)$/.exec(text)
  return m ? Number(m[1]) : undefined
}

/** The names of `path`'s xattrs (not following a symlink's target); undefined when its filesystem
 *  has no xattr support (a squashfs image made without them, opened as a base layer). */
export function listXattrs(path: string): string[] | undefined {
  try {
    return listAttributesSync(path)
  } catch (e) {
    if (xattrErrno(e) === EOPNOTSUPP) return undefined
    throw e
  }
}

export { getAttributeSync as getXattr, removeAttributeSync as removeXattr, setAttributeSync as setXattr }
