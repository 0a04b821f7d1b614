import { isScalar, type Node } from 'yaml'

const ERRNO_TEXT: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EISDIR: 'is a directory',
  ENOTDIR: 'not a directory',
  ELOOP: 'too many levels of symbolic links',
  EPERM: 'operation not permitted',
}

/** A Node fs error as Go prints an *os.PathError: `open /x: no such file or directory`. */
export function goIoError(e: unknown, op: string, path: string): string {
  const code = (e as { code?: string } | null)?.code
  if (code !== undefined && ERRNO_TEXT[code]) return `${op} ${path}: ${ERRNO_TEXT[code]}`
  return e instanceof Error ? e.message : String(e)
}

export function errnoCode(e: unknown): string | undefined {
  return (e as { code?: string } | null)?.code
}

/** A scalar as yaml.v2 stores it into a Go string: its text as written; null becomes "". */
export function scalarString(n: Node | null | undefined): string {
  if (!n || !isScalar(n)) return ''
  if (n.value === null || n.value === undefined) return ''
  if (typeof n.value === 'string') return n.value
  if (typeof n.source === 'string') return n.source
  return String(n.value)
}

/** True for a URL-ish path (`scheme://...`), as upstream's dockerish URL parser decides. */
export function hasScheme(p: string): boolean {
  return p.includes('://')
}

export function urlScheme(p: string): string {
  const i = p.indexOf('://')
  return i < 0 ? '' : p.slice(0, i)
}
