import { randomBytes } from 'node:crypto'
import { lstat, mkdtemp, open, rename, rm, mkdir, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, basename } from 'node:path'

/** Writes `data` to a temp file beside `path`, fsyncs it and renames it over `path`.
 *  Atomic: readers see the old content or the new, never a mix. */
export async function atomicWriteFile(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  await mkdir(dirname(path), { recursive: true })
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`)
  const fh = await open(tmp, 'w', mode)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  try {
    await rename(tmp, path)
  } catch (e) {
    await rm(tmp, { force: true })
    throw e
  }
}

/** Creates a temp dir, runs `fn`, and removes the dir whatever happens. */
export async function withTempDir<T>(prefix: string, fn: (dir: string) => Promise<T>, parent = tmpdir()): Promise<T> {
  const dir = await mkdtemp(join(parent, prefix))
  const unregister = onCleanup(() => rm(dir, { recursive: true, force: true }))
  try {
    return await fn(dir)
  } finally {
    unregister()
    await rm(dir, { recursive: true, force: true })
  }
}

type CleanupFn = () => unknown | Promise<unknown>
const cleanups = new Set<{ fn: CleanupFn }>()

/** Registers work that must happen if the process is interrupted (unmounts, temp dirs, children).
 *  Returns a function that unregisters it once the normal path has done the work itself. */
export function onCleanup(fn: CleanupFn): () => void {
  const entry = { fn }
  cleanups.add(entry)
  return () => {
    cleanups.delete(entry)
  }
}

/** Runs every registered cleanup, newest first, each once; errors are collected, not thrown. */
export async function runCleanups(): Promise<unknown[]> {
  const errors: unknown[] = []
  const entries = [...cleanups].reverse()
  cleanups.clear()
  for (const e of entries) {
    try {
      await e.fn()
    } catch (err) {
      errors.push(err)
    }
  }
  return errors
}

/** Whether `e` is a Node system error with errno code `code` (`ENOENT`, ...). */
export function isErrno(e: unknown, code: string): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === code
}

/** Whether something (a symlink counts, whatever it points at) is at `path`. Other errors than
 *  "no such file" (e.g. permission denied) are thrown, not taken for absence. */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await lstat(path)
    return true
  } catch (e) {
    if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return false
    throw e
  }
}

/** Whether `path` is a directory (following symlinks); false when nothing is there. */
export async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory()
  } catch (e) {
    if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) return false
    throw e
  }
}
