import { type Logger, type SourcePos, StackerError } from '@stacker/core'
import { type Alias, isAlias, isMap, isScalar, isSeq, type Node, type YAMLMap } from 'yaml'
import { isGoInt } from './go-format.js'
import { scalarString } from './util.js'
import { type ParsedYaml, parseYaml } from './yaml-doc.js'

/** Options of parseStackerfileText: everything parseStackerfile defaults, given explicitly. */
export interface ParseOptions {
  /** Absolute path or URL: names the file in messages and positions. */
  path: string
  /** Relative paths in the file resolve against this directory. */
  referenceDir: string
  /** `--require-hash`: every http(s) import needs a `hash`. Default false. */
  requireHash?: boolean
  /** Receives the file's warnings. */
  logger: Logger
  /** For layers without `os`: Go's GOOS name (`linux`). */
  os: string
  /** For layers without `arch`: Go's GOARCH name (`amd64`, `arm64`). */
  arch: string
}

/** A key of a YAML map with its (dereferenced) value and where both are. */
export interface Entry {
  /** The key as a string when it is a string scalar. */
  name: string | undefined
  keyNode: Node | null
  /** Dereferenced value; null for an empty value. */
  value: Node | null
  keyOffset: number
  valueOffset: number
}

const MAX_DEREFS = 200_000

/** The YAML document of one stackerfile with positions, alias and merge-key handling, and upstream's
 *  error shape (`fail` throws STACKERFILE with the position). */
export class FileParser {
  readonly y: ParsedYaml
  derefs = 0
  readonly entryCache = new Map<YAMLMap, Entry[]>()
  readonly inProgress = new Set<YAMLMap>()

  constructor(
    readonly text: string,
    readonly opts: ParseOptions,
  ) {
    this.y = parseYaml(text)
  }

  pos(offset: number): SourcePos {
    const { line, col } = this.y.lc.linePos(Math.max(0, Math.min(offset, this.text.length)))
    return { file: this.opts.path, line: line || 1, col: col || 1 }
  }

  fail(message: string, offset: number): never {
    throw new StackerError('STACKERFILE', message, { pos: this.pos(offset) })
  }

  offsetOf(n: Node | null | undefined, fallback = 0): number {
    const r = (n as { range?: [number, number, number] } | null | undefined)?.range
    return r ? r[0] : fallback
  }

  deref(n: Node | null | undefined): Node | null {
    let cur: Node | null | undefined = n
    for (let hops = 0; cur && isAlias(cur); hops++) {
      if (++this.derefs > MAX_DEREFS || hops > 8) {
        this.fail(`couldn't parse stacker file ${this.opts.path}: too many aliases`, this.offsetOf(cur))
      }
      const target: Node | undefined = this.y.aliases.get(cur as Alias)
      if (target === undefined) {
        this.fail(
          `couldn't parse stacker file ${this.opts.path}: unknown anchor '${(cur as Alias).source}' referenced`,
          this.offsetOf(cur),
        )
      }
      cur = target
    }
    if (!cur) return null
    if (isScalar(cur) && cur.value === null) return null
    return cur
  }

  /** A map's entries in file order, with `<<` merge keys expanded (explicit keys win). */
  entries(map: YAMLMap): Entry[] {
    const cached = this.entryCache.get(map)
    if (cached) return cached
    if (this.inProgress.has(map)) {
      this.fail(`couldn't parse stacker file ${this.opts.path}: a merge key refers to its own map`, this.offsetOf(map))
    }
    this.inProgress.add(map)
    const explicit: Entry[] = []
    const merged: Array<{ at: number; entries: Entry[] }> = []
    for (const pair of map.items) {
      const keyNode = pair.key as Node | null
      const keyOffset = this.offsetOf(keyNode, this.offsetOf(map))
      if (isScalar(keyNode) && typeof keyNode.value === 'symbol' && keyNode.value.description === '<<') {
        merged.push({ at: explicit.length, entries: this.mergeSources(pair.value as Node | null, keyOffset) })
        continue
      }
      const k = this.deref(keyNode)
      const value = this.deref(pair.value as Node | null)
      explicit.push({
        name: isScalar(k) && typeof k.value === 'string' ? k.value : undefined,
        keyNode: k,
        value,
        keyOffset,
        valueOffset: this.offsetOf(value ?? (pair.value as Node | null), keyOffset),
      })
    }
    let out = explicit
    if (merged.length > 0) {
      const seen = new Set(explicit.map((e) => keyText(e.keyNode)))
      out = []
      let next = 0
      for (const m of merged) {
        while (next < m.at) out.push(explicit[next++]!)
        for (const e of m.entries) {
          const k = keyText(e.keyNode)
          if (seen.has(k)) continue
          seen.add(k)
          out.push(e)
        }
      }
      while (next < explicit.length) out.push(explicit[next++]!)
    }
    this.inProgress.delete(map)
    this.entryCache.set(map, out)
    return out
  }

  mergeSources(value: Node | null, offset: number): Entry[] {
    const v = this.deref(value)
    const sources = isSeq(v) ? v.items.map((i) => this.deref(i as Node)) : [v]
    const out: Entry[] = []
    for (const s of sources) {
      if (!isMap(s)) {
        this.fail(
          `couldn't parse stacker file ${this.opts.path}: merge sources must be maps or map aliases`,
          this.offsetOf(s, offset),
        )
      }
      out.push(...this.entries(s))
    }
    return out
  }
}

function keyText(n: Node | null): string {
  if (n === null) return ''
  if (isScalar(n)) return `${typeof n.value}:${scalarString(n)}`
  return `node:${(n as { range?: number[] }).range?.[0] ?? -1}`
}

/** The YAML tag a value resolved to, for type errors. */
export function yamlTag(n: Node | null): string {
  if (n === null) return '!!null'
  if (isMap(n)) return '!!map'
  if (isSeq(n)) return '!!seq'
  if (isScalar(n)) {
    const v = n.value
    if (typeof v === 'string') return '!!str'
    if (typeof v === 'boolean') return '!!bool'
    if (typeof v === 'number' || typeof v === 'bigint') return isGoInt(n) ? '!!int' : '!!float'
    if (v instanceof Uint8Array) return '!!binary'
  }
  return '!!str'
}
