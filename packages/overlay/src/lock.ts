import { spawn } from 'node:child_process'
import { mkdir, readFile, stat } from 'node:fs/promises'
import type { Socket } from 'node:net'
import { dirname, resolve } from 'node:path'
import { StackerError, onCleanup } from '@stacker/core'

/** A held lock. `release()` is idempotent and resolves once the lock is gone. */
export interface Lock {
  release(): Promise<void>
}

const CONFLICT_EXIT = 75
// The holder's argv[0] for `sh -c`, so a conflicting acquirer can name the process that asked for
// the lock (the holder's parent) rather than the helper.
const HOLDER_MARK = 'stacker-lock-holder'

/**
 * Takes a non-blocking exclusive flock(2) on `file` (created if missing) and holds it until
 * `release()` or the end of this process. Node has no flock, so a `flock(1)` child holds it; the
 * child reads its stdin, a pipe from this process, and exits on EOF, so the lock dies with this
 * process even on SIGKILL. The child runs in its own session so a terminal ^C does not drop the lock
 * before this process has cleaned up. The held lock does not keep the event loop alive.
 *
 * Throws StackerError 'LOCK' `couldn't acquire lock on <file>: lock owned by pid N (cmdline)` when
 * another open file (in any process, this one included) holds it.
 */
export function acquireLock(file: string): Promise<Lock> {
  return acquireLocks([file])
}

/** Locks the stacker dir, then the roots dir (upstream's order); both or neither. */
export function acquireStorageLocks(stackerDir: string, rootsDir: string): Promise<Lock> {
  return acquireLocks([resolve(stackerDir, '.lock'), resolve(rootsDir, '.lock')])
}

/**
 * Takes the locks of `files` in order, all or none, with one chain of nested `flock(1)` children
 * (`flock a flock b sh -c ...`): starting a child from node costs far more than the chain. Each
 * flock gives up at once on a conflict with its own exit code, which its parents pass on (releasing
 * what they hold); release ends the chain from the inside out, so the locks go in reverse order.
 */
async function acquireLocks(files: readonly string[]): Promise<Lock> {
  const paths = files.map((f) => resolve(f))
  await Promise.all(paths.map((p) => mkdir(dirname(p), { recursive: true })))
  const argv = paths.flatMap((p, i) => [
    ...(i > 0 ? ['flock'] : []),
    '--nonblock',
    '--exclusive',
    '--conflict-exit-code',
    String(CONFLICT_EXIT + i),
    p,
  ])
  const child = spawn('flock', [...argv, 'sh', '-c', 'echo locked; exec cat >/dev/null', HOLDER_MARK], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  })
  const exited = new Promise<number | null>((res) => {
    child.once('exit', (code) => res(code))
    child.once('error', () => res(null))
  })
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d: string) => {
    stderr += d
  })
  const acquired = await new Promise<boolean>((res, rej) => {
    let out = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (d: string) => {
      out += d
      if (out.includes('locked\n')) res(true)
    })
    child.once('error', (e) => rej(new StackerError('TOOL_MISSING', `couldn't run flock: ${e.message}`, { cause: e })))
    void exited.then(() => res(false))
  })
  if (!acquired) {
    const code = await exited
    const busy = code === null ? undefined : paths[code - CONFLICT_EXIT]
    if (busy !== undefined) {
      throw new StackerError('LOCK', `couldn't acquire lock on ${busy}: ${await describeOwner(busy)}`, {
        hint: 'another stacker is using the same stacker or roots dir',
      })
    }
    const what = paths.length === 1 ? paths[0] : paths.join(' and ')
    throw new StackerError('LOCK', `couldn't acquire lock on ${what}: ${stderr.trim() || `flock exited ${code}`}`)
  }

  for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as Socket).unref()
  child.unref()

  let released: Promise<void> | undefined
  const release = (): Promise<void> => {
    released ??= (async () => {
      unregister()
      child.ref()
      child.stdin.end()
      await exited
    })()
    return released
  }
  const unregister = onCleanup(release)
  return { release }
}

/** `lock owned by pid N (cmdline)` from /proc/locks, matching the file's device and inode. */
async function describeOwner(path: string): Promise<string> {
  try {
    const st = await stat(path, { bigint: true })
    const major = Number(((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn))
    const minor = Number((st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn))
    const locks = await readFile('/proc/locks', 'utf8')
    for (const line of locks.split('\n')) {
      const m = /^\d+:\s+FLOCK\s+\S+\s+WRITE\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/.exec(line)
      if (!m) continue
      if (BigInt(m[4]!) !== st.ino || Number.parseInt(m[2]!, 16) !== major || Number.parseInt(m[3]!, 16) !== minor)
        continue
      let pid = Number(m[1])
      let cmdline = await readCmdline(pid)
      // A lock of a holder chain is held by one of its flocks: the owner is the chain's parent.
      for (let depth = 0; depth < 8 && cmdline?.split(' ').includes(HOLDER_MARK); depth++) {
        const ppid = await readPpid(pid)
        if (ppid === undefined || ppid <= 1) break
        pid = ppid
        cmdline = await readCmdline(ppid)
      }
      return `lock owned by pid ${pid} (${cmdline ?? 'unknown'})`
    }
  } catch {
    // Fall through: the owner may have gone between the conflict and this look-up.
  }
  return 'lock held by another process'
}

async function readCmdline(pid: number): Promise<string | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8')
    return raw.replace(/\0+$/, '').replace(/\0/g, ' ')
  } catch {
    return undefined
  }
}

async function readPpid(pid: number): Promise<number | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/stat`, 'utf8')
    // The comm field may contain spaces and parentheses; fields after the last ')' are fixed.
    const rest = raw.slice(raw.lastIndexOf(')') + 2).split(' ')
    const ppid = Number(rest[1])
    return Number.isInteger(ppid) ? ppid : undefined
  } catch {
    return undefined
  }
}
