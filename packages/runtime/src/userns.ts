import { constants as fsConstants } from 'node:fs'
import { access, readFile, stat } from 'node:fs/promises'
import { userInfo } from 'node:os'
import { delimiter, join } from 'node:path'
import { getAttributeSync } from '@napi-rs/xattr'
import { StackerError } from '@stacker/core'

/** Where shadow keeps the subordinate uids a user may map into its user namespaces. */
export const SUBUID_FILE = '/etc/subuid'
/** Where shadow keeps the subordinate gids, listed by user as well. */
export const SUBGID_FILE = '/etc/subgid'

/** Ids an unprivileged build maps: the user's own id as 0, then this many subordinate ids as 1..N,
 *  which covers every id an ordinary base image uses (nobody is 65534). */
export const SUBORDINATE_IDS_MAPPED = 65535

/** The size of the range `stacker unpriv-setup` gives a user, as upstream does. */
export const SUBORDINATE_RANGE_SIZE = 65536

const FIRST_SUBORDINATE_ID = 100000

/** `count` ids from `start`. */
export interface IdRange {
  start: number
  count: number
}

/** One `owner:start:count` line of /etc/subuid or /etc/subgid; `owner` is a name or a numeric id. */
export interface SubordinateEntry extends IdRange {
  owner: string
}

/** The user whose ids a namespace maps. */
export interface NamespaceUser {
  uid: number
  gid: number
  /** The login name, when the passwd database has one: subordinate ranges may be listed under it. */
  name?: string | undefined
}

/** Parses /etc/subuid-format text. Blank, comment and malformed lines are skipped, as shadow's
 *  newuidmap skips them. */
export function parseSubordinateIds(text: string): SubordinateEntry[] {
  const out: SubordinateEntry[] = []
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const m = /^([^:\s]+):(\d+):(\d+)$/.exec(line)
    if (!m) continue
    const start = Number(m[2])
    const count = Number(m[3])
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || count === 0) continue
    out.push({ owner: m[1] as string, start, count })
  }
  return out
}

/** The entries that belong to `user` (by login name or numeric uid, in /etc/subgid too: newgidmap
 *  looks ranges up by user, not by group), in file order. */
export function rangesOf(entries: readonly SubordinateEntry[], user: NamespaceUser): IdRange[] {
  const id = String(user.uid)
  return entries
    .filter((e) => e.owner === id || (user.name !== undefined && e.owner === user.name))
    .map(({ start, count }) => ({ start, count }))
}

/** The entries of a subordinate id file; none when it does not exist. */
export async function readSubordinateIds(file: string): Promise<SubordinateEntry[]> {
  try {
    return parseSubordinateIds(await readFile(file, 'utf8'))
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw new StackerError('USAGE', `couldn't read ${file}: ${(e as Error).message}`, { cause: e })
  }
}

/**
 * Where a new range of `SUBORDINATE_RANGE_SIZE` ids goes (upstream's rule): after the highest id
 * any entry uses, at 100000 at the lowest, moved one range further when it would contain `ownId`
 * (the user's own id must stay outside its subordinate range).
 */
export function allocateSubordinateRange(entries: readonly SubordinateEntry[], ownId: number): IdRange {
  let start = FIRST_SUBORDINATE_ID
  for (const e of entries) start = Math.max(start, e.start + e.count)
  if (ownId >= start && ownId < start + SUBORDINATE_RANGE_SIZE) start += SUBORDINATE_RANGE_SIZE
  return { start, count: SUBORDINATE_RANGE_SIZE }
}

/** The user this process runs as (its real ids; the name from the passwd database when it has one). */
export function currentUser(): NamespaceUser {
  const uid = process.getuid?.() ?? 0
  const gid = process.getgid?.() ?? 0
  let name: string | undefined
  try {
    name = userInfo().username
  } catch {
    // No passwd entry: only numeric entries of the subordinate id files can match.
  }
  return { uid, gid, name }
}

/** The name a user goes by in messages and in `unpriv-setup --username`. */
export function displayName(user: NamespaceUser): string {
  return user.name ?? String(user.uid)
}

/** newuidmap or newgidmap as found on this host. */
export interface IdMapper {
  tool: 'newuidmap' | 'newgidmap'
  /** Where PATH finds it; undefined when it does not. */
  path: string | undefined
  /** What lets it write another process's id map: without either it can only fail. */
  privilege: 'setuid-root' | 'file capabilities' | undefined
}

/** Finds newuidmap or newgidmap the way unshare(1) runs it (a PATH search) and tells whether it
 *  is privileged: setuid root, or file capabilities (security.capability). */
export async function findIdMapper(tool: IdMapper['tool']): Promise<IdMapper> {
  const dirs = (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter).filter((d) => d !== '')
  for (const dir of dirs) {
    const path = join(dir, tool)
    try {
      await access(path, fsConstants.X_OK)
    } catch {
      continue
    }
    const st = await stat(path)
    if ((st.mode & 0o4000) !== 0 && st.uid === 0) return { tool, path, privilege: 'setuid-root' }
    let caps: Buffer | null = null
    try {
      caps = getAttributeSync(path, 'security.capability')
    } catch {
      // No xattr support or no such attribute: no file capabilities.
    }
    return { tool, path, privilege: caps && caps.length > 0 ? 'file capabilities' : undefined }
  }
  return { tool, path: undefined, privilege: undefined }
}

/** Throws the actionable error for an id mapper that cannot do its job, as upstream words it. */
export function requireIdMapper(m: IdMapper): void {
  if (m.path === undefined)
    throw new StackerError('TOOL_MISSING', `${m.tool} not found in path: install the uidmap package`, {
      hint: 'unprivileged builds map their user namespace with newuidmap and newgidmap (Debian: apt-get install uidmap)',
    })
  if (m.privilege === undefined)
    throw new StackerError(
      'TOOL_MISSING',
      `${m.path} does not have either setuid-root or security caps: reinstall the uidmap package`,
    )
}

/** The range of `user` that a namespace maps: its largest, which must hold SUBORDINATE_IDS_MAPPED
 *  ids. Throws the error that tells how to get one. */
export function pickRange(ranges: readonly IdRange[], user: NamespaceUser, file: string): IdRange {
  const name = displayName(user)
  const setup = `run \`stacker unpriv-setup --username ${name}\` as root`
  if (ranges.length === 0)
    throw new StackerError('USAGE', `no idmap and not root: ${name} has no subordinate ids in ${file}; ${setup}`)
  const best = ranges.reduce((a, b) => (b.count > a.count ? b : a))
  if (best.count < SUBORDINATE_IDS_MAPPED)
    throw new StackerError(
      'USAGE',
      `no idmap and not root: the largest range of ${name} in ${file} has ${best.count} ids, ${SUBORDINATE_IDS_MAPPED} are needed; give it a larger one, or remove its entries and ${setup}`,
    )
  return best
}

/** Whose namespace it is and which of its subordinate ranges become ids 1..65535 there. */
export interface UserNamespaceMapping {
  user: NamespaceUser
  uids: IdRange
  gids: IdRange
}

/** What a namespace for `user` maps, checked: the id mappers work and the user has ranges. */
export async function userNamespaceMapping(
  opts: { user?: NamespaceUser; subuidFile?: string; subgidFile?: string } = {},
): Promise<UserNamespaceMapping> {
  const user = opts.user ?? currentUser()
  for (const m of await Promise.all([findIdMapper('newuidmap'), findIdMapper('newgidmap')])) requireIdMapper(m)
  const uidFile = opts.subuidFile ?? SUBUID_FILE
  const gidFile = opts.subgidFile ?? SUBGID_FILE
  const uids = pickRange(rangesOf(await readSubordinateIds(uidFile), user), user, uidFile)
  const gids = pickRange(rangesOf(await readSubordinateIds(gidFile), user), user, gidFile)
  return { user, uids, gids }
}

/**
 * The command line that runs `argv` as uid 0 of a new user namespace with its own mount namespace:
 * the user's uid and gid map to 0, the first SUBORDINATE_IDS_MAPPED ids of its subordinate ranges
 * to 1..65535. unshare(1) creates the namespaces and has newuidmap/newgidmap (setuid, from shadow)
 * write the maps before it execs `argv`, so `argv` starts with full capabilities in the namespace.
 * Mounts made inside are private to it and go away with its last process. setpriv gives the
 * namespace's first process a parent-death signal, so killing its creator (even with SIGKILL)
 * kills it too. The process keeps the pid of the spawned command.
 */
export function userNamespaceCommand(mapping: UserNamespaceMapping, argv: readonly string[]): string[] {
  const n = SUBORDINATE_IDS_MAPPED
  return [
    'setpriv',
    '--pdeathsig',
    'KILL',
    '--',
    'unshare',
    '--user',
    '--mount',
    '--propagation',
    'private',
    '--map-user=0',
    '--map-group=0',
    `--map-users=${mapping.uids.start},1,${n}`,
    `--map-groups=${mapping.gids.start},1,${n}`,
    '--',
    ...argv,
  ]
}
