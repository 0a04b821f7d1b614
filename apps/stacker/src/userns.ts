import { type ChildProcess, spawn } from 'node:child_process'
import { constants as osConstants } from 'node:os'
import type { Command } from 'commander'
import { StackerError } from '@stacker/core'

/** Commands that use the roots dir: started by an ordinary user, they run in a user namespace of
 *  their own, where overlay mounts and runc work without root. (`inspect` reads the OCI layout
 *  only; `check` examines the host itself and starts namespaces of its own.) */
const STORAGE_COMMANDS = new Set(['build', 'recursive-build', 'publish', 'chroot', 'grab', 'clean', 'gc'])
const STORAGE_INTERNAL_COMMANDS = new Set(['testsuite-check-overlay'])

/** Whether `cmd` (the command about to run) uses the roots dir. */
export function usesStorage(cmd: Command): boolean {
  const parent = cmd.parent
  if (parent?.name() === 'internal-go') return STORAGE_INTERNAL_COMMANDS.has(cmd.name())
  return parent?.parent === null && STORAGE_COMMANDS.has(cmd.name())
}

/** Thrown once the command has run in the namespace: the process ends with `code`, and prints
 *  nothing more (the namespace's process said what there was to say). */
export class ChildExited extends Error {
  constructor(readonly code: number) {
    super(`exited ${code}`)
  }
}

/** The namespace's process while it runs: interrupts go to it, and it unwinds itself. */
export const delegate: { child: ChildProcess | undefined } = { child: undefined }

/**
 * Runs this command again as uid 0 of a user namespace mapped with the user's subordinate ids
 * (`--internal-userns`, as upstream marks its re-executed child), with the same cwd, environment
 * and stdio, and resolves with its exit status (128+N when signal N ended it). SIGINT, SIGTERM and
 * SIGHUP are passed on (see delegate); killing this process kills it (see userNamespaceCommand).
 * Throws the actionable error when the user cannot have a namespace, INTERRUPTED when `signal`
 * was aborted before it started.
 */
export async function runInUserNamespace(argv: readonly string[], signal?: AbortSignal): Promise<number> {
  const { userNamespaceCommand, userNamespaceMapping } = await import('@stacker/runtime')
  const mapping = await userNamespaceMapping()
  // Interrupted before it started: nothing to hand the interrupt to, nothing to start.
  if (signal?.aborted) throw new StackerError('INTERRUPTED', 'interrupted', { cause: signal.reason })
  const script = process.argv[1]
  if (script === undefined) throw new StackerError('INTERNAL', 'cannot tell which script to run again')
  const env = { ...process.env }
  // bin/stacker takes the extra CA file in STACKER_EXTRA_CA_CERTS and reads it only when a TLS
  // connection is made; under its own name node would parse it at start-up.
  if (/\/bin\/stacker$/.test(script) && env.NODE_EXTRA_CA_CERTS && !env.STACKER_EXTRA_CA_CERTS) {
    env.STACKER_EXTRA_CA_CERTS = env.NODE_EXTRA_CA_CERTS
    delete env.NODE_EXTRA_CA_CERTS
  }
  const cmd = userNamespaceCommand(mapping, [
    process.execPath,
    ...process.execArgv,
    script,
    '--internal-userns',
    ...argv,
  ])
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: 'inherit', env })
  delegate.child = child
  try {
    return await new Promise<number>((resolve, reject) => {
      child.once('error', (e: NodeJS.ErrnoException) =>
        reject(
          e.code === 'ENOENT'
            ? new StackerError('TOOL_MISSING', `${cmd[0]} not found: install the util-linux package`, { cause: e })
            : new StackerError('INTERNAL', `couldn't start ${cmd[0]}: ${e.message}`, { cause: e }),
        ),
      )
      child.once('exit', (code, signal) => resolve(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 1)))
    })
  } finally {
    delegate.child = undefined
  }
}
