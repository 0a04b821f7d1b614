import { constants } from 'node:fs'
import { access, mkdir, mkdtemp, open, readdir, readFile, realpath, rm, rmdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type Logger, onCleanup, runningInUserNamespace, StackerError, silentLogger } from '@stacker/core'
import { run } from './exec.js'
import { type FsImageKind, requireFsImageKind } from './media-types.js'
import { fsImageDataSize } from './superblock.js'
import { verifyVerity } from './verity.js'

/** A way to make an image readable: a kernel loop mount, a squashfuse mount, or extraction. */
export type OpenMethod = 'kmount' | 'squashfuse' | 'unsquashfs'

/** Upstream's STACKER_SQUASHFS_EXTRACT_POLICY default. */
export const DEFAULT_OPEN_POLICY: readonly OpenMethod[] = ['kmount', 'squashfuse', 'unsquashfs']

/** Parses a policy string like upstream's STACKER_SQUASHFS_EXTRACT_POLICY
 *  (`kmount squashfuse unsquashfs`, any order, a subset). Throws USAGE for unknown words. */
export function parseOpenPolicy(value: string): OpenMethod[] {
  const words = value.split(/[\s,]+/).filter((w) => w !== '')
  if (words.length === 0) throw new StackerError('USAGE', 'empty squashfs extract policy')
  for (const w of words) {
    if (!(DEFAULT_OPEN_POLICY as readonly string[]).includes(w)) {
      throw new StackerError('USAGE', `unknown squashfs extract policy ${JSON.stringify(w)}`, {
        hint: `use some of: ${DEFAULT_OPEN_POLICY.join(' ')}`,
      })
    }
  }
  return words as OpenMethod[]
}

/** An image made readable by openFsImage. */
export interface MountedFsImage {
  /** The image's root: usable as an overlay lower dir until release(). */
  dir: string
  /** How: `extract` when it was copied out (the policy's `unsquashfs`). */
  method: 'kmount' | 'squashfuse' | 'extract'
  /** Unmounts (kmount, squashfuse) or removes the extracted tree (extract), then removes the
   *  target dir if openFsImage created it, else leaves it empty. Idempotent; also run by core's
   *  runCleanups if the process is interrupted while the image is held. */
  release(): Promise<void>
  /** Lets go of the image without undoing anything: an extracted tree stays as a plain directory
   *  (a mount stays mounted), and neither release() nor runCleanups touches it any more. */
  keep(): void
}

/** Options of openFsImage. */
export interface OpenFsImageOptions {
  /** The layer's media type (from its descriptor): decides squashfs or erofs. */
  mediaType: string
  /** The descriptor's verity annotation: the image is verified against it before use. */
  verityRootHash?: string
  /** Methods to try, in order. `unsquashfs` means extraction (for erofs: a kernel mount copied out). */
  policy?: readonly OpenMethod[]
  /** Receives a debug line per method tried. Default: dropped. */
  logger?: Logger
}

/** Makes a squashfs or erofs layer blob readable as a directory at `target` (created if missing,
 *  must be empty), for use as an overlay lower dir. Tries the policy's methods in order: a
 *  read-only loop mount when root, squashfuse when /dev/fuse works (squashfs only), extraction.
 *  With `verityRootHash` the whole image is checked first (LAYER `invalid root hash` on mismatch);
 *  dm-verity devices are not used, so the blob must not change while held.
 *  The caller must release() the result. */
export async function openFsImage(blobPath: string, target: string, opts: OpenFsImageOptions): Promise<MountedFsImage> {
  const logger = opts.logger ?? silentLogger
  const kind = requireFsImageKind(opts.mediaType)
  if (opts.verityRootHash !== undefined)
    await verifyVerity(blobPath, opts.verityRootHash, await fsImageDataSize(blobPath, kind))
  const policy = opts.policy ?? DEFAULT_OPEN_POLICY
  const created = await prepareTarget(target, 'MOUNT')
  const dir = await realpath(target)
  const failures: string[] = []
  // Covers an interruption mid-extraction; a held image registers its own release.
  const unregister = onCleanup(() => (created ? rm(dir, { recursive: true, force: true }) : emptyDir(dir)))
  try {
    for (const method of policy) {
      const skip = await unavailable(method, kind)
      if (skip) {
        logger.debug(`not opening ${blobPath} with ${method}: ${skip}`)
        continue
      }
      try {
        if (method === 'unsquashfs') {
          await extractInto(blobPath, dir, kind)
          return held(dir, 'extract', created, () => emptyDir(dir))
        }
        if (method === 'kmount') await run('mount', ['-t', kind, '-o', 'ro,loop', blobPath, dir], { code: 'MOUNT' })
        else await squashfuse(blobPath, dir)
        return held(dir, method, created, () => unmount(dir, method))
      } catch (e) {
        if (!(e instanceof StackerError)) throw e
        failures.push(`${method}: ${e.message}`)
        logger.debug(`opening ${blobPath} with ${method} failed`, { error: e.message })
        await emptyDir(dir).catch(() => {})
      }
    }
  } catch (e) {
    if (created) await rm(dir, { recursive: true, force: true })
    throw e
  } finally {
    unregister()
  }
  if (created) await rmdir(dir).catch(() => {})
  // The last method is the one of last resort: why it failed is what the user can act on.
  const last = failures.length > 0 ? `: ${failures[failures.length - 1]}` : ''
  throw new StackerError('MOUNT', `cannot open ${kind} layer ${blobPath} (tried ${policy.join(' ')})${last}`, {
    hint: failures.length > 0 ? failures.join('; ') : 'no method in the policy is available here',
  })
}

/** Options of extractFsImage. */
export interface ExtractFsImageOptions {
  /** The layer's media type (from its descriptor): decides squashfs or erofs. */
  mediaType: string
  /** The descriptor's verity annotation: the image is verified against it first. */
  verityRootHash?: string
}

/** Extracts a squashfs or erofs layer blob into `target` (created if missing, must be empty) as a
 *  plain directory tree, keeping whiteouts native (0:0 char devices, opaque xattrs), ownership,
 *  modes, times, hardlinks and xattrs. Verifies verity first like openFsImage. squashfs uses
 *  unsquashfs; erofs needs root (a kernel mount copied out with cp -a): fsck.erofs 1.5 drops
 *  xattrs and hardlinks, which would resurrect deleted files. On failure `target` is left empty. */
export async function extractFsImage(blobPath: string, target: string, opts: ExtractFsImageOptions): Promise<void> {
  const kind = requireFsImageKind(opts.mediaType)
  if (opts.verityRootHash !== undefined)
    await verifyVerity(blobPath, opts.verityRootHash, await fsImageDataSize(blobPath, kind))
  await prepareTarget(target, 'EXTRACT')
  const unregister = onCleanup(() => emptyDir(target))
  try {
    await extractInto(blobPath, target, kind)
  } catch (e) {
    await emptyDir(target)
    throw e
  } finally {
    unregister()
  }
}

async function extractInto(blobPath: string, target: string, kind: FsImageKind): Promise<void> {
  if (kind === 'squashfs') {
    // -d into an existing empty dir also applies the image root's mode, owner and times to it.
    await run('unsquashfs', ['-no-progress', '-quiet', '-d', target, blobPath], { code: 'EXTRACT' })
    return
  }
  if (process.getuid?.() !== 0 || runningInUserNamespace()) {
    throw new StackerError(
      'UNSUPPORTED',
      `extracting erofs layer ${blobPath} needs root (a kernel mount, which the kernel refuses in a user namespace)`,
      {
        hint: 'fsck.erofs --extract loses xattrs and hardlinks, so it is not used; give unprivileged builds squashfs or tar bases, or build as root',
      },
    )
  }
  const mnt = await mkdtemp(join(tmpdir(), 'stacker-erofs-'))
  const unregister = onCleanup(() => unmount(mnt, 'kmount').finally(() => rmdir(mnt)))
  try {
    await run('mount', ['-t', 'erofs', '-o', 'ro,loop', blobPath, mnt], { code: 'EXTRACT' })
    try {
      // Naming xattr explicitly makes a failure to copy one an error; plain -a would only warn.
      await run('cp', ['-a', '--preserve=xattr', '--no-target-directory', `${mnt}/.`, target], { code: 'EXTRACT' })
    } finally {
      await unmount(mnt, 'kmount')
    }
  } finally {
    unregister()
    await rmdir(mnt)
  }
}

/** squashfuse_ll reports the image's inode numbers, so hardlinks stay hardlinks (the high-level
 *  squashfuse gives every path its own inode); it is in the same package, but not everywhere. */
async function squashfuse(blobPath: string, dir: string): Promise<void> {
  try {
    await run('squashfuse_ll', [blobPath, dir], { code: 'MOUNT' })
  } catch (e) {
    if (!(e instanceof StackerError && e.code === 'TOOL_MISSING')) throw e
    await run('squashfuse', [blobPath, dir], { code: 'MOUNT' })
  }
}

/** Why a method cannot be tried here, or undefined if it can. */
async function unavailable(method: OpenMethod, kind: FsImageKind): Promise<string | undefined> {
  if (method === 'kmount') {
    if (process.getuid?.() !== 0) return 'not root'
    // squashfs and erofs are block filesystems: the kernel mounts them for the initial namespace only.
    return runningInUserNamespace() ? 'in a user namespace' : undefined
  }
  if (method === 'squashfuse') {
    if (kind !== 'squashfs') return `squashfuse cannot read ${kind}`
    return (await fuseWorks()) ? undefined : '/dev/fuse is not usable'
  }
  return undefined
}

let fuse: Promise<boolean> | undefined

function fuseWorks(): Promise<boolean> {
  fuse ??= (async () => {
    try {
      await access('/dev/fuse', constants.R_OK | constants.W_OK)
      const fh = await open('/dev/fuse', 'r+')
      await fh.close()
      return true
    } catch {
      return false
    }
  })()
  return fuse
}

/** Creates `target` or checks that it is an empty dir. Returns whether it was created. */
async function prepareTarget(target: string, code: 'MOUNT' | 'EXTRACT'): Promise<boolean> {
  let entries: string[]
  try {
    entries = await readdir(target)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e
    await mkdir(target, { recursive: true })
    return true
  }
  if (entries.length > 0) throw new StackerError(code, `${target} is not empty`)
  return false
}

async function emptyDir(dir: string): Promise<void> {
  let entries: string[]
  try {
    entries = await readdir(dir)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return
    throw e
  }
  await Promise.all(entries.map((e) => rm(join(dir, e), { recursive: true, force: true })))
}

function held(
  dir: string,
  method: MountedFsImage['method'],
  created: boolean,
  undo: () => Promise<void>,
): MountedFsImage {
  let releasing: Promise<void> | undefined
  const release = (): Promise<void> => {
    releasing ??= (async () => {
      await undo()
      if (created) await rm(dir, { recursive: true, force: true })
      unregister()
    })().catch((e: unknown) => {
      releasing = undefined
      throw e
    })
    return releasing
  }
  const unregister = onCleanup(release)
  const keep = (): void => {
    unregister()
    releasing ??= Promise.resolve()
  }
  return { dir, method, release, keep }
}

/** Unmounts `dir` if it is a mount point; a no-op otherwise, so it can be retried. */
async function unmount(dir: string, method: 'kmount' | 'squashfuse'): Promise<void> {
  if (!(await isMountPoint(dir))) return
  if (method === 'squashfuse' && process.getuid?.() !== 0) {
    try {
      await run('fusermount3', ['-u', dir], { code: 'MOUNT' })
    } catch {
      await run('fusermount', ['-u', dir], { code: 'MOUNT' })
    }
    return
  }
  await run('umount', [dir], { code: 'MOUNT' })
}

/** Whether `dir` (an absolute, resolved path) is a mount point, from /proc/self/mountinfo. */
export async function isMountPoint(dir: string): Promise<boolean> {
  return (await mountPointsUnder(dir)).includes(dir)
}

/** Mount points at or below `dir`, from /proc/self/mountinfo (octal escapes decoded). */
export async function mountPointsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8')
  const out: string[] = []
  for (const line of info.split('\n')) {
    const field = line.split(' ')[4]
    if (field === undefined) continue
    const mp = field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)))
    if (mp === dir || mp.startsWith(dir.endsWith('/') ? dir : `${dir}/`)) out.push(mp)
  }
  return out
}
