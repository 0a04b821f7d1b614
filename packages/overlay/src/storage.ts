import { mkdir, mkdtemp, readFile, stat, statfs } from 'node:fs/promises'
import { release } from 'node:os'
import { join, resolve } from 'node:path'
import { StackerError, atomicWriteFile } from '@stacker/core'
import { runTool } from '@stacker/core'
import { removeTree, unmount } from './mounts.js'

const STORAGE_TYPE = 'overlay'
const OVERLAYFS_SUPER_MAGIC = 0x794c7630

/**
 * Storage initialisation shared by every storage-using command (upstream 1.3 steps 1-3): refuses a
 * roots dir whose name contains ':' (checked on `rootsDirArg`, the value as the user gave it, when
 * known), creates the roots dir, refuses a stacker dir initialised for another storage type, and
 * records `storage.type = overlay`. Idempotent. Does not check overlay support or take locks:
 * see checkOverlay and acquireStorageLocks.
 */
export async function initStorage(opts: { stackerDir: string; rootsDir: string; rootsDirArg?: string }): Promise<void> {
  const given = opts.rootsDirArg ?? opts.rootsDir
  if (given.includes(':')) {
    throw new StackerError(
      'USAGE',
      `using ':' in the name of --roots-dir (${given}) is forbidden due to overlay constraints`,
    )
  }
  await mkdir(opts.rootsDir, { recursive: true })
  const typeFile = join(opts.stackerDir, 'storage.type')
  let previous: string | undefined
  try {
    previous = (await readFile(typeFile, 'utf8')).trim()
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e
  }
  if (previous !== undefined && previous !== STORAGE_TYPE) {
    throw new StackerError(
      'UNSUPPORTED',
      `previous storage type ${previous} not compatible with requested storage ${STORAGE_TYPE}`,
      { hint: `remove ${resolve(opts.stackerDir)} and the roots dir (stacker clean) to start over` },
    )
  }
  await mkdir(opts.stackerDir, { recursive: true })
  if (previous !== STORAGE_TYPE) await atomicWriteFile(typeFile, STORAGE_TYPE)
}

/**
 * Upstream's overlay check (1.3 step 4), run in a temp dir inside `rootsDir` so it tests the
 * filesystem the layers will live on: an overlay mount with `userxattr` must work, the roots dir
 * must not itself be on overlayfs, and a 0:0 char device (an overlay whiteout) must be creatable.
 * Throws StackerError 'MOUNT' with upstream's message; leaves nothing behind in `rootsDir`.
 *
 * With `cacheFile`, a pass is recorded there (replaced atomically) with what it depends on: the
 * kernel (release and boot id), the user, and the roots dir's filesystem (device, inode, type).
 * While all of those are unchanged the mount and mknod tests are skipped; the overlayfs test, a
 * single statfs, still runs every time. A failed check records nothing.
 */
export async function checkOverlay(rootsDir: string, opts: { cacheFile?: string } = {}): Promise<void> {
  await mkdir(rootsDir, { recursive: true })
  if (opts.cacheFile === undefined) return testOverlay(rootsDir)
  const key = await overlayCheckKey(rootsDir)
  let cached: string | undefined
  try {
    cached = await readFile(opts.cacheFile, 'utf8')
  } catch {
    // Never checked here: test below.
  }
  if (key !== undefined && cached === key) {
    await refuseOverlayfs(rootsDir)
    return
  }
  await testOverlay(rootsDir)
  if (key !== undefined) await atomicWriteFile(opts.cacheFile, key)
}

/** What an overlay check's result depends on; undefined when it cannot be told (no boot id). */
async function overlayCheckKey(rootsDir: string): Promise<string | undefined> {
  let bootId: string
  try {
    bootId = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim()
  } catch {
    return undefined
  }
  const [st, fs] = await Promise.all([stat(rootsDir, { bigint: true }), statfs(rootsDir, { bigint: true })])
  return `${JSON.stringify({
    version: 1,
    kernel: release(),
    bootId,
    uid: process.getuid?.() ?? -1,
    rootsDir: resolve(rootsDir),
    dev: String(st.dev),
    ino: String(st.ino),
    fsType: String(fs.type),
  })}\n`
}

async function refuseOverlayfs(rootsDir: string): Promise<void> {
  if ((await statfs(rootsDir)).type === OVERLAYFS_SUPER_MAGIC) {
    throw new StackerError('MOUNT', `can't create overlay whiteout on underlying overlayfs in ${rootsDir}`)
  }
}

async function testOverlay(rootsDir: string): Promise<void> {
  const dir = await mkdtemp(join(rootsDir, '.overlay-check-'))
  try {
    await Promise.all(['a', 'b', 'mnt'].map((d) => mkdir(join(dir, d))))
    const m = await runTool('mount', ['-t', 'overlay', 'overlay', '-o', 'userxattr,lowerdir=a:b', 'mnt'], {
      cwd: dir,
      stdin: 'ignore',
    })
    if (m.exitCode !== 0) {
      throw new StackerError('MOUNT', `couldn't mount overlayfs`, { hint: String(m.stderr).trim() })
    }
    await unmount(join(dir, 'mnt'))

    await refuseOverlayfs(rootsDir)

    const wh = await runTool('mknod', [join(dir, 'whiteout'), 'c', '0', '0'], { stdin: 'ignore' })
    if (wh.exitCode !== 0) {
      const err = String(wh.stderr).trim()
      if (/Operation not permitted/i.test(err)) {
        throw new StackerError('MOUNT', `can't create overlay whiteouts (use a kernel >= 5.8)`, { hint: err })
      }
      throw new StackerError('MOUNT', `couldn't create an overlay whiteout in ${rootsDir}: ${err}`)
    }
  } finally {
    await removeTree(dir)
  }
}
