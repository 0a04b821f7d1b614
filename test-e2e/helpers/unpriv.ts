import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readFile, readdir, writeFile } from 'node:fs/promises'
import { execa } from 'execa'
import { STACKER_BIN } from './paths.js'
import type { StackerOptions, StackerResult } from './stacker.js'

// Found once: a test may run stacker with a PATH that has no setpriv.
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p)) ?? 'setpriv'

export const SUBUID_FILE = '/etc/subuid'
export const SUBGID_FILE = '/etc/subgid'

/** An ordinary user made for a test: no home, no login shell, no subordinate ids until a test
 *  gives it some (system users get none from useradd). */
export interface TestUser {
  name: string
  uid: number
  gid: number
  /** Removes the user, its group and every /etc/subuid and /etc/subgid line naming it. Idempotent. */
  remove(): Promise<void>
}

/** Creates an ordinary user (needs root). The caller must `remove()` it, also when a test fails. */
export async function createTestUser(): Promise<TestUser> {
  const name = `stk${randomBytes(4).toString('hex')}`
  await execa('useradd', ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', name])
  let removed = false
  const remove = async (): Promise<void> => {
    if (removed) return
    // --force: a test that failed half-way may have left a process of the user running (a step of
    // a killed build); the user must go all the same.
    await execa('userdel', ['--force', name], { reject: false })
    // userdel drops the subordinate ids it knows of; a line it missed must not outlive the test.
    for (const file of [SUBUID_FILE, SUBGID_FILE]) await removeLines(file, name)
    removed = true
  }
  try {
    const id = await execa('id', ['-u', name])
    const gid = await execa('id', ['-g', name])
    return { name, uid: Number(id.stdout), gid: Number(gid.stdout), remove }
  } catch (e) {
    await remove()
    throw e
  }
}

async function removeLines(file: string, owner: string): Promise<void> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch {
    return
  }
  const kept = text.split('\n').filter((l) => !l.startsWith(`${owner}:`))
  if (kept.length !== text.split('\n').length) await writeFile(file, kept.join('\n'))
}

/** The argv prefix that runs a command as `user` (setpriv from util-linux: no sudo, no setuid). */
export function asUser(user: Pick<TestUser, 'uid' | 'gid'>): string[] {
  return [SETPRIV, `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--']
}

/** Environment for a stacker run as `user`: its own HOME (so no config of root's is read). */
function userEnv(home: string, extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
    HOME: home,
    XDG_CONFIG_HOME: undefined,
    XDG_RUNTIME_DIR: undefined,
    SUDO_UID: undefined,
    SUDO_GID: undefined,
    SUDO_USER: undefined,
    ...extra,
  }
}

/** Like stacker(), as `user`, with `cwd` as its HOME. Never throws. */
export async function stackerAs(
  user: Pick<TestUser, 'uid' | 'gid'>,
  args: string[],
  opts: StackerOptions & { cwd: string },
): Promise<StackerResult> {
  const r = await startStackerAs(user, args, opts)
  return {
    stdout: String(r.stdout ?? ''),
    stderr: String(r.stderr ?? ''),
    exitCode: r.exitCode ?? (r.signal ? 128 : 1),
    signal: r.signal ?? undefined,
    timedOut: r.timedOut,
    command: r.command,
  }
}

/** Starts stacker as `user` without waiting: the process is stacker itself (setpriv execs it). */
export function startStackerAs(
  user: Pick<TestUser, 'uid' | 'gid'>,
  args: string[],
  opts: StackerOptions & { cwd: string },
) {
  return execa(asUser(user)[0] as string, [...asUser(user).slice(1), process.execPath, STACKER_BIN, ...args], {
    cwd: opts.cwd,
    env: userEnv(opts.cwd, opts.env),
    extendEnv: false,
    input: opts.input ?? '',
    timeout: opts.timeoutMs ?? 600_000,
    reject: false,
    stripFinalNewline: false,
  })
}

/** Live processes (zombies hold nothing) whose real uid is one of `uids`, as `pid: cmdline`. */
export async function processesOf(uids: (uid: number) => boolean): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue
    try {
      const status = await readFile(`/proc/${e}/status`, 'utf8')
      const state = /^State:\s+(\S)/m.exec(status)?.[1]
      const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1])
      if (state === 'Z' || state === 'X' || !uids(uid)) continue
      const cmdline = (await readFile(`/proc/${e}/cmdline`, 'utf8')).replace(/\0+$/, '').replace(/\0/g, ' ')
      out.push(`${e}: ${cmdline}`)
    } catch {
      // Gone while being looked at.
    }
  }
  return out
}
