import { mkdir, symlink } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { type Logger, StackerError, isDirectory, runTool } from '@stacker/core'

/** What `OverlayStore.mount` mounts: a read-only overlay of `lower`, or a writable one with
 *  `upper` and `work`. */
export interface MountOptions {
  /** Content ids or absolute dirs, bottom -> top. A dir repeated in the chain is used once, at its
   *  topmost place, which gives the same view (overlayfs refuses a dir twice). */
  lower: readonly string[]
  /** With `work`, makes the mount writable; both are on the same filesystem and not in use. */
  upper?: string
  work?: string
  /** Created if missing. */
  target: string
}

/**
 * Mounts an overlay of `lowers` (absolute dirs, bottom -> top, no repeats) at `opts.target` and
 * returns the absolute target. The layers are named through symlinks in `linkDir` (`0`, `1`, ...,
 * `u`, `w`) and mount runs with `linkDir` as its cwd, so the option string stays a few bytes per
 * layer (a chain of hundreds of layers fits the one-page limit on mount options). Read-only mounts
 * of fewer than two dirs, and writable mounts of none, are padded with empty dirs below, as
 * overlayfs needs them. Registering the mount for cleanup is the caller's.
 */
export async function mountOverlay(
  lowers: readonly string[],
  opts: Omit<MountOptions, 'lower'>,
  linkDir: string,
  logger: Logger,
): Promise<string> {
  for (const dir of lowers) {
    if (!(await isDirectory(dir))) throw new StackerError('MOUNT', `layer content ${dir} is missing`)
  }
  if ((opts.upper === undefined) !== (opts.work === undefined)) {
    throw new StackerError('INTERNAL', 'an overlay mount needs both upper and work, or neither')
  }
  const target = resolve(opts.target)
  await mkdir(target, { recursive: true })
  const names: string[] = []
  const pad = Math.max(0, (opts.upper === undefined ? 2 : 1) - lowers.length)
  for (let i = 0; i < pad; i++) {
    await mkdir(join(linkDir, `e${i}`))
    names.push(`e${i}`)
  }
  for (const [i, dir] of lowers.entries()) {
    await symlink(dir, join(linkDir, String(i)))
    names.push(String(i))
  }
  const options = ['userxattr', `lowerdir=${names.reverse().join(':')}`]
  if (opts.upper !== undefined && opts.work !== undefined) {
    await symlink(resolve(opts.upper), join(linkDir, 'u'))
    await symlink(resolve(opts.work), join(linkDir, 'w'))
    options.push('upperdir=u', 'workdir=w')
  }
  const r = await runTool('mount', ['-t', 'overlay', 'overlay', '-o', options.join(','), target], {
    cwd: linkDir,
    stdin: 'ignore',
  })
  if (r.exitCode !== 0) {
    throw new StackerError('MOUNT', `couldn't mount overlay on ${target}: ${String(r.stderr).trim()}`, {
      hint: `${lowers.length} lower dirs${opts.upper === undefined ? '' : `, upper ${opts.upper}`}`,
    })
  }
  logger.debug(`mounted overlay of ${lowers.length} layers on ${target}`)
  return target
}
