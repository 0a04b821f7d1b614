import { lstat, readdir } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { StackerError } from '@stacker/core'
import { goIoError } from './util.js'

/** `recursive-build`'s default stackerfile pattern. */
export const DEFAULT_STACKERFILE_PATTERN = '\\/stacker.yaml$'

/**
 * Every non-directory under `searchDir` (made absolute) whose path matches `pattern`, walking in
 * lexical order without following symlinks and descending into hidden dirs too. Sorted. Throws
 * USAGE when the dir doesn't exist or the pattern doesn't compile.
 */
export async function findStackerfiles(
  searchDir: string,
  pattern: string = DEFAULT_STACKERFILE_PATTERN,
): Promise<string[]> {
  const root = resolve(searchDir)
  let re: RegExp
  try {
    re = new RegExp(pattern)
  } catch (e) {
    throw new StackerError('USAGE', `error parsing regexp: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    })
  }
  try {
    await lstat(root)
  } catch (e) {
    throw new StackerError('USAGE', goIoError(e, 'lstat', searchDir), { cause: e })
  }
  const found: string[] = []
  const walk = async (dir: string): Promise<void> => {
    let entries: import('node:fs').Dirent[]
    try {
      entries = await readdir(dir, { withFileTypes: true })
    } catch (e) {
      throw new StackerError('STACKERFILE', goIoError(e, 'open', dir), { cause: e })
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    for (const ent of entries) {
      const p = join(dir, ent.name)
      if (ent.isDirectory()) await walk(p)
      else if (re.test(p)) found.push(p)
    }
  }
  if ((await lstat(root)).isDirectory()) await walk(root)
  else if (re.test(root)) found.push(root)
  return found.sort()
}
