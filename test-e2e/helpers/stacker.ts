import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { execa } from 'execa'
import { expect, inject } from 'vitest'
import { startRecording } from './corpus.js'
import { REPO_ROOT, STACKER_BIN } from './paths.js'

// stacker puts .stacker, roots and oci in its cwd; a test that forgets cwd must not litter the repo, so
// the default cwd is an empty dir that global-setup makes and removes.
function scratchDir(): string {
  try {
    return inject('scratchDir')
  } catch {
    return tmpdir()
  }
}

// Where builds are recorded for the --jobs replay (helpers/corpus.ts); undefined outside the e2e project.
function corpusDir(): string | undefined {
  try {
    return inject('corpusDir')
  } catch {
    return undefined
  }
}

export interface StackerResult {
  stdout: string
  stderr: string
  exitCode: number
  /** Set when the process was killed by a signal (timeoutMs included). */
  signal: string | undefined
  timedOut: boolean
  /** The command line, for failure messages. */
  command: string
}

export interface StackerOptions {
  /** Working directory; default an empty scratch dir, removed after the run. Tests that build pass theirs. */
  cwd?: string
  /** Added to (and overriding) the test process's environment; `undefined` removes a variable. */
  env?: Record<string, string | undefined>
  /** Written to stdin; stdin is empty otherwise. */
  input?: string
  /** Kills the process after this long; default 10 minutes. */
  timeoutMs?: number
  /** Runs bin/stacker as an executable (its `#!/bin/sh` part included) instead of `node bin/stacker`. */
  direct?: boolean
}

/**
 * Runs `node bin/stacker` (or bin/stacker itself, with `direct`). Never throws: a failure shows in exitCode and stderr
 * (a missing build or a signal gives a non-zero exitCode too). `--debug` is not added.
 */
export async function stacker(args: string[], opts: StackerOptions = {}): Promise<StackerResult> {
  const [file, argv] = opts.direct ? [STACKER_BIN, args] : [process.execPath, [STACKER_BIN, ...args]]
  const cwd = opts.cwd ?? scratchDir()
  const corpus = corpusDir()
  const state = expect.getState()
  const recording =
    corpus === undefined
      ? undefined
      : await startRecording(corpus, args, {
          cwd,
          env: opts.env ?? {},
          input: opts.input ?? '',
          origin: {
            file: state.testPath === undefined ? '?' : relative(join(REPO_ROOT, 'test-e2e'), state.testPath),
            test: state.currentTestName ?? '(a suite hook)',
          },
        })
  const r = await execa(file, argv, {
    cwd,
    env: opts.env ?? {},
    input: opts.input ?? '',
    timeout: opts.timeoutMs ?? 600_000,
    reject: false,
    stripFinalNewline: false,
  })
  await recording?.finish(r.exitCode ?? 1)
  return {
    stdout: String(r.stdout ?? ''),
    stderr: String(r.stderr ?? ''),
    exitCode: r.exitCode ?? (r.signal ? 128 : 1),
    signal: r.signal ?? undefined,
    timedOut: r.timedOut,
    command: r.command,
  }
}

/** Throws with the whole output unless the result exited 0; returns it for chaining. */
export function expectOk(r: StackerResult): StackerResult {
  if (r.exitCode !== 0) {
    throw new Error(`${r.command} exited ${r.exitCode}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`)
  }
  return r
}
