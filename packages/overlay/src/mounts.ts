import { statSync } from 'node:fs'
import { readFile, realpath, rm } from 'node:fs/promises'
import { resolve } from 'node:path'
import { StackerError } from '@stacker/core'
import { runTool } from '@stacker/core'

/** A held mount. `release()` is idempotent: the first call unmounts (lazily if the mount is busy)
 *  and removes what the mount created; later calls return the same promise. */
export interface Mount {
  readonly target: string
  release(): Promise<void>
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)))
}

async function canonical(path: string): Promise<string> {
  try {
    return await realpath(path)
  } catch {
    return resolve(path)
  }
}

/** Mount points at or below `under` in this process's mount namespace, parents before children
 *  (the order of /proc/self/mountinfo). `under` is resolved through symlinks first, since the
 *  kernel reports real paths. Mounts hidden under a later mount (a namespace that bind-mounted
 *  something else over an ancestor, as CI sandboxes do) are left out: they cannot be reached by
 *  path, so nothing here can unmount them, and they are not this process's business. */
export async function listMounts(under: string): Promise<string[]> {
  const base = await canonical(under)
  const text = await readFile('/proc/self/mountinfo', 'utf8')
  const out: string[] = []
  for (const line of text.split('\n')) {
    const fields = line.split(' ')
    const field = fields[4]
    if (field === undefined) continue
    const mp = unescapeMountinfo(field)
    if (!(mp === base || mp.startsWith(base === '/' ? '/' : `${base}/`))) continue
    if (visibleAt(mp, fields[2])) out.push(mp)
  }
  return out
}

/** Whether what is seen at `mp` is on the device `majorMinor` of a mountinfo line: false for a
 *  mount covered by another one. (Bind mounts of one filesystem share a device; covering one with
 *  another of the same device is not told apart, and is not how stale mounts come about.) */
function visibleAt(mp: string, majorMinor: string | undefined): boolean {
  const m = /^(\d+):(\d+)$/.exec(majorMinor ?? '')
  if (!m) return true
  let dev: bigint
  try {
    dev = statSync(mp, { bigint: true }).dev
  } catch (e) {
    // A dead FUSE mount answers ENOTCONN: it is there, and must be unmountable.
    return (e as NodeJS.ErrnoException).code !== 'ENOENT'
  }
  const major = BigInt(m[1] as string)
  const minor = BigInt(m[2] as string)
  // glibc's makedev: how stat reports st_dev.
  const made =
    ((major & 0xfffff000n) << 32n) | ((major & 0xfffn) << 8n) | ((minor & 0xffffff00n) << 12n) | (minor & 0xffn)
  return dev === made
}

/** Unmounts `target`, falling back to a lazy unmount when it is busy. Succeeds when nothing is
 *  mounted there afterwards, including when nothing was mounted to begin with. */
export async function unmount(target: string): Promise<void> {
  const first = await runTool('umount', [target], { stdin: 'ignore' })
  if (first.exitCode === 0) return
  if (!(await isMountPoint(target))) return
  const lazy = await runTool('umount', ['-l', target], { stdin: 'ignore' })
  if (lazy.exitCode === 0 || !(await isMountPoint(target))) return
  throw new StackerError('MOUNT', `couldn't unmount ${target}: ${String(lazy.stderr || first.stderr).trim()}`)
}

async function isMountPoint(path: string): Promise<boolean> {
  const p = await canonical(path)
  return (await listMounts(p)).includes(p)
}

/** Unmounts everything at or below `dir`, deepest first. */
export async function unmountAll(dir: string): Promise<void> {
  const mounts = await listMounts(dir)
  for (const mp of mounts.reverse()) await unmount(mp)
}

/** `rm -rf` that never descends into a mount: whatever is mounted below `dir` is unmounted first,
 *  so a stale mount of a layer's view can never turn into deletions in its content dirs. */
export async function removeTree(dir: string): Promise<void> {
  await unmountAll(dir)
  await rm(dir, { recursive: true, force: true })
}
