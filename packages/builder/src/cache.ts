import { readFile, rm, mkdir, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import {
  atomicWriteFile,
  canonicalJson,
  digestHex,
  isDigest,
  sha256Digest,
  type Digest,
  type Logger,
} from '@stacker/core'
import type { Descriptor } from '@stacker/oci'
import { changedPaths, type TreeEntry } from './hashing.js'

/** Bumped whenever the meaning of a cache entry or of a generated layer changes. */
export const CACHE_VERSION = 4

export interface ImportPart {
  path: string
  kind: 'file' | 'dir' | 'http' | 'stacker' | 'missing'
  digest: string
  dest?: string
}

export interface OverlayDirPart {
  source: string
  dest: string
  digest: string
  entries: TreeEntry[]
}

/** Everything a layer's filesystem depends on, computed before anything runs. */
export interface CacheParts {
  /** Layers alike in everything but the name still get their own entries: two of them built at
   *  once must never answer for each other's (possibly different) content. */
  name: string
  definition: unknown
  base: string
  sourceDateEpoch: number | null
  imports: ImportPart[]
  overlayDirs: OverlayDirPart[]
}

export interface CacheEntry {
  version: number
  name: string
  key: Digest
  parts: CacheParts
  /** The layer's filesystem: content ids, bottom to top. */
  chain: string[]
  /** For each chain entry, the history `created_by` of its layer in an image. */
  chainNotes: string[]
  buildOnly: boolean
  /** What the layer's outputs extend: the chain entries it covers come from there. */
  origin: Origin
  /** The content id of the layer's own diff (the top of `chain`), null when its build changed nothing. */
  ownContent: string | null
  /** Labels written by generate_labels. */
  generatedLabels: Array<[string, string]>
  /** Output manifests by output key (`tar+false`, `squashfs+true`, ...). */
  outputs: Record<string, Descriptor>
}

export type Origin =
  | { kind: 'parent'; name: string }
  | { kind: 'image'; layout: string; digest: Digest; contents: string[] }
  | { kind: 'empty' }

/** The token that stands for the stackerfile's directory in a portable key. */
const ROOT_TOKEN = '${STACKERFILE_DIR}'

/** `value` with every mention of `root` (or a path under it) in its strings, also inside a longer
 *  string such as a run line, rewritten relative to ROOT_TOKEN. */
function portable(value: unknown, root: string): unknown {
  const re = new RegExp(`(?<![\\w.-])${root.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?![\\w.-])`, 'g')
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') return v.includes(root) ? v.replace(re, ROOT_TOKEN) : v
    if (Array.isArray(v)) return v.map(walk)
    if (v !== null && typeof v === 'object') {
      const out: Record<string, unknown> = {}
      for (const [k, x] of Object.entries(v)) out[k] = walk(x)
      return out
    }
    return v
  }
  return root === '/' || root === '' ? value : walk(value)
}

/**
 * A layer's cache key. It is portable: the same stackerfile gives the same key on any machine, in
 * any directory, so a shared cache (see remote-cache.ts) can answer for it. Host paths under the
 * stackerfile's directory `root` (imports, overlay_dirs, binds, substituted dirs) enter relative
 * to it; imports and overlay_dirs enter by content digest; `build_env` values enter with the
 * definition (a different value is a miss), and the key, a digest, shows none of them.
 */
export function cacheKey(parts: CacheParts, root: string): Digest {
  const forKey = {
    v: CACHE_VERSION,
    ...parts,
    definition: portable(parts.definition, root),
    imports: parts.imports.map((i) => ({ ...i, path: portable(i.path, root) })),
    overlayDirs: parts.overlayDirs.map(({ entries: _e, source, ...rest }) => ({
      ...rest,
      source: portable(source, root),
    })),
  }
  return sha256Digest(canonicalJson(forKey))
}

/** Content-addressed build cache: `<stacker-dir>/cache/entries/<key>.json`, plus the last key of each
 *  layer name in `names/` for "cache miss because ..." messages. Every file is written atomically; a
 *  corrupt or foreign-version file is discarded with a warning. */
export class BuildCache {
  readonly #dir: string
  readonly #logger: Logger

  private constructor(dir: string, logger: Logger) {
    this.#dir = dir
    this.#logger = logger
  }

  static async open(stackerDir: string, logger: Logger): Promise<BuildCache> {
    const dir = join(stackerDir, 'cache')
    await mkdir(join(dir, 'entries'), { recursive: true })
    await mkdir(join(dir, 'names'), { recursive: true })
    return new BuildCache(dir, logger)
  }

  async #readJson<T>(file: string, what: string): Promise<T | undefined> {
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch {
      return undefined
    }
    try {
      const v = JSON.parse(text) as { version?: unknown }
      if (v.version !== CACHE_VERSION) {
        this.#logger.warn(`old cache version found for ${what}, discarding it and rebuilding`)
        await rm(file, { force: true })
        return undefined
      }
      return v as T
    } catch {
      this.#logger.warn(`corrupt cache file ${file} discarded`)
      await rm(file, { force: true })
      return undefined
    }
  }

  async get(key: Digest): Promise<CacheEntry | undefined> {
    if (typeof key !== 'string' || !isDigest(key)) return undefined
    const file = join(this.#dir, 'entries', `${digestHex(key)}.json`)
    const e = await this.#readJson<unknown>(file, key)
    if (e === undefined) return undefined
    if (!isCacheEntry(e, key)) {
      this.#logger.warn(`corrupt cache file ${file} discarded`)
      await rm(file, { force: true })
      return undefined
    }
    return e
  }

  async lastFor(name: string): Promise<CacheEntry | undefined> {
    const file = join(this.#dir, 'names', nameFile(name))
    const ref = await this.#readJson<{ version: number; key: unknown }>(file, name)
    if (!ref) return undefined
    // The key names a file: anything but a digest is damage (and must not lead outside entries/).
    if (typeof ref.key !== 'string' || !isDigest(ref.key)) {
      this.#logger.warn(`corrupt cache file ${file} discarded`)
      await rm(file, { force: true })
      return undefined
    }
    return this.get(ref.key)
  }

  async put(entry: CacheEntry): Promise<void> {
    await atomicWriteFile(join(this.#dir, 'entries', `${digestHex(entry.key)}.json`), JSON.stringify(entry), 0o600)
    await atomicWriteFile(
      join(this.#dir, 'names', nameFile(entry.name)),
      JSON.stringify({ version: CACHE_VERSION, key: entry.key }),
      0o600,
    )
  }

  /** Every entry still on disk (for garbage collection of layer contents). */
  async all(): Promise<CacheEntry[]> {
    const out: CacheEntry[] = []
    for (const f of await readdir(join(this.#dir, 'entries'))) {
      if (!f.endsWith('.json')) continue
      const e = await this.#readJson<CacheEntry>(join(this.#dir, 'entries', f), f)
      if (e) out.push(e)
    }
    return out
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)
const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string')

/** Whether a parsed record has the shape of a CacheEntry for `key`: a damaged record that parses as
 *  JSON must be a miss, not a crash later on (or a hit with a wrong filesystem). */
function isCacheEntry(e: unknown, key: Digest): e is CacheEntry {
  if (!isObject(e) || e.key !== key || typeof e.name !== 'string' || typeof e.buildOnly !== 'boolean') return false
  if (!isStringArray(e.chain) || !isStringArray(e.chainNotes) || e.chainNotes.length !== e.chain.length) return false
  if (!isObject(e.outputs) || !isObject(e.origin) || !Array.isArray(e.generatedLabels)) return false
  if (e.ownContent !== null && (typeof e.ownContent !== 'string' || e.chain.at(-1) !== e.ownContent)) return false
  const p = e.parts
  return (
    isObject(p) &&
    typeof p.base === 'string' &&
    Array.isArray(p.imports) &&
    Array.isArray(p.overlayDirs) &&
    'definition' in p &&
    (p.sourceDateEpoch === null || typeof p.sourceDateEpoch === 'number')
  )
}

function nameFile(name: string): string {
  return `${encodeURIComponent(name)}.json`
}

/** Upstream's reasons for a miss, comparing the last entry of a layer with the new parts. */
export function explainMiss(prev: CacheParts, next: CacheParts, debug: boolean): string[] {
  if (canonicalJson(prev.definition) !== canonicalJson(next.definition))
    return ['cache miss because layer definition was changed']
  if (prev.base !== next.base) return ['cache miss because base layer was changed']
  if (prev.sourceDateEpoch !== next.sourceDateEpoch) return ['cache miss because SOURCE_DATE_EPOCH changed']
  const before = new Map(prev.imports.map((i) => [i.path, i]))
  for (const i of next.imports) {
    const p = before.get(i.path)
    if (!p) return [`cache miss because of new import: ${i.path}`]
    if (i.kind === 'missing') return [`cache miss because import was missing: ${i.path}`]
    if (p.kind !== i.kind) return [`cache miss because import type changed: ${i.path}`]
    if (p.digest !== i.digest)
      return [
        i.kind === 'dir'
          ? `cache miss because import dir content changed: ${i.path}`
          : `cache miss because import content changed: ${i.path}`,
      ]
    if (p.dest !== i.dest) return [`cache miss because import dest changed: ${i.path}`]
  }
  const prevOd = new Map(prev.overlayDirs.map((o) => [o.source, o]))
  const changed: Array<{ source: string; paths: string[] }> = []
  for (const o of next.overlayDirs) {
    const p = prevOd.get(o.source)
    if (!p) return [`cache miss because of new overlay_dir: ${o.source}`]
    if (p.digest !== o.digest)
      changed.push({
        source: o.source,
        // Full host paths, as upstream prints them.
        paths: changedPaths(p.entries, o.entries).map((rel) => (rel === '.' ? o.source : join(o.source, rel))),
      })
  }
  if (changed.length) {
    const lines = [`cache miss because content of ${changed.length} overlay dirs changed:`]
    const shown = debug ? changed : changed.slice(0, 2)
    for (const c of shown) lines.push(`Changed overlay_dir: ${c.source}\nContents that changed:\n${c.paths.join('\n')}`)
    if (changed.length > shown.length)
      lines.push(`and ${changed.length - shown.length} other overlay_dirs. use --debug for complete output`)
    return lines
  }
  if (prev.imports.length !== next.imports.length) return ['cache miss because imports changed']
  return ['cache miss because the layer inputs changed']
}
