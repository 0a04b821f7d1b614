import { readdirSync, readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { StackerError } from '@stacker/core'
import { parse as parseToml } from 'smol-toml'
import { type ImageRef, makeRef } from './ref.js'

/** One `[[registry]]` table of registries.conf (version 2), as containers/image reads it. */
export interface RegistryEntry {
  prefix: string
  location: string
  insecure: boolean
  blocked: boolean
  mirrors: Array<{ location: string; insecure: boolean }>
  /** `pull-from-mirror`: which references may come from the mirrors. */
  pullFromMirror: 'all' | 'digest-only' | 'tag-only'
  /** Where the entry was read, for messages. */
  file: string
}

/** Where a pull may come from, in order: the mirrors, then the registry itself. */
export interface PullSource {
  ref: ImageRef
  insecure: boolean
  mirror: boolean
}

/** The environment that names registries.conf (`CONTAINERS_REGISTRIES_CONF`, `HOME`). */
export interface RegistriesConfOptions {
  env?: NodeJS.ProcessEnv
}

/** The files read, in order, later ones adding or replacing entries by prefix:
 *  `$CONTAINERS_REGISTRIES_CONF` alone when set; else the user's file
 *  (`~/.config/containers/registries.conf`) if it exists, or `/etc/containers/registries.conf`,
 *  then the `*.conf` drop-ins of the `registries.conf.d` directory beside it. */
export function registriesConfFiles(opts: RegistriesConfOptions = {}): string[] {
  const env = opts.env ?? process.env
  if (env.CONTAINERS_REGISTRIES_CONF) return [env.CONTAINERS_REGISTRIES_CONF]
  const user = join(env.HOME || homedir(), '.config', 'containers', 'registries.conf')
  const main = readable(user) ? user : '/etc/containers/registries.conf'
  const dropDir = join(dirname(main), 'registries.conf.d')
  let drops: string[] = []
  try {
    drops = readdirSync(dropDir)
      .filter((n) => n.endsWith('.conf'))
      .sort()
      .map((n) => join(dropDir, n))
  } catch {
    // no drop-in directory
  }
  return [main, ...drops]
}

function readable(path: string): boolean {
  try {
    readFileSync(path)
    return true
  } catch {
    return false
  }
}

const stripScheme = (s: string) => s.replace(/^[a-z]+:\/\//i, '').replace(/\/+$/, '')

/** Reads the `[[registry]]` entries of every registries.conf file (see registriesConfFiles).
 *  A missing file is no entries; a file that is not valid TOML, or an entry of the wrong shape, is
 *  an error naming the file. */
export function readRegistriesConf(opts: RegistriesConfOptions = {}): RegistryEntry[] {
  const byPrefix = new Map<string, RegistryEntry>()
  for (const file of registriesConfFiles(opts)) {
    let text: string
    try {
      text = readFileSync(file, 'utf8')
    } catch {
      continue
    }
    let doc: Record<string, unknown>
    try {
      doc = parseToml(text) as Record<string, unknown>
    } catch (e) {
      // The parser's TomlError says where: 1-based line and column.
      const { line, column } = e as { line?: unknown; column?: unknown }
      const at = typeof line === 'number' ? `:${line}${typeof column === 'number' ? `:${column}` : ''}` : ''
      throw new StackerError('USAGE', `invalid registries.conf ${file}${at}: not valid TOML`)
    }
    const list = doc.registry
    if (list === undefined) continue
    if (!Array.isArray(list))
      throw new StackerError('USAGE', `invalid registries.conf ${file}: [registry] must be [[registry]] tables`)
    for (const raw of list as unknown[]) {
      const e = parseEntry(file, raw)
      byPrefix.set(e.prefix, e)
    }
  }
  return [...byPrefix.values()]
}

function parseEntry(file: string, raw: unknown): RegistryEntry {
  const bad = (what: string) => new StackerError('USAGE', `invalid registries.conf ${file}: ${what}`)
  if (typeof raw !== 'object' || raw === null) throw bad('a [[registry]] entry is not a table')
  const r = raw as Record<string, unknown>
  const str = (k: string) => {
    const v = r[k]
    if (v === undefined) return undefined
    if (typeof v !== 'string') throw bad(`"${k}" must be a string`)
    return v
  }
  const bool = (o: Record<string, unknown>, k: string) => {
    const v = o[k]
    if (v === undefined) return false
    if (typeof v !== 'boolean') throw bad(`"${k}" must be true or false`)
    return v
  }
  const location = stripScheme(str('location') ?? '')
  const prefix = stripScheme(str('prefix') ?? location)
  if (prefix === '') throw bad('a [[registry]] entry has neither prefix nor location')
  const mirrorsRaw = r.mirror ?? []
  if (!Array.isArray(mirrorsRaw)) throw bad('"mirror" must be [[registry.mirror]] tables')
  const mirrors = (mirrorsRaw as unknown[]).map((m) => {
    if (typeof m !== 'object' || m === null) throw bad('a mirror is not a table')
    const mo = m as Record<string, unknown>
    if (typeof mo.location !== 'string' || mo.location === '') throw bad('a mirror has no location')
    return { location: stripScheme(mo.location), insecure: bool(mo, 'insecure') }
  })
  const pfm = str('pull-from-mirror') ?? (bool(r, 'mirror-by-digest-only') ? 'digest-only' : 'all')
  if (pfm !== 'all' && pfm !== 'digest-only' && pfm !== 'tag-only')
    throw bad(`"pull-from-mirror" must be all, digest-only or tag-only`)
  return {
    prefix,
    location: location === '' ? prefix : location,
    insecure: bool(r, 'insecure'),
    blocked: bool(r, 'blocked'),
    mirrors,
    pullFromMirror: pfm,
    file,
  }
}

/** Whether `name` (`host[:port]/path`) falls under `prefix`: equal, or a path-component prefix;
 *  `*.example.com` matches any subdomain's references. */
function prefixMatches(prefix: string, name: string): boolean {
  if (prefix.startsWith('*.')) {
    const host = name.split('/')[0] ?? ''
    return host.endsWith(prefix.slice(1))
  }
  return name === prefix || name.startsWith(`${prefix}/`)
}

/** The entry with the longest prefix matching the reference, as containers/image picks it. */
export function findRegistryEntry(ref: ImageRef, entries: readonly RegistryEntry[]): RegistryEntry | undefined {
  const name = `${ref.registry}/${ref.repository}`
  let best: RegistryEntry | undefined
  for (const e of entries) {
    if (!prefixMatches(e.prefix, name)) continue
    if (!best || e.prefix.length > best.prefix.length) best = e
  }
  return best
}

function rewrite(ref: ImageRef, entry: RegistryEntry, location: string): ImageRef {
  const name = `${ref.registry}/${ref.repository}`
  const rest = entry.prefix.startsWith('*.') ? name.slice(name.indexOf('/')) : name.slice(entry.prefix.length)
  const full = `${location}${rest}`
  const slash = full.indexOf('/')
  return makeRef(full.slice(0, slash), full.slice(slash + 1), ref.tag, ref.digest)
}

/** Where to pull `ref` from: its entry's mirrors (if `pull-from-mirror` allows them for this
 *  reference), then its location, each with its own `insecure`. A `blocked` registry is an error. */
export function pullSources(ref: ImageRef, entries: readonly RegistryEntry[]): PullSource[] {
  const e = findRegistryEntry(ref, entries)
  if (!e) return [{ ref, insecure: false, mirror: false }]
  if (e.blocked)
    throw new StackerError('REGISTRY', `registry ${ref.registry} is blocked in ${e.file}`, {
      detail: { reason: 'blocked', retryable: false },
      hint: 'remove "blocked = true" from its [[registry]] entry to use it',
    })
  const byDigest = ref.digest !== undefined
  const mirrorsApply = e.pullFromMirror === 'all' || (e.pullFromMirror === 'digest-only') === byDigest
  const out: PullSource[] = mirrorsApply
    ? e.mirrors.map((m) => ({ ref: rewrite(ref, e, m.location), insecure: m.insecure, mirror: true }))
    : []
  out.push({ ref: rewrite(ref, e, e.location), insecure: e.insecure, mirror: false })
  return out
}

/** How to push `ref`: to the reference itself (containers/image remaps locations and uses mirrors
 *  for pulls only), `insecure` as its entry says. A `blocked` registry is an error. */
export function pushTarget(ref: ImageRef, entries: readonly RegistryEntry[]): PullSource {
  const e = findRegistryEntry(ref, entries)
  if (!e) return { ref, insecure: false, mirror: false }
  if (e.blocked)
    throw new StackerError('REGISTRY', `registry ${ref.registry} is blocked in ${e.file}`, {
      detail: { reason: 'blocked', retryable: false },
    })
  return { ref, insecure: e.insecure, mirror: false }
}
