import { randomBytes } from 'node:crypto'
import { mkdtemp, open, rename, rm, mkdir } from 'node:fs/promises'
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
