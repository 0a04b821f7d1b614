import { readFileSync } from 'node:fs'
import { setTimeout as delay } from 'node:timers/promises'
import { Command, CommanderError, Option } from 'commander'
import { runCleanups, StackerError, toStackerError } from '@stacker/core'
import { Renderer } from './log.js'
import { registerCommands } from './commands.js'
import { ChildExited, delegate } from './userns.js'

// Compiled, this file is dist/main.js; the package file is looked up one and two levels up.
export const VERSION: string = (() => {
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pj = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string }
      if (pj.name === '@stacker/cli' && pj.version) return pj.version
    } catch {
      // not here; try the next place
    }
  }
  return '0.0.0'
})()

export interface GlobalFlags {
  workDir?: string
  stackerDir?: string
  ociDir?: string
  rootsDir?: string
  config?: string
  debug?: boolean
  quiet?: boolean
  logFile?: string
  logTimestamp?: boolean
  storageType?: string
  progress?: boolean
  internalUserns?: boolean
}

// After an interrupt, work under way gets this long to unwind through its own cleanup before the
// process exits anyway; something that does not watch the abort signal (a long extraction) is not
// waited for: the next run clears what it leaves.
const INTERRUPT_GRACE_MS = 5000

/** Exit statuses of a process ended by these signals, as a shell reports them. */
const SIGNAL_CODES: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 129, SIGINT: 130, SIGPIPE: 141, SIGTERM: 143 }

export function buildProgram(
  state: { renderer?: Renderer; argv?: readonly string[] },
  signal: AbortSignal = new AbortController().signal,
): Command {
  const program = new Command('stacker')
  program
    .description('stacker builds OCI images from a declarative stacker.yaml')
    .usage('[global options] command [command options] [arguments...]')
    .enablePositionalOptions()
    .configureHelp({ styleTitle: (title: string) => `${title.replace(/:$/, '').toUpperCase()}:` })
  program
    .option('--work-dir <dir>', 'set the working directory for stacker-dir, oci-dir and roots-dir')
    .option('--stacker-dir <dir>', 'set the directory for stacker cache', undefined)
    .option('--oci-dir <dir>', 'set the output directory for OCI images')
    .option('--roots-dir <dir>', 'set the directory for the rootfs-es')
    .option('--config <file>', 'stacker config file with defaults')
    .option('--debug', 'enable stacker debug mode')
    .option('-q, --quiet', 'silence all logs')
    .option('--log-file <file>', 'log to a file instead of stderr')
    .option('--log-timestamp', 'whether to log timestamps')
    .addOption(new Option('--storage-type <type>', 'storage type (only overlay)').default('overlay'))
    .option('--progress', 'show progress (the default on a terminal)')
    .option('--no-progress', 'hide progress')
    .addOption(new Option('--internal-userns').hideHelp())
    .version(`stacker version ${VERSION}`, '-v, --version', 'print the version')
    .helpCommand('help [command]', 'shows a list of commands or help for one command')
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({
      writeErr: (s) => process.stderr.write(s),
      outputError: (s, write) => write(s.startsWith('error:') ? s : `error: ${s}`),
    })
  program.hook('preSubcommand', (cmd) => {
    const g = cmd.opts<GlobalFlags>()
    if (g.debug && g.quiet) throw new StackerError('USAGE', "debug and quiet don't make sense together")
    if (g.storageType && g.storageType !== 'overlay')
      throw new StackerError('USAGE', `unknown storage type ${g.storageType}`)
    state.renderer = new Renderer({
      debug: !!g.debug,
      quiet: !!g.quiet,
      logFile: g.logFile,
      timestamps: !!g.logTimestamp,
      progress: g.progress ?? !!process.stderr.isTTY,
    })
    state.renderer.logger.debug(`stacker version ${VERSION}`)
  })
  registerCommands(program, () => {
    if (!state.renderer) throw new StackerError('INTERNAL', 'logger not initialised')
    return {
      renderer: state.renderer,
      flags: program.opts<GlobalFlags>(),
      version: VERSION,
      signal,
      argv: state.argv ?? process.argv.slice(2),
    }
  })
  return program
}

export async function main(argv: string[]): Promise<void> {
  const state: { renderer?: Renderer; argv?: readonly string[] } = { argv }
  const debug = argv.includes('--debug')
  let interrupted = false
  let interruptCode = 0
  const abort = new AbortController()
  let settle: () => void = () => {}
  const settled = new Promise<void>((res) => {
    settle = res
  })
  const onSignal = (sig: NodeJS.Signals) => {
    // The command runs in a user namespace's process, which unwinds itself and reports.
    if (delegate.child) {
      if (sig !== 'SIGPIPE') delegate.child.kill(sig)
      return
    }
    if (interrupted) return
    interrupted = true
    interruptCode = SIGNAL_CODES[sig] ?? 1
    // Abort first, so nothing new starts while the cleanups kill containers and unmount.
    abort.abort(new StackerError('INTERRUPTED', `interrupted by ${sig}`))
    void (async () => {
      await runCleanups()
      await Promise.race([settled, delay(INTERRUPT_GRACE_MS)])
      // What was registered while the work unwound.
      await runCleanups()
      await state.renderer?.close()
      if (sig !== 'SIGPIPE') process.stderr.write(`error: interrupted by ${sig}\n`)
      process.exit(interruptCode)
    })()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('SIGHUP', onSignal)
  // node ignores SIGPIPE: a reader that goes away (`stacker build 2>&1 | head`) shows up as an EPIPE
  // error on the stream, which would otherwise end the process at once with its mounts and containers
  // still held. It stops the build the way an interrupt does; nothing more can be said on that stream.
  const onStreamError = (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE' || e.code === 'ERR_STREAM_DESTROYED') onSignal('SIGPIPE')
  }
  process.stdout.on('error', onStreamError)
  process.stderr.on('error', onStreamError)
  const program = buildProgram(state, abort.signal)
  let code = 0
  try {
    if (argv.length === 0) {
      process.stdout.write(program.helpInformation())
    } else {
      await program.parseAsync(argv, { from: 'user' })
    }
  } catch (e) {
    // After an interrupt the failure is a consequence of it; the interrupt is what gets reported.
    if (e instanceof ChildExited) code = e.code
    else code = interrupted ? interruptCode : reportError(e, debug)
  } finally {
    await runCleanups()
    if (!interrupted) await state.renderer?.close()
    settle()
  }
  // A command that finished with its own status (chroot's child, the overlay check) keeps it.
  if (interrupted) process.exitCode = interruptCode
  else if (code !== 0 || process.exitCode === undefined) process.exitCode = code
}

function reportError(e: unknown, debug: boolean): number {
  if (e instanceof CommanderError) {
    // Commander already printed its message; help and version exit 0.
    return e.exitCode === 0 || e.code === 'commander.helpDisplayed' || e.code === 'commander.version' ? 0 : 1
  }
  const err = toStackerError(e)
  if (debug) {
    process.stderr.write(`Error: ${err.describe()}\n`)
    if (err.hint) process.stderr.write(`hint: ${err.hint}\n`)
    const cause = err.code === 'INTERNAL' && err.cause instanceof Error ? err.cause : err
    process.stderr.write(`${cause.stack ?? ''}\n`)
  } else {
    process.stderr.write(`error: ${err.describe()}\n`)
  }
  return 1
}
