import { constants as fsConstants } from 'node:fs'
import { lchown, lstat, mkdir, mkdtemp, open, readdir, readFile, realpath, rm, rmdir, statfs } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { execa } from 'execa'
import { type Logger, StackerError } from '@stacker/core'
import { OciLayout } from '@stacker/oci'
import { checkStorageOwner } from '@stacker/overlay'
import {
  allocateSubordinateRange,
  currentUser,
  displayName,
  findIdMapper,
  type NamespaceUser,
  pickRange,
  rangesOf,
  readSubordinateIds,
  SUBGID_FILE,
  SUBUID_FILE,
  userNamespaceCommand,
  userNamespaceMapping,
} from '@stacker/runtime'
import type { SessionDirs } from './types.js'

/** What `stacker unpriv-setup` was given, and where it works. */
export interface UnprivSetupOptions {
  /** The flags as given; unset ones come from SUDO_UID, SUDO_GID and SUDO_USER, then from the
   *  passwd database (a name gives the ids, a uid gives the name and gid). */
  uid?: string | undefined
  gid?: string | undefined
  username?: string | undefined
  env: NodeJS.ProcessEnv
  dirs: Pick<SessionDirs, 'stackerDir' | 'rootsDir' | 'ociDir'>
  logger: Logger
  /** Default /etc/subuid and /etc/subgid. */
  subuidFile?: string
  subgidFile?: string
}

/** A passwd entry by name or by uid, through NSS (getent), so directory-service users count too. */
async function passwdEntry(key: string): Promise<{ name: string; uid: number; gid: number } | undefined> {
  const r = await execa('getent', ['passwd', key], { reject: false, stdin: 'ignore' })
  const f = r.exitCode === 0 ? String(r.stdout).split('\n')[0]?.split(':') : undefined
  if (!f || f.length < 4) return undefined
  return { name: f[0] as string, uid: Number(f[2]), gid: Number(f[3]) }
}

function parseId(value: string, flag: string): number {
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value)) || Number(value) > 0xfffffffe)
    throw new StackerError('USAGE', `invalid --${flag} ${JSON.stringify(value)}: expected a number`)
  return Number(value)
}

async function resolveUser(o: UnprivSetupOptions): Promise<Required<NamespaceUser>> {
  const given = {
    uid: o.uid ?? o.env.SUDO_UID,
    gid: o.gid ?? o.env.SUDO_GID,
    name: o.username ?? o.env.SUDO_USER,
  }
  const entry =
    given.name !== undefined
      ? await passwdEntry(given.name)
      : given.uid !== undefined
        ? await passwdEntry(given.uid)
        : undefined
  const uid = given.uid ?? (entry ? String(entry.uid) : undefined)
  if (uid === undefined) {
    const hint = given.name !== undefined ? ` (no user ${given.name} in the passwd database)` : ''
    throw new StackerError('USAGE', `please specify --uid or run unpriv-setup with sudo${hint}`)
  }
  const gid = given.gid ?? (entry ? String(entry.gid) : undefined)
  if (gid === undefined) throw new StackerError('USAGE', 'please specify --gid or run unpriv-setup with sudo')
  const name = given.name ?? entry?.name
  if (name === undefined) throw new StackerError('USAGE', 'please specify --username or run unpriv-setup with sudo')
  if (name === '' || /[:\s]/.test(name))
    throw new StackerError('USAGE', `invalid --username ${JSON.stringify(name)}: it goes into ${SUBUID_FILE}`)
  return { uid: parseId(uid, 'uid'), gid: parseId(gid, 'gid'), name }
}

/** Gives `user` a range in `file` unless it has one; says which. Appends one line, as shadow's
 *  tools would (the file keeps its inode, mode and other lines). */
async function ensureRange(file: string, user: Required<NamespaceUser>, ownId: number, logger: Logger): Promise<void> {
  const entries = await readSubordinateIds(file)
  const mine = rangesOf(entries, user)
  if (mine.length > 0) {
    const r = pickRange(mine, user, file)
    logger.info(`${user.name} already has subordinate ids ${r.start}-${r.start + r.count - 1} in ${file}`)
    return
  }
  const r = allocateSubordinateRange(entries, ownId)
  const line = `${user.name}:${r.start}:${r.count}\n`
  let text = ''
  try {
    text = await readFile(file, 'utf8')
  } catch {
    // A new file: the line is all of it.
  }
  const fh = await open(file, fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT, 0o644)
  try {
    await fh.write(text === '' || text.endsWith('\n') ? line : `\n${line}`)
  } finally {
    await fh.close()
  }
  logger.info(`added ${line.trim()} to ${file}`)
}

/** Gives `path` and everything below it to the user. */
async function chownTree(path: string, uid: number, gid: number): Promise<void> {
  await lchown(path, uid, gid)
  if ((await lstat(path)).isDirectory()) for (const e of await readdir(path)) await chownTree(join(path, e), uid, gid)
}

/** Creates `dir` for the user (with `init` filling it), or checks that it is the user's already.
 *  A dir of someone else is left alone unless empty (handing over a tree of another user's files
 *  would change what its layers hold). */
async function ensureDir(
  dir: string,
  user: Required<NamespaceUser>,
  logger: Logger,
  init?: (dir: string) => Promise<void>,
): Promise<void> {
  let st: Awaited<ReturnType<typeof lstat>> | undefined
  try {
    st = await lstat(dir)
  } catch {
    // Missing: created below.
  }
  if (st && !st.isDirectory()) throw new StackerError('USAGE', `${dir} exists and is not a directory, aborting setup`)
  if (st && st.uid === user.uid) {
    logger.info(`${dir} already belongs to ${user.name}`)
    return
  }
  if (st && (await readdir(dir)).length > 0)
    throw new StackerError('USAGE', `stacker dir ${dir} already exists, aborting setup`, {
      hint: `it belongs to uid ${st.uid} and is not empty: run \`stacker clean\` there as that user first`,
    })
  if (init) {
    // What init makes must not find anything of the old owner's in its way.
    if (st) await rmdir(dir)
    await mkdir(dirname(dir), { recursive: true })
    await init(dir)
  } else await mkdir(dir, { recursive: true })
  await chownTree(dir, user.uid, user.gid)
  logger.info(`${st ? 'handed' : 'created'} ${dir} to ${user.name} (${user.uid}:${user.gid})`)
}

/**
 * `stacker unpriv-setup`: lets an ordinary user build. Run as root. Gives the user a range of 65536
 * subordinate uids and gids when it has none (upstream's placement, see allocateSubordinateRange)
 * and makes the stacker, roots and oci dirs the user's. Says what it did; a second run changes
 * nothing. Refuses dirs an earlier root build left (their files would stay root's).
 */
export async function unprivSetup(o: UnprivSetupOptions): Promise<void> {
  if ((process.geteuid?.() ?? 0) !== 0)
    throw new StackerError('USAGE', 'unpriv-setup must be run as root: it edits /etc/subuid and /etc/subgid')
  const user = await resolveUser(o)
  const { stackerDir, rootsDir, ociDir } = o.dirs
  await checkStorageOwner({ stackerDir, rootsDir }, user.uid)
  await ensureRange(o.subuidFile ?? SUBUID_FILE, user, user.uid, o.logger)
  await ensureRange(o.subgidFile ?? SUBGID_FILE, user, user.gid, o.logger)
  await ensureDir(stackerDir, user, o.logger)
  await ensureDir(rootsDir, user, o.logger)
  // An empty OCI layout: a plain empty dir is not one, and builds refuse to write into that.
  await ensureDir(ociDir, user, o.logger, async (dir) => {
    await OciLayout.open(dir, { create: true })
  })
  o.logger.info(`${user.name} can build here without root: run stacker as ${user.name}`)
}

/** One requirement of unprivileged builds, as `stacker check` reports it. */
export interface Requirement {
  what: string
  /** Undefined when it holds; else why not and what to do. */
  problem?: string | undefined
  /** How it holds (or, for an optional one, what happens without it). */
  detail?: string | undefined
  /** A missing optional requirement costs speed, not the build. */
  optional?: boolean
}

const NFS_SUPER_MAGIC = 0x6969

/** The roots dir must be named by its real path (overlay option strings and lock files use it)
 *  and must not be on NFS (no overlay upper dirs, no whiteouts), as upstream checks. */
export async function rootsDirRequirement(rootsDir: string): Promise<Requirement> {
  const what = 'roots dir'
  const real = await realpath(rootsDir)
  if (real !== rootsDir)
    return {
      what,
      problem: `${rootsDir}: roots dir (--roots-dir) path uses symbolic links, use ${JSON.stringify(real)} instead`,
    }
  if ((await statfs(rootsDir)).type === NFS_SUPER_MAGIC)
    return { what, problem: `roots dir (--roots-dir) path ${rootsDir} is not supported on NFS.` }
  return { what, detail: `${rootsDir} (no symlinks, not NFS)` }
}

async function userNamespacesEnabled(): Promise<Requirement> {
  const what = 'user namespaces'
  const r = await execa('unshare', ['--user', 'true'], { reject: false, stdin: 'ignore', all: true })
  if (r.exitCode === 0) return { what }
  let problem = `cannot create one: ${String(r.all ?? '').trim() || `unshare exited ${r.exitCode}`}`
  const sysctls: Array<[string, string]> = [
    ['/proc/sys/kernel/unprivileged_userns_clone', 'kernel.unprivileged_userns_clone=1'],
    ['/proc/sys/user/max_user_namespaces', 'user.max_user_namespaces=10000'],
    ['/proc/sys/kernel/apparmor_restrict_unprivileged_userns', 'kernel.apparmor_restrict_unprivileged_userns=0'],
  ]
  for (const [file, fix] of sysctls) {
    const v = await readFile(file, 'utf8').catch(() => undefined)
    const off = file.endsWith('apparmor_restrict_unprivileged_userns') ? v?.trim() === '1' : v?.trim() === '0'
    if (off) problem += ` (${file} disables them: as root, sysctl -w ${fix})`
  }
  return { what, problem }
}

/** Mounts an overlay with userxattr and makes a whiteout in a scratch dir of the roots dir, inside
 *  a user namespace mapped as builds map it: what every unprivileged build does. */
async function overlayInUserNamespace(rootsDir: string): Promise<Requirement> {
  const what = 'overlay in a user namespace'
  let mapping: Awaited<ReturnType<typeof userNamespaceMapping>>
  try {
    mapping = await userNamespaceMapping()
  } catch {
    return { what, problem: 'not checked: the id mapping above is not usable' }
  }
  const dir = await mkdtemp(join(rootsDir, '.overlay-check-'))
  try {
    const script =
      'set -e; cd "$1"; mkdir a b u w m; mount -t overlay overlay -o userxattr,lowerdir=a:b,upperdir=u,workdir=w m; ' +
      'umount m; mknod wh c 0 0; rm -rf a b u w m wh'
    const argv = userNamespaceCommand(mapping, ['sh', '-c', script, 'sh', dir])
    const r = await execa(argv[0] as string, argv.slice(1), { reject: false, stdin: 'ignore', all: true })
    if (r.exitCode === 0) return { what }
    const err = String(r.all ?? '').trim()
    const kernel = /mknod/.test(err) ? 'use a kernel >= 5.11' : 'unprivileged overlay mounts need a kernel >= 5.11'
    return { what, problem: `${err.split('\n').pop() || `exit ${r.exitCode}`} (${kernel})` }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

async function fuseUsable(): Promise<Requirement> {
  const what = 'fuse for squashfs bases'
  try {
    const fh = await open('/dev/fuse', 'r+')
    await fh.close()
    return { what, optional: true }
  } catch (e) {
    return {
      what,
      optional: true,
      problem: `/dev/fuse is not usable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): squashfs bases are extracted instead of mounted`,
    }
  }
}

/** What an unprivileged build needs, each checked for real: the id mappers, the user's ranges,
 *  user namespaces, overlay (with whiteouts) inside one, and (optional) fuse. */
export async function unprivilegedRequirements(rootsDir: string): Promise<Requirement[]> {
  const out: Requirement[] = []
  for (const tool of ['newuidmap', 'newgidmap'] as const) {
    const m = await findIdMapper(tool)
    if (m.path === undefined) out.push({ what: tool, problem: `${tool} not found in path: install the uidmap package` })
    else if (m.privilege === undefined)
      out.push({ what: tool, problem: `${m.path} does not have either setuid-root or security caps` })
    else out.push({ what: tool, detail: `${m.path}, ${m.privilege}` })
  }
  const user = currentUser()
  for (const [kind, file] of [
    ['subuid', SUBUID_FILE],
    ['subgid', SUBGID_FILE],
  ] as const) {
    try {
      const r = pickRange(rangesOf(await readSubordinateIds(file), user), user, file)
      out.push({ what: kind, detail: `${displayName(user)}: ${r.start}-${r.start + r.count - 1} in ${file}` })
    } catch (e) {
      out.push({ what: kind, problem: (e as Error).message })
    }
  }
  out.push(await userNamespacesEnabled())
  out.push(await overlayInUserNamespace(rootsDir))
  out.push(await fuseUsable())
  return out
}
