import { lstatSync, readlinkSync } from 'node:fs'
import { join } from 'node:path'
import { StackerError } from '@stacker/core'
import { openChain, type BuildContext } from './context.js'

// As the kernel's limit on symlinks followed in one lookup.
const MAX_LINKS = 40

/**
 * Resolves `path` (absolute, in the image) the way a process chrooted at `root` would see it, and
 * returns it as an absolute image path without symlinks. Symlinks are followed inside `root` only:
 * an absolute target restarts at `root` and `..` never climbs above it, so a hostile base can never
 * make a write land outside. Components that do not exist are kept as written. With `followLast`
 * false, the last component is not followed when it is a symlink.
 */
export function resolveInRoot(root: string, path: string, opts: { followLast?: boolean } = {}): string {
  const followLast = opts.followLast ?? true
  const resolved: string[] = []
  const pending = path.split('/').filter((c) => c !== '' && c !== '.')
  let links = 0
  // resolved[missingFrom...] do not exist (nothing to follow there); Infinity: all of it exists.
  let missingFrom = Number.POSITIVE_INFINITY
  while (pending.length > 0) {
    const c = pending.shift() as string
    if (c === '.') continue
    if (c === '..') {
      resolved.pop()
      if (resolved.length <= missingFrom) missingFrom = Number.POSITIVE_INFINITY
      continue
    }
    if (resolved.length >= missingFrom) {
      resolved.push(c)
      continue
    }
    const here = join(root, ...resolved, c)
    let isLink = false
    try {
      isLink = lstatSync(here).isSymbolicLink()
    } catch {
      missingFrom = resolved.length
    }
    if (isLink && (pending.length > 0 || followLast)) {
      if (++links > MAX_LINKS)
        throw new StackerError('IMPORT', `too many levels of symbolic links resolving ${path} in the image`)
      const target = readlinkSync(here)
      if (target.startsWith('/')) resolved.length = 0
      pending.unshift(...target.split('/').filter((x) => x !== '' && x !== '.'))
      continue
    }
    resolved.push(c)
  }
  return `/${resolved.join('/')}`
}

/** Runs `fn` with a read-only view of `chain` mounted (bottom to top content ids); an empty chain
 *  is an empty dir. The view is released whatever `fn` does. */
export async function withChainView<T>(
  ctx: BuildContext,
  chain: readonly string[],
  fn: (root: string) => Promise<T>,
): Promise<T> {
  await openChain(ctx, chain)
  ctx.s.signal?.throwIfAborted()
  const snap = await ctx.store.snapshot(chain)
  try {
    return await fn(snap.target)
  } finally {
    await snap.release()
  }
}
