import { type StdioOptions, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { constants as fsConstants } from 'node:fs'
import { type FileHandle, access, mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { constants as osConstants } from 'node:os'
import { delimiter, join, posix, resolve } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { type Logger, StackerError, onCleanup, runningInUserNamespace, runTool, silentLogger } from '@stacker/core'
import type { BindMount } from './bind.js'
import { execHelper } from './exec-helper.js'
import { MountPoints, pathExists, removeStackerDir, resolveInRoot } from './mount-points.js'
import {
  BUILD_CAPABILITIES,
  STANDARD_MOUNT_POINTS,
  type SpecMount,
  bindMount,
  buildSpec,
  capabilitiesInMask,
} from './spec.js'

/** One command in one container: the rootfs it runs in, what it runs, with which environment,
 *  binds and output handling, and where runc keeps its state. */
export interface RunOptions {
  /** An already-mounted rootfs (the overlay merged dir); runc uses it in place. */
  rootfs: string
  /** argv inside the container. */
  args: string[]
  /** The complete environment, KEY=VALUE (see buildEnvironment). runc adds HOME when it is missing. */
  env: string[]
  /** Default `/`. */
  cwd?: string
  /** Default `stacker`. */
  hostname?: string
  /** Recursive binds, mounted in order after the standard mounts and resolv.conf; rw unless readonly. */
  mounts?: BindMount[]
  /** Default true: bind the host's /etc/resolv.conf read-only when the host has one. */
  resolvConf?: boolean
  /** 'pipe': stdin closed (empty); the container's stdout and stderr are merged and every chunk
   *  goes to onOutput as it arrives. Their relative order is exact where the exec helper exists
   *  (x86_64) and the command is found before the start; otherwise it is runc's two copies, which
   *  can swap lines written close together. 'inherit': interactive, attached to this process's
   *  stdio, with a terminal when stdin is a TTY. */
  stdio: 'pipe' | 'inherit'
  onOutput?: (chunk: Uint8Array) => void
  /** When given, mount points this run created in the rootfs are removed again once the container
   *  has exited (through the rootfs path, so an overlay records no whiteout for them), and so is
   *  `/stacker`. Without it they stay. */
  upperDir?: string
  /** runc's --root; created if missing. Bundles live in temp dirs under it while a run lasts. */
  stateDir: string
  /** Default 0:0. */
  user?: { uid: number; gid: number }
  /** Container id prefix; a random suffix makes it unique. */
  id?: string
  logger?: Logger
  /** Abort kills the container (SIGKILL), deletes it, releases everything, then runContainer
   *  rejects with StackerError 'INTERRUPTED'. */
  signal?: AbortSignal
}

/** How the command ended. A non-zero exit is a result, not an error: the caller decides what a
 *  failed `run` means for the build. */
export interface RunResult {
  /** The command's exit status; 128+N when it died of signal N (runc reports both the same way). */
  exitCode: number
  /** Set only when runc itself was killed by a signal. */
  signal?: string
}

const START_FAILED_LEVELS = new Set(['error', 'fatal', 'panic'])
const KILL_RETRY_MS = 20
const KILL_GIVE_UP_MS = 10_000

/** Runs `args` in `rootfs` in a fresh runc container and waits for it to end.
 *
 *  Resolves with the exit status whatever it is; rejects with StackerError 'RUN_FAILED' only when
 *  the container could not be started (missing bind source, runc error), 'TOOL_MISSING' without
 *  runc, 'INTERRUPTED' on abort. Whatever the outcome, the container is gone from runc's state,
 *  the bundle dir is removed and (with upperDir) the mount-point stubs are taken out before it
 *  settles. While it runs, an onCleanup handler kills and deletes the container if the process is
 *  interrupted. Safe to call concurrently: every call gets its own id and bundle. */
export async function runContainer(opts: RunOptions): Promise<RunResult> {
  const logger = opts.logger ?? silentLogger
  throwIfAborted(opts.signal)
  const runc = await findRunc()
  const stateDir = resolve(opts.stateDir)
  const rootfs = resolve(opts.rootfs)
  await mkdir(stateDir, { recursive: true, mode: 0o700 })
  const id = containerId(opts.id)
  const bundle = await mkdtemp(join(stateDir, 'bundle-'))
  const ctl = new ContainerControl(runc, stateDir, id)
  const unregister = onCleanup(async () => {
    await ctl.kill()
    await rm(bundle, { recursive: true, force: true })
  })
  const mountPoints = new MountPoints(rootfs)
  let stackerExisted = true
  let helperFd: FileHandle | undefined
  try {
    stackerExisted = await pathExists(rootfs, 'stacker')
    const extraMounts = await prepareMounts(mountPoints, opts)
    const terminal = opts.stdio === 'inherit' && process.stdin.isTTY === true
    const cwd = opts.cwd ?? '/'
    let args = opts.args
    if (opts.stdio === 'pipe') {
      const helper = execHelper()
      const dests = [...STANDARD_MOUNT_POINTS, ...extraMounts.map((m) => m.destination)]
      const path = helper && (await findCommand(rootfs, { args: opts.args, env: opts.env, cwd, mountDests: dests }))
      if (helper !== undefined && path !== undefined) {
        // runc execs the helper through the fd it passes in (--preserve-fds), so nothing of it
        // appears in the rootfs; a command runc cannot find runs without it, so runc reports it.
        const file = join(bundle, 'exec-helper')
        await writeFile(file, helper, { mode: 0o755 })
        helperFd = await open(file, 'r')
        args = ['/proc/self/fd/3', path, ...opts.args]
      }
    }
    const spec = buildSpec({
      rootfs,
      args,
      env: opts.env,
      cwd,
      hostname: opts.hostname ?? 'stacker',
      terminal,
      user: opts.user ?? { uid: 0, gid: 0 },
      nofile: await nofileLimit(),
      capabilities: await grantableCapabilities(logger),
      extraMounts,
      inUserNamespace: runningInUserNamespace(),
    })
    await writeFile(join(bundle, 'config.json'), JSON.stringify(spec, null, 2))
    throwIfAborted(opts.signal)
    logger.debug('runc run', { id, bundle, rootfs, args: opts.args.join(' ') })
    return await ctl.run({
      bundle,
      stdio: opts.stdio,
      onOutput: opts.onOutput,
      signal: opts.signal,
      logger,
      helperFd: helperFd?.fd,
    })
  } finally {
    try {
      await ctl.kill()
      if (opts.upperDir !== undefined) {
        const removed = await mountPoints.removeStubs()
        if (removed.length > 0) logger.debug('removed mount points', { paths: removed.join(' ') })
        // A /stacker from a lower layer must not be whited out, so only a /stacker this run created
        // is removed through the rootfs; otherwise the upper copy goes, as upstream does.
        await removeStackerDir(stackerExisted ? opts.upperDir : rootfs)
      }
    } finally {
      await helperFd?.close()
      await rm(bundle, { recursive: true, force: true })
      unregister()
    }
  }
}

async function prepareMounts(mountPoints: MountPoints, opts: RunOptions): Promise<SpecMount[]> {
  for (const p of STANDARD_MOUNT_POINTS) await mountPoints.ensure(p, 'dir')
  const out: SpecMount[] = []
  if (opts.resolvConf !== false && (await isFile('/etc/resolv.conf'))) {
    await mountPoints.ensure('/etc/resolv.conf', 'file')
    out.push(bindMount('/etc/resolv.conf', '/etc/resolv.conf', true))
  }
  for (const m of opts.mounts ?? []) {
    const source = resolve(m.source)
    const dest = posix.resolve('/', m.dest)
    let isDir: boolean
    try {
      isDir = (await stat(source)).isDirectory()
    } catch (e) {
      throw new StackerError(
        'RUN_FAILED',
        `failed to bind mount ${JSON.stringify(m.source)} at ${JSON.stringify(m.dest)}: bind mount source ${JSON.stringify(m.source)} does not exist, refusing bind mount: ${errText(e)}`,
        { cause: e },
      )
    }
    await mountPoints.ensure(dest, isDir ? 'dir' : 'file')
    out.push(bindMount(source, dest, m.readonly === true))
  }
  return out
}

interface RunArgs {
  bundle: string
  stdio: 'pipe' | 'inherit'
  onOutput: ((chunk: Uint8Array) => void) | undefined
  signal: AbortSignal | undefined
  logger: Logger
  /** The exec helper, handed to the container as its fd 3. */
  helperFd: number | undefined
}

/** One container's lifecycle in runc: `run` in the foreground, and a `kill` that works from any
 *  state (not yet created, running, exited) and from any caller (abort, interruption, finally). */
class ContainerControl {
  private exited = true
  private killing: Promise<void> | undefined
  private killRunc: (() => void) | undefined
  private runcDone: Promise<unknown> | undefined

  constructor(
    private readonly runc: string,
    private readonly stateDir: string,
    private readonly id: string,
  ) {}

  async run(a: RunArgs): Promise<RunResult> {
    const log = join(a.bundle, 'runc.log')
    const argv = [
      ...runcGlobals(this.stateDir),
      '--log',
      log,
      '--log-format',
      'json',
      'run',
      '--bundle',
      a.bundle,
      this.id,
    ]
    this.exited = false
    if (a.helperFd !== undefined) argv.splice(argv.length - 1, 0, '--preserve-fds', '1')
    // In the foreground runc copies the container's stdout and stderr through pipes of its own;
    // both go to onOutput (with the exec helper, stderr carries only runc's own messages).
    const stdio: StdioOptions =
      a.stdio === 'pipe' ? ['ignore', 'pipe', 'pipe', ...(a.helperFd === undefined ? [] : [a.helperFd])] : 'inherit'
    const child = spawn(this.runc, argv, { stdio })
    const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>((res) => {
      child.once('error', (error) => res({ code: null, signal: null, error }))
      child.once('close', (code, signal) => res({ code, signal }))
    })
    this.killRunc = () => child.kill('SIGKILL')
    this.runcDone = exit
    let outputError: unknown
    const forward = (s: NodeJS.ReadableStream | null) =>
      new Promise<void>((res) => {
        if (s === null) return res()
        s.on('data', (chunk: Uint8Array) => {
          try {
            a.onOutput?.(chunk)
          } catch (e) {
            outputError ??= e
          }
        })
        s.on('close', () => res())
        s.on('error', () => res())
      })
    const streamed = Promise.all([forward(child.stdout), forward(child.stderr)])
    const onAbort = () => void this.kill()
    a.signal?.addEventListener('abort', onAbort, { once: true })
    let result: Awaited<typeof exit>
    try {
      result = await exit
      await streamed
    } finally {
      this.exited = true
      a.signal?.removeEventListener('abort', onAbort)
    }
    await this.kill()
    if (outputError !== undefined) a.logger.warn(`output handler failed: ${errText(outputError)}`)
    throwIfAborted(a.signal)
    const failure = await startFailure(log, a.logger)
    if (result.error !== undefined) {
      throw new StackerError('RUN_FAILED', `could not run runc: ${result.error.message}`, { cause: result.error })
    }
    if (result.signal !== null) {
      return { exitCode: 128 + (osConstants.signals[result.signal] ?? 0), signal: result.signal }
    }
    const exitCode = result.code ?? 1
    if (exitCode !== 0 && failure !== undefined) {
      throw new StackerError('RUN_FAILED', `container could not be started: ${failure}`)
    }
    return { exitCode }
  }

  /** Kills the container with SIGKILL and deletes its runc state. Idempotent; concurrent calls
   *  share one attempt. */
  kill(): Promise<void> {
    this.killing ??= this.doKill().finally(() => {
      this.killing = undefined
    })
    return this.killing
  }

  private async doKill(): Promise<void> {
    const started = Date.now()
    // Until `runc run` has created the container, `runc kill` finds nothing: retry while it lives.
    while (!this.exited) {
      if (await this.exists()) {
        const r = await this.runcCmd(['kill', this.id, 'KILL'])
        if (r.exitCode === 0) break
      }
      if (Date.now() - started > KILL_GIVE_UP_MS) {
        this.killRunc?.()
        break
      }
      await delay(KILL_RETRY_MS)
    }
    if (!this.exited) await this.runcDone
    if (await this.exists()) await this.runcCmd(['delete', '--force', this.id])
  }

  private async exists(): Promise<boolean> {
    return pathExists(this.stateDir, this.id)
  }

  private runcCmd(args: string[]) {
    return runTool(this.runc, [...runcGlobals(this.stateDir), ...args], { stdin: 'ignore' })
  }
}

/** runc's global flags for a state dir. In a user namespace (an unprivileged build) runc is told
 *  it is rootless, which it would otherwise guess: it then creates cgroups only where it may and
 *  leaves device rules to the namespace. */
export function runcGlobals(stateDir: string): string[] {
  return ['--root', stateDir, ...(runningInUserNamespace() ? ['--rootless', 'true'] : [])]
}

/** runc's own error, if it logged one: the container never ran (bad spec, exec failure). */
async function startFailure(logPath: string, logger: Logger): Promise<string | undefined> {
  let text: string
  try {
    text = await readFile(logPath, 'utf8')
  } catch {
    return undefined
  }
  let failure: string | undefined
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    let rec: { level?: unknown; msg?: unknown }
    try {
      rec = JSON.parse(line) as typeof rec
    } catch {
      continue
    }
    const msg = typeof rec.msg === 'string' ? rec.msg : line
    if (typeof rec.level === 'string' && START_FAILED_LEVELS.has(rec.level)) failure = msg
    else logger.debug(`runc: ${msg}`)
  }
  return failure
}

let runcPath: Promise<string> | undefined

async function findRunc(): Promise<string> {
  runcPath ??= (async () => {
    for (const dir of (process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
      if (dir === '') continue
      const p = join(dir, 'runc')
      try {
        await access(p, fsConstants.X_OK)
        return p
      } catch {}
    }
    runcPath = undefined
    throw new StackerError('TOOL_MISSING', 'runc not found in PATH', {
      hint: 'install runc (Debian: apt-get install runc)',
    })
  })()
  return runcPath
}

function containerId(prefix: string | undefined): string {
  const base = (prefix ?? 'stacker').replace(/[^A-Za-z0-9_.-]+/g, '-').slice(0, 48) || 'stacker'
  return `${base}-${randomBytes(6).toString('hex')}`
}

/** The container keeps this process's open-files limit, as LXC does. */
async function nofileLimit(): Promise<{ soft: number; hard: number }> {
  try {
    const text = await readFile('/proc/self/limits', 'utf8')
    const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(text)
    if (m) {
      const n = (s: string) => (s === 'unlimited' ? 1048576 : Number(s))
      return { soft: n(m[1]!), hard: n(m[2]!) }
    }
  } catch {}
  return { soft: 1024, hard: 1048576 }
}

/** runc cannot grant what this process's bounding set lacks (as in a container started without
 *  some capability), so the build set is cut down to it rather than failing every run. */
async function grantableCapabilities(logger: Logger): Promise<string[]> {
  let bounding: Set<string> | undefined
  try {
    const m = /^CapBnd:\s*([0-9a-f]+)$/m.exec(await readFile('/proc/self/status', 'utf8'))
    if (m) bounding = capabilitiesInMask(m[1]!)
  } catch {}
  if (bounding === undefined) return [...BUILD_CAPABILITIES]
  const granted = BUILD_CAPABILITIES.filter((c) => bounding.has(c))
  if (granted.length < BUILD_CAPABILITIES.length) {
    logger.debug('capabilities not in the bounding set', {
      missing: BUILD_CAPABILITIES.filter((c) => !bounding.has(c)).join(' '),
    })
  }
  return granted
}

interface CommandQuery {
  args: readonly string[]
  env: readonly string[]
  cwd: string
  mountDests: readonly string[]
}

/** Where runc will find the command (its PATH lookup, inside the rootfs), or undefined when it
 *  will not. A path under a mount destination is taken on trust. */
async function findCommand(rootfs: string, q: CommandQuery): Promise<string | undefined> {
  const arg0 = q.args[0]
  if (arg0 === undefined || arg0 === '') return undefined
  let candidates: string[]
  if (arg0.includes('/')) candidates = [posix.resolve(q.cwd, arg0)]
  else {
    const pathVar =
      q.env
        .filter((e) => e.startsWith('PATH='))
        .pop()
        ?.slice(5) ?? ''
    candidates = pathVar
      .split(':')
      .filter((d) => d !== '')
      .map((d) => posix.resolve(q.cwd, d, arg0))
  }
  for (const c of candidates) {
    if (q.mountDests.some((d) => c === d || c.startsWith(`${d}/`))) return c
    const { existing, missing } = await resolveInRoot(rootfs, c)
    if (missing.length > 0) continue
    const st = await stat(join(rootfs, ...existing)).catch(() => undefined)
    if (st?.isFile() && (st.mode & 0o111) !== 0) return c
  }
  return undefined
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile()
  } catch {
    return false
  }
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new StackerError('INTERRUPTED', 'run interrupted', { cause: signal.reason })
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e)
}
