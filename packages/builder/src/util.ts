import { mkdir, rm } from 'node:fs/promises'
import { dirname } from 'node:path'
import { execa } from 'execa'
import { StackerError } from '@stacker/core'

/** `cp -a`: keeps modes, owners, times, xattrs, hardlinks, symlinks and devices. `dst` must not exist
 *  when `contents` is false; with `contents`, the entries of `src` are copied into the dir `dst`.
 *  `link` hard-links files instead of copying them where it can: only for copies nothing writes to,
 *  and only into a fresh `dst` (a failed attempt is removed before the copy).
 *  `ownership: false` makes the copy owned by the copier instead (overlay_dirs, like upstream). */
export async function copyTree(
  src: string,
  dst: string,
  opts: { contents?: boolean; ownership?: boolean; link?: boolean } = {},
): Promise<void> {
  await mkdir(opts.contents ? dst : dirname(dst), { recursive: true })
  const from = opts.contents ? `${src.replace(/\/+$/, '')}/.` : src
  if (opts.link) {
    // Hard links cost no copy; across filesystems (or where links are refused) a copy follows.
    const r = await execa('cp', ['-a', '--link', '--no-target-directory', from, dst], { reject: false })
    if (r.exitCode === 0) return
    await rm(dst, { recursive: true, force: true })
    await mkdir(opts.contents ? dst : dirname(dst), { recursive: true })
  }
  const keep = opts.ownership === false ? ['--no-preserve=ownership'] : []
  const r = await execa('cp', ['-a', ...keep, '--no-target-directory', from, dst], { reject: false, all: true })
  if (r.exitCode !== 0) throw new StackerError('IMPORT', `couldn't copy ${src} to ${dst}: ${lastLine(r.all ?? '')}`)
}

export function lastLine(s: string): string {
  const lines = s.trim().split('\n')
  return lines[lines.length - 1] ?? ''
}
