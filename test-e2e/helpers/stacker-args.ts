import { readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'

// The CLI's global options and the build commands' options that take a value (apps/stacker/src/main.ts
// and commands.ts); every other option is a flag. Kept to what the build commands accept: the corpus
// only records `build` and `recursive-build`.
const GLOBAL_VALUES = new Set([
  '--work-dir',
  '--stacker-dir',
  '--oci-dir',
  '--roots-dir',
  '--config',
  '--log-file',
  '--storage-type',
])
const BUILD_VALUES = new Set([
  '-f',
  '--stacker-file',
  '--substitute',
  '--substitute-file',
  '--on-run-failure',
  '--layer-type',
  '--annotations-namespace',
  '-j',
  '--jobs',
  '--tar-compression',
  '-p',
  '--stacker-file-pattern',
  '-d',
  '--search-dir',
])

/** A stacker command line split as the CLI reads it: global options, the command, its options. */
export interface StackerArgs {
  /** Global options by name (last one wins); flags map to ''. */
  globals: Map<string, string>
  command: string | undefined
  /** The command's options by name, every value in order; flags map to ['']. */
  options: Map<string, string[]>
}

function takeOption(args: readonly string[], i: number, values: ReadonlySet<string>): [string, string, number] {
  const a = args[i] as string
  const eq = a.indexOf('=')
  if (a.startsWith('--') && eq > 0) return [a.slice(0, eq), a.slice(eq + 1), i + 1]
  // Short options glue their value on: `-j2`, `-fstacker.yaml`.
  if (!a.startsWith('--') && a.length > 2 && values.has(a.slice(0, 2))) return [a.slice(0, 2), a.slice(2), i + 1]
  if (values.has(a)) return [a, args[i + 1] ?? '', i + 2]
  return [a, '', i + 1]
}

/** Splits a command line the way the CLI does (commander with positional options). */
export function parseStackerArgs(args: readonly string[]): StackerArgs {
  const globals = new Map<string, string>()
  const options = new Map<string, string[]>()
  let command: string | undefined
  let i = 0
  while (i < args.length && command === undefined) {
    const a = args[i] as string
    if (!a.startsWith('-')) {
      command = a
      i++
      break
    }
    const [name, value, next] = takeOption(args, i, GLOBAL_VALUES)
    globals.set(name, value)
    i = next
  }
  while (i < args.length) {
    const a = args[i] as string
    if (a === '--') break
    if (!a.startsWith('-')) {
      i++
      continue
    }
    const [name, value, next] = takeOption(args, i, BUILD_VALUES)
    const long =
      name === '-f'
        ? '--stacker-file'
        : name === '-j'
          ? '--jobs'
          : name === '-p'
            ? '--stacker-file-pattern'
            : name === '-d'
              ? '--search-dir'
              : name
    options.set(long, [...(options.get(long) ?? []), value])
    i = next
  }
  return { globals, command, options }
}

/** True for the commands whose outputs --jobs may change. */
export function isBuildCommand(a: StackerArgs): boolean {
  return a.command === 'build' || a.command === 'recursive-build'
}

export interface StackerDirs {
  workDir: string
  stackerDir: string
  ociDir: string
  rootsDir: string
}

function configValues(path: string): Record<string, string> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch {
    return {}
  }
  // conf.yaml is a flat map of strings; the four keys are all the CLI reads of it.
  const out: Record<string, string> = {}
  for (const line of text.split('\n')) {
    const m = /^(work_dir|stacker_dir|oci_dir|rootfs_dir):\s*(.*?)\s*$/.exec(line)
    if (m?.[1] && m[2]) out[m[1]] = m[2].replace(/^(['"])(.*)\1$/, '$2')
  }
  return out
}

/** The storage dirs the CLI resolves (apps/stacker/src/settings.ts resolveDirs), absolute against cwd. */
export function stackerDirs(a: StackerArgs, cwd: string, env: Record<string, string | undefined>): StackerDirs {
  const confPath =
    a.globals.get('--config') ??
    (env.XDG_CONFIG_HOME ? join(env.XDG_CONFIG_HOME, 'conf.yaml') : join(homedir(), '.config', 'stacker', 'conf.yaml'))
  const conf = configValues(resolve(cwd, confPath))
  const workDir = a.globals.get('--work-dir') ?? conf.work_dir ?? ''
  const pick = (flag: string, key: string, def: string): string => {
    const p = a.globals.get(flag) ?? conf[key] ?? (workDir ? join(workDir, def) : def)
    return isAbsolute(p) ? p : resolve(cwd, p)
  }
  return {
    workDir,
    stackerDir: pick('--stacker-dir', 'stacker_dir', '.stacker'),
    ociDir: pick('--oci-dir', 'oci_dir', 'oci'),
    rootsDir: pick('--roots-dir', 'rootfs_dir', 'roots'),
  }
}
