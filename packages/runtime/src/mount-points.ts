import { lstat, mkdir, readlink, rm, rmdir, unlink, writeFile } from 'node:fs/promises'
import { join, posix } from 'node:path'
import { StackerError } from '@stacker/core'

export type MountPointKind = 'dir' | 'file'

interface Created {
  /** Absolute path inside the rootfs, symlinks resolved, e.g. `/stacker/imports`. */
  readonly path: string
  readonly kind: MountPointKind
}

const MAX_LINKS = 255

/** The mount points a run had to create in a rootfs, so they can be taken out again afterwards.
 *  Paths are resolved inside the rootfs the way runc resolves mount destinations (symlinks are
 *  followed but never leave the rootfs), so a stub sits exactly where runc mounts. */
export class MountPoints {
  private readonly created: Created[] = []

  constructor(private readonly rootfs: string) {}

  /** Makes `dest` exist in the rootfs, creating missing components as directories and the last one
   *  as `kind`. Idempotent: an existing path, of whatever kind, is left alone. */
  async ensure(dest: string, kind: MountPointKind): Promise<void> {
    const { existing, missing } = await resolveInRoot(this.rootfs, dest)
    const cur = [...existing]
    for (let i = 0; i < missing.length; i++) {
      cur.push(missing[i]!)
      const full = join(this.rootfs, ...cur)
      const leafKind: MountPointKind = i === missing.length - 1 ? kind : 'dir'
      if (leafKind === 'file') await writeFile(full, '', { flag: 'wx', mode: 0o644 })
      else await mkdir(full, { mode: 0o755 })
      this.created.push({ path: `/${cur.join('/')}`, kind: leafKind })
    }
  }

  /** Removes, deepest first, every stub this object created that is still an empty directory or an
   *  empty regular file reached without symlinks; anything the command put there stays. Stubs under
   *  `/stacker` are skipped: the caller removes that tree whole. Returns the paths removed. */
  async removeStubs(): Promise<string[]> {
    const removed: string[] = []
    for (const c of [...this.created].reverse()) {
      if (c.path === '/stacker' || c.path.startsWith('/stacker/')) continue
      if (!(await reachableWithoutLinks(this.rootfs, c.path))) continue
      const full = join(this.rootfs, c.path)
      const st = await lstat(full).catch(() => undefined)
      if (!st) continue
      try {
        if (c.kind === 'dir' && st.isDirectory()) {
          await rmdir(full)
          removed.push(c.path)
        } else if (c.kind === 'file' && st.isFile() && st.size === 0) {
          await unlink(full)
          removed.push(c.path)
        }
      } catch (e) {
        if (!isErrno(e, 'ENOTEMPTY') && !isErrno(e, 'EEXIST') && !isErrno(e, 'ENOENT')) throw e
      }
    }
    return removed
  }
}

/** True when `path` exists under `root` (a symlink counts, whatever it points to). */
export async function pathExists(root: string, path: string): Promise<boolean> {
  try {
    await lstat(join(root, path))
    return true
  } catch (e) {
    if (isErrno(e, 'ENOENT')) return false
    throw e
  }
}

/** Removes `<dir>/stacker` recursively (symlinks are removed, never followed). */
export async function removeStackerDir(dir: string): Promise<void> {
  await rm(join(dir, 'stacker'), { recursive: true, force: true })
}

/** Resolves `path` inside `root` like runc's securejoin: symlinks are followed with `root` as `/`
 *  and `..` never climbs above it. Returns the components that exist (resolved) and the missing
 *  remainder (lexically cleaned). */
export async function resolveInRoot(root: string, path: string): Promise<{ existing: string[]; missing: string[] }> {
  let pending = posix.normalize(`/${path}`).split('/')
  const resolved: string[] = []
  let links = 0
  while (pending.length > 0) {
    const comp = pending.shift()!
    if (comp === '' || comp === '.') continue
    if (comp === '..') {
      resolved.pop()
      continue
    }
    const candidate = [...resolved, comp]
    const full = join(root, ...candidate)
    let st: Awaited<ReturnType<typeof lstat>>
    try {
      st = await lstat(full)
    } catch (e) {
      if (!isErrno(e, 'ENOENT')) throw e
      const missing: string[] = []
      for (const c of [comp, ...pending]) {
        if (c === '' || c === '.') continue
        if (c === '..') {
          if (missing.length > 0) missing.pop()
          else resolved.pop()
        } else missing.push(c)
      }
      return { existing: resolved, missing }
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) {
        throw new StackerError(
          'RUN_FAILED',
          `mount destination ${path}: too many levels of symbolic links in the rootfs`,
        )
      }
      const target = await readlink(full)
      if (target.startsWith('/')) resolved.length = 0
      pending = [...target.split('/'), ...pending]
      continue
    }
    if (!st.isDirectory() && pending.some((c) => c !== '' && c !== '.')) {
      throw new StackerError(
        'RUN_FAILED',
        `mount destination ${path}: /${candidate.join('/')} in the rootfs is not a directory`,
      )
    }
    resolved.push(comp)
  }
  return { existing: resolved, missing: [] }
}

async function reachableWithoutLinks(root: string, path: string): Promise<boolean> {
  const parts = path.split('/').filter((p) => p !== '')
  for (let i = 1; i < parts.length; i++) {
    const st = await lstat(join(root, ...parts.slice(0, i))).catch(() => undefined)
    if (!st || st.isSymbolicLink() || !st.isDirectory()) return false
  }
  return true
}

function isErrno(e: unknown, code: string): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === code
}
