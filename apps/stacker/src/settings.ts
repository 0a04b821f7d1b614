import { readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import { StackerError } from '@stacker/core'
import { parse as parseYaml } from 'yaml'

export interface DirFlags {
  workDir?: string | undefined
  stackerDir?: string | undefined
  ociDir?: string | undefined
  rootsDir?: string | undefined
  config?: string | undefined
}

export interface ResolvedDirs {
  workDir: string
  stackerDir: string
  ociDir: string
  rootsDir: string
  /** The roots dir as given, before it was made absolute (the `:` check runs on it). */
  rootsDirArg: string
}

const DEFAULTS = { stackerDir: '.stacker', ociDir: 'oci', rootsDir: 'roots' } as const

export function defaultConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.XDG_CONFIG_HOME
    ? join(env.XDG_CONFIG_HOME, 'conf.yaml')
    : join(homedir(), '.config', 'stacker', 'conf.yaml')
}

interface ConfigFile {
  work_dir?: string
  stacker_dir?: string
  oci_dir?: string
  rootfs_dir?: string
  /** The shared build cache: a repository or a list of them. */
  cache_to?: string[]
  cache_from?: string[]
}

/** Reads conf.yaml. A missing or unreadable file is ignored; a YAML error is fatal, as upstream. */
export function readConfigFile(path: string): ConfigFile {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch {
    return {}
  }
  let doc: unknown
  try {
    doc = parseYaml(text)
  } catch (e) {
    throw new StackerError('USAGE', `couldn't parse config file ${path}: ${(e as Error).message.split('\n')[0]}`)
  }
  if (doc === null || doc === undefined) return {}
  if (typeof doc !== 'object' || Array.isArray(doc))
    throw new StackerError('USAGE', `couldn't parse config file ${path}: not a map`)
  const out: ConfigFile = {}
  const d = doc as Record<string, unknown>
  for (const k of ['work_dir', 'stacker_dir', 'oci_dir', 'rootfs_dir'] as const) {
    const v = d[k]
    if (typeof v === 'string' && v !== '') out[k] = v
  }
  for (const k of ['cache_to', 'cache_from'] as const) {
    const v = d[k]
    if (v === undefined || v === null) continue
    const list = typeof v === 'string' ? [v] : v
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'string' && x !== ''))
      throw new StackerError('USAGE', `couldn't parse config file ${path}: ${k} must be a repository or a list of them`)
    out[k] = list as string[]
  }
  return out
}

/** `--cache-to`/`--cache-from` when given, else the config file's `cache_to`/`cache_from`. */
export function cacheRepositories(
  flags: DirFlags,
  given: { cacheTo: string[]; cacheFrom: string[] },
): { cacheTo: string[]; cacheFrom: string[] } {
  const conf = readConfigFile(flags.config ?? defaultConfigPath())
  return {
    cacheTo: given.cacheTo.length ? given.cacheTo : (conf.cache_to ?? []),
    cacheFrom: given.cacheFrom.length ? given.cacheFrom : (conf.cache_from ?? []),
  }
}

/** Upstream's resolution order: config-file values unless the flag was given; then work-dir joining for
 *  dirs that are still unset; then absolute relative to the cwd. */
export function resolveDirs(flags: DirFlags, cwd = process.cwd()): ResolvedDirs {
  const conf = readConfigFile(flags.config ?? defaultConfigPath())
  const workDir = flags.workDir ?? conf.work_dir ?? ''
  const pick = (flag: string | undefined, fromConf: string | undefined, def: string): string => {
    if (flag !== undefined) return flag
    if (fromConf !== undefined) return fromConf
    return workDir ? join(workDir, def) : def
  }
  const stackerDir = pick(flags.stackerDir, conf.stacker_dir, DEFAULTS.stackerDir)
  const ociDir = pick(flags.ociDir, conf.oci_dir, DEFAULTS.ociDir)
  const rootsDir = pick(flags.rootsDir, conf.rootfs_dir, DEFAULTS.rootsDir)
  if (rootsDir.includes(':'))
    throw new StackerError(
      'USAGE',
      `using ':' in the name of --roots-dir (${rootsDir}) is forbidden due to overlay constraints`,
    )
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(cwd, p))
  return { workDir, stackerDir: abs(stackerDir), ociDir: abs(ociDir), rootsDir: abs(rootsDir), rootsDirArg: rootsDir }
}

/** Parses SOURCE_DATE_EPOCH as upstream does (an int64), or undefined when unset. */
export function sourceDateEpoch(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const v = env.SOURCE_DATE_EPOCH
  if (v === undefined || v === '') return undefined
  if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(Number(v))) {
    throw new StackerError(
      'USAGE',
      `invalid SOURCE_DATE_EPOCH value ${JSON.stringify(v)}: strconv.ParseInt: parsing ${JSON.stringify(v)}: invalid syntax`,
    )
  }
  return Number(v)
}
