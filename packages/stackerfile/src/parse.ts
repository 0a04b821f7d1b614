import { isAbsolute, resolve } from 'node:path'
import { type Logger, type SourcePos, StackerError } from '@stacker/core'
import { type Alias, isAlias, isMap, isScalar, isSeq, type Node, type YAMLMap } from 'yaml'
import { goFormat, goQuote, goTypeName, isGoInt } from './go-format.js'
import type { Bind, ImageSource, ImportSpec, Layer, OverlayDir, Stackerfile } from './model.js'
import { parseSource } from './source.js'
import { splitShellWords } from './shlex.js'
import { hasScheme, scalarString, urlScheme } from './util.js'
import { type ParsedYaml, parseYaml } from './yaml-doc.js'

/** The directives upstream's Layer struct accepts (its yaml tags). */
export const LAYER_DIRECTIVES: readonly string[] = [
  'from',
  'imports',
  'import',
  'overlay_dirs',
  'run',
  'cmd',
  'entrypoint',
  'full_command',
  'build_env_passthrough',
  'build_env',
  'environment',
  'volumes',
  'labels',
  'generate_labels',
  'working_dir',
  'build_only',
  'binds',
  'runtime_user',
  'annotations',
  'os',
  'arch',
  'bom',
  'was_legacy_import',
  'was_bom',
]
const DIRECTIVES = new Set(LAYER_DIRECTIVES)
const IMAGE_SOURCE_FIELDS = new Set(['type', 'url', 'tag', 'insecure'])

/** Non-build-only layers become OCI refs, so their names must be valid ref names, as upstream requires. */
export const OCI_REF_RE = /^([A-Za-z0-9]+(([-._:@+]|--)[A-Za-z0-9]+)*)(\/([A-Za-z0-9]+(([-._:@+]|--)[A-Za-z0-9]+)*))*$/

export interface ParseOptions {
  /** Absolute path or URL: names the file in messages and positions. */
  path: string
  /** Relative paths in the file resolve against this directory. */
  referenceDir: string
  requireHash?: boolean
  logger: Logger
  os: string
  arch: string
}

/** A parsed file plus where each prerequisite is written, for errors found while loading them. */
export interface ParsedStackerfile extends Stackerfile {
  prerequisitePositions: SourcePos[]
}

interface Entry {
  /** The key as a string when it is a string scalar. */
  name: string | undefined
  keyNode: Node | null
  /** Dereferenced value; null for an empty value. */
  value: Node | null
  keyOffset: number
  valueOffset: number
}

const MAX_DEREFS = 200_000

class FileParser {
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
function yamlTag(n: Node | null): string {
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

/** Parses the (already substituted) text of one stackerfile. Pure and synchronous; throws
 *  StackerError (STACKERFILE, with a position) on any problem. */
export function parseStackerfileText(text: string, opts: ParseOptions): ParsedStackerfile {
  try {
    return parseText(text, opts)
  } catch (e) {
    // Pathological nesting (thousands of chained merge keys) exhausts the stack; that is a property
    // of the document, not a bug, so it gets reported like any other unparseable file.
    if (e instanceof RangeError) {
      throw new StackerError('STACKERFILE', `couldn't parse stacker file ${opts.path}: ${e.message}`, { cause: e })
    }
    throw e
  }
}

function parseText(text: string, opts: ParseOptions): ParsedStackerfile {
  const p: FileParser = new FileParser(text, opts)
  const { path } = opts
  if (p.y.error) p.fail(`couldn't parse stacker file ${path}: ${p.y.error.message}`, p.y.error.offset)

  const layers = new Map<string, Layer>()
  const fileOrder: string[] = []
  let prerequisites: string[] = []
  let prerequisitePositions: SourcePos[] = []
  const root = p.deref(p.y.doc.contents as Node | null)
  if (root !== null) {
    if (!isMap(root)) {
      p.fail(
        `couldn't parse stacker file ${path}: the top level must be a map of layer names to layer definitions, found ${yamlTag(root)}`,
        p.offsetOf(root),
      )
    }
    for (const e of p.entries(root)) {
      if (e.name === undefined) {
        p.fail(`stackerfile: cannot cast ${goFormat(e.keyNode, { sharp: false, doc: p.y.doc })} to string`, e.keyOffset)
      }
      const name = e.name
      if (name === 'config') {
        const cfg = parseConfig(p, e)
        prerequisites = cfg.paths
        prerequisitePositions = cfg.positions
        continue
      }
      if (layers.has(name)) p.fail(`duplicate layer name: both ${path} and ${path} have ${name}`, e.keyOffset)
      layers.set(name, parseLayer(p, name, e))
      fileOrder.push(name)
    }
  }
  return { path, referenceDir: opts.referenceDir, text, prerequisites, prerequisitePositions, layers, fileOrder }
}

function parseConfig(p: FileParser, e: Entry): { paths: string[]; positions: SourcePos[] } {
  const out = { paths: [] as string[], positions: [] as SourcePos[] }
  if (e.value === null) return out
  const bad: () => never = () =>
    p.fail(
      `stackerfile: cannot interpret 'config' value, note the 'config' section in the stackerfile cannot contain a layer definition ${goFormat(e.value, { sharp: false, style: 'mapslice', doc: p.y.doc })}`,
      e.valueOffset,
    )
  if (!isMap(e.value)) return bad()
  for (const c of p.entries(e.value)) {
    if (c.name !== 'prerequisites') continue
    out.paths = []
    out.positions = []
    if (c.value === null) continue
    if (!isSeq(c.value)) return bad()
    for (const item of c.value.items) {
      const v = p.deref(item as Node)
      if (v !== null && !isScalar(v)) return bad()
      const raw = scalarString(v)
      out.paths.push(hasScheme(raw) || isAbsolute(raw) ? raw : resolve(p.opts.referenceDir, raw))
      out.positions.push(p.pos(p.offsetOf(v ?? (item as Node), c.valueOffset)))
    }
  }
  return out
}

/** Makes a stackerfile path absolute against the reference dir; `scheme://` strings are left alone. */
function absolutify(ref: string, path: string): string {
  return hasScheme(path) || isAbsolute(path) ? path : resolve(ref, path)
}

function parseLayer(p: FileParser, name: string, e: Entry): Layer {
  const layerPos = p.pos(e.keyOffset)
  if (e.value === null || !isMap(e.value)) {
    p.fail(
      `stackerfile: layer ${name} must be a map of directives, found ${yamlTag(e.value)}`,
      e.value === null ? e.keyOffset : e.valueOffset,
    )
  }
  const directives = new Map<string, Entry>()
  for (const d of p.entries(e.value)) {
    const dname = d.name ?? goFormat(d.keyNode, { sharp: false, doc: p.y.doc })
    if (d.name === undefined || !DIRECTIVES.has(dname)) p.fail(`stackerfile: unknown directive ${dname}`, d.keyOffset)
    if (directives.has(dname)) {
      p.opts.logger.warn(`stackerfile: directive ${dname} appears twice in layer ${name}, the last one is used`, {
        file: p.opts.path,
        line: p.pos(d.keyOffset).line,
      })
    }
    directives.set(dname, d)
  }

  const ref = p.opts.referenceDir
  const typeError: (d: Entry, expected: string) => never = (d, expected) =>
    p.fail(
      `stackerfile: layer ${name}: '${d.name}' must be ${expected}, found ${yamlTag(d.value)}`,
      d.value === null ? d.keyOffset : d.valueOffset,
    )

  const str = (key: string): string | undefined => {
    const d = directives.get(key)
    if (!d || d.value === null) return undefined
    if (!isScalar(d.value)) return typeError(d, 'a string')
    return scalarString(d.value)
  }
  const bool = (key: string): boolean => {
    const d = directives.get(key)
    if (!d || d.value === null) return false
    if (!isScalar(d.value) || typeof d.value.value !== 'boolean') return typeError(d, 'a boolean (true or false)')
    return d.value.value
  }
  const strList = (key: string): string[] => {
    const d = directives.get(key)
    if (!d || d.value === null) return []
    if (!isSeq(d.value)) return typeError(d, 'a list of strings')
    return d.value.items.map((item) => {
      const v = p.deref(item as Node)
      if (v !== null && !isScalar(v)) {
        p.fail(
          `stackerfile: layer ${name}: '${key}' must be a list of strings, found ${yamlTag(v)} in it`,
          p.offsetOf(v, d.valueOffset),
        )
      }
      return scalarString(v)
    })
  }
  const strMap = (key: string): Array<[string, string]> => {
    const d = directives.get(key)
    if (!d || d.value === null) return []
    if (!isMap(d.value)) return typeError(d, 'a map of strings to strings')
    const out: Array<[string, string]> = []
    const index = new Map<string, number>()
    for (const kv of p.entries(d.value)) {
      if (kv.keyNode !== null && !isScalar(kv.keyNode)) {
        p.fail(`stackerfile: layer ${name}: '${key}' keys must be strings, found ${yamlTag(kv.keyNode)}`, kv.keyOffset)
      }
      if (kv.value !== null && !isScalar(kv.value)) {
        p.fail(
          `stackerfile: layer ${name}: '${key}' values must be strings, found ${yamlTag(kv.value)}`,
          kv.valueOffset,
        )
      }
      const k = scalarString(kv.keyNode)
      const v = scalarString(kv.value)
      const at = index.get(k)
      if (at === undefined) {
        index.set(k, out.length)
        out.push([k, v])
      } else out[at] = [k, v]
    }
    return out
  }
  // upstream's StringList / Command: a string, or a list whose items are all strings.
  const stringOrList = (key: string, split: boolean): string[] | undefined => {
    const d = directives.get(key)
    if (!d || d.value === null) return undefined
    if (isSeq(d.value)) {
      return d.value.items.map((item) => {
        const v = p.deref(item as Node)
        if (!isScalar(v) || typeof v.value !== 'string') {
          p.fail(`unknown run array type: ${goTypeName(v, p.y.doc)}`, p.offsetOf(v ?? (item as Node), d.valueOffset))
        }
        return v.value
      })
    }
    if (isScalar(d.value) && typeof d.value.value === 'string') {
      if (!split) return [d.value.value]
      try {
        return splitShellWords(d.value.value)
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err)
        return p.fail(`stackerfile: layer ${name}: can't split '${key}' into words: ${why}`, d.valueOffset)
      }
    }
    return p.fail(`unknown directive type: ${goTypeName(d.value, p.y.doc)}`, d.valueOffset)
  }

  // from
  let from: ImageSource | undefined
  const fromD = directives.get('from')
  if (fromD) {
    if (fromD.value === null || !isMap(fromD.value)) {
      typeError(fromD, 'a map with type, url, tag and insecure')
    }
    const src: { type: string; url?: string; tag?: string; insecure: boolean } = { type: '', insecure: false }
    let typeOffset = fromD.keyOffset
    for (const f of p.entries(fromD.value)) {
      const fname = f.name ?? goFormat(f.keyNode, { sharp: false, doc: p.y.doc })
      if (f.name === undefined || !IMAGE_SOURCE_FIELDS.has(fname)) {
        p.fail(`stackerfile: unknown image source directive ${fname}`, f.keyOffset)
      }
      if (fname === 'insecure') {
        if (f.value !== null && (!isScalar(f.value) || typeof f.value.value !== 'boolean')) {
          p.fail(
            `stackerfile: layer ${name}: 'from.insecure' must be a boolean (true or false), found ${yamlTag(f.value)}`,
            f.valueOffset,
          )
        }
        src.insecure = f.value !== null && (f.value as { value: unknown }).value === true
        continue
      }
      if (f.value !== null && !isScalar(f.value)) {
        p.fail(`stackerfile: layer ${name}: 'from.${fname}' must be a string, found ${yamlTag(f.value)}`, f.valueOffset)
      }
      const s = scalarString(f.value)
      if (fname === 'type') {
        src.type = s
        typeOffset = f.valueOffset
      } else if (fname === 'url') {
        if (s === '') delete src.url
        else src.url = s
      } else if (s === '') delete src.tag
      else src.tag = s
    }
    from = { ...src, ...(src.url !== undefined ? { source: parseSource(src.url) } : {}), pos: p.pos(typeOffset) }
    if (from.type === 'built' && !from.tag) {
      p.fail(`${name}: from tag cannot be empty for image type 'built'`, typeOffset)
    }
  }

  // os / arch: an explicit empty value is an error; absent means the defaults
  for (const key of ['os', 'arch'] as const) {
    const d = directives.get(key)
    if (d && d.value === null) p.fail(`stackerfile: ${goQuote(key)} value cannot be empty`, d.keyOffset)
  }

  // imports
  const importsD = directives.get('imports')
  const legacyD = directives.get('import')
  let imports = importsD ? parseImports(p, importsD) : []
  const legacy = legacyD ? parseImports(p, legacyD) : []
  if (p.opts.requireHash) {
    for (const imp of imports) {
      const scheme = urlScheme(imp.raw)
      if ((scheme === 'http' || scheme === 'https') && imp.spec.hash === undefined) {
        p.fail(`Remote import needs a hash in yaml for path: ${imp.raw}`, imp.offset)
      }
    }
  }
  let wasLegacyImport = bool('was_legacy_import')
  if (legacy.length > 0 && imports.length > 0) {
    p.fail(`layer '${name}' cannot have both 'import' and 'imports'`, legacyD!.keyOffset)
  }
  if (legacy.length > 0) {
    imports = legacy
    wasLegacyImport = true
    p.opts.logger.warn(
      `'import' directive used in layer '${name}' inside file '${p.opts.path}' is deprecated. ` +
        `Support for 'import' will be removed in releases after 2025-01-01. ` +
        `Migrate by changing 'import' to 'imports' and '/stacker' to '/stacker/imports'. ` +
        `See https://github.com/project-stacker/stacker/issues/571 for migration.`,
    )
  }

  // bom: dropped, remembered
  let wasBom = bool('was_bom')
  const bomD = directives.get('bom')
  if (bomD && bomD.value !== null) {
    if (!isMap(bomD.value)) typeError(bomD, 'a map')
    wasBom = true
    p.opts.logger.warn(
      `'bom' directive used in layer '${name}' inside file '${p.opts.path}' is deprecated. Support for 'bom' is removed in releases after 2026-03-10. `,
    )
  }

  // overlay_dirs
  const overlayDirs: OverlayDir[] = []
  const odD = directives.get('overlay_dirs')
  if (odD && odD.value !== null) {
    if (!isSeq(odD.value)) typeError(odD, 'a list of {source, dest} maps')
    for (const item of odD.value.items) {
      const v = p.deref(item as Node)
      const at = p.offsetOf(v ?? (item as Node), odD.valueOffset)
      if (!isMap(v)) {
        p.fail(`stackerfile: layer ${name}: 'overlay_dirs' entries must be maps, found ${yamlTag(v)}`, at)
      }
      let source = ''
      let dest = ''
      for (const f of p.entries(v)) {
        if (f.name !== 'source' && f.name !== 'dest') continue
        if (f.value !== null && !isScalar(f.value)) {
          p.fail(`stackerfile: layer ${name}: 'overlay_dirs' ${f.name} must be a string`, f.valueOffset)
        }
        if (f.name === 'source') source = scalarString(f.value)
        else dest = scalarString(f.value)
      }
      if (source === '') p.fail(`stackerfile: layer ${name}: overlay_dirs entry has no 'source'`, at)
      overlayDirs.push({ source: absolutify(ref, source), dest: dest === '' ? '/' : dest, pos: p.pos(at) })
    }
  }

  // binds
  const binds: Bind[] = []
  const bindsD = directives.get('binds')
  if (bindsD && bindsD.value !== null) {
    if (!isSeq(bindsD.value)) typeError(bindsD, 'a list')
    for (const item of bindsD.value.items) {
      const v = p.deref(item as Node)
      const at = p.offsetOf(v ?? (item as Node), bindsD.valueOffset)
      const b = parseBind(p, v, at)
      binds.push({ source: absolutify(ref, b.source), dest: absolutify(ref, b.dest), pos: p.pos(at) })
    }
  }

  const buildOnly = bool('build_only')
  checkLayerName(p, name, buildOnly, e.keyOffset)

  const layer: Layer = {
    name,
    file: p.opts.path,
    pos: layerPos,
    from,
    imports: imports.map((i) => i.spec),
    overlayDirs,
    run: stringOrList('run', false) ?? [],
    generateLabels: stringOrList('generate_labels', false) ?? [],
    buildEnv: strMap('build_env'),
    environment: strMap('environment'),
    labels: strMap('labels'),
    annotations: strMap('annotations'),
    volumes: strList('volumes'),
    buildOnly,
    binds,
    os: str('os') ?? p.opts.os,
    arch: str('arch') ?? p.opts.arch,
    wasLegacyImport,
    wasBom,
  }
  const cmd = stringOrList('cmd', true)
  if (cmd !== undefined) layer.cmd = cmd
  const entrypoint = stringOrList('entrypoint', true)
  if (entrypoint !== undefined) layer.entrypoint = entrypoint
  const fullCommand = stringOrList('full_command', true)
  if (fullCommand !== undefined) layer.fullCommand = fullCommand
  const passthrough = strList('build_env_passthrough')
  if (passthrough.length > 0) layer.buildEnvPassthrough = passthrough
  const workingDir = str('working_dir')
  if (workingDir !== undefined) layer.workingDir = workingDir
  const runtimeUser = str('runtime_user')
  if (runtimeUser !== undefined) layer.runtimeUser = runtimeUser
  return layer
}

function checkLayerName(p: FileParser, name: string, buildOnly: boolean, offset: number): void {
  if (name.includes(':'))
    p.fail(`using ':' in the layer name (${name}) is forbidden due to overlay constraints`, offset)
  // Layer names become directory names under roots/: nothing may climb out of it.
  if (name === '' || name.includes('\0') || name.split('/').some((s) => s === '.' || s === '..' || s === '')) {
    p.fail(`stackerfile: invalid layer name ${goQuote(name)}`, offset)
  }
  if (!buildOnly && !OCI_REF_RE.test(name)) {
    p.fail(
      `refusing to update invalid reference "${name}": a layer that is not build_only is tagged with its name, which must be a valid OCI reference`,
      offset,
    )
  }
}

function parseBind(p: FileParser, v: Node | null, at: number): { source: string; dest: string } {
  const bindType = (source: string, dest: string) => `&types.bindType{Source:${goQuote(source)}, Dest:${goQuote(dest)}}`
  if (v === null) p.fail(`unexpected 'bind': missing required field 'source': ${bindType('', '')}`, at)
  if (isMap(v)) {
    let source = ''
    let dest = ''
    for (const f of p.entries(v)) {
      if (f.name !== 'source' && f.name !== 'dest') continue
      if (f.value !== null && !isScalar(f.value)) {
        p.fail(
          `unexpected 'bind' data of type: map[interface {}]interface {}: ${goFormat(v, { sharp: true, doc: p.y.doc })}`,
          at,
        )
      }
      if (f.name === 'source') source = scalarString(f.value)
      else dest = scalarString(f.value)
    }
    if (source === '') p.fail(`unexpected 'bind': missing required field 'source': ${bindType(source, dest)}`, at)
    return { source, dest: dest === '' ? source : dest }
  }
  if (isScalar(v)) {
    const asStr = scalarString(v)
    const toks = asStr.split(/\s+/).filter((t) => t !== '')
    if (toks.length === 1) return { source: toks[0]!, dest: toks[0]! }
    if (toks.length === 3 && toks[1] === '->') return { source: toks[0]!, dest: toks[2]! }
    p.fail(`invalid Bind: ${asStr}`, at)
  }
  return p.fail(
    `unexpected 'bind' data of type: ${goTypeName(v, p.y.doc)}: ${goFormat(v, { sharp: true, doc: p.y.doc })}`,
    at,
  )
}

interface ParsedImport {
  spec: ImportSpec
  /** The path as written, before it was made absolute. */
  raw: string
  offset: number
}

function parseImports(p: FileParser, d: Entry): ParsedImport[] {
  const v = d.value
  if (v === null) return []
  const sharp = (n: Node | null) => goFormat(n, { sharp: true, doc: p.y.doc })
  let items: Array<Node | null>
  if (isSeq(v)) items = v.items.map((i) => p.deref(i as Node))
  else if (isScalar(v) && typeof v.value === 'string') items = [v]
  else {
    return p.fail(`'imports' expected an array, found ${goTypeName(v, p.y.doc)}: ${sharp(v)}`, d.valueOffset)
  }
  return items.map((item, idx) => {
    const offset = p.offsetOf(item ?? (isSeq(v) ? (v.items[idx] as Node) : null), d.valueOffset)
    const fail: (msg: string) => never = (msg) => p.fail(msg, offset)
    let path = ''
    let hash = ''
    let dest = ''
    let mode: number | undefined
    let uid = -1
    let gid = -1
    if (isScalar(item) && typeof item.value === 'string') {
      path = item.value
      if (path === '') fail(`No 'path' entry found in import: ${sharp(item)}`)
    } else if (isMap(item)) {
      const fields = p.entries(item)
      for (const f of fields) {
        if (f.name === undefined) {
          const k = goFormat(f.keyNode, { sharp: false, doc: p.y.doc })
          fail(`key '%!s(${goTypeName(f.keyNode, p.y.doc)}=${k})' in import is not a string: ${sharp(item)}`)
        }
      }
      const byName = new Map(fields.map((f) => [f.name!, f]))
      for (const key of ['path', 'hash', 'dest'] as const) {
        const f = byName.get(key)
        if (!f) continue
        if (!isScalar(f.value) || typeof f.value.value !== 'string') {
          fail(`value for '${key}' in import is not a string: ${sharp(item)}`)
        }
        const s = f.value.value
        if (key === 'path') path = s
        else if (key === 'hash') hash = s
        else dest = s
      }
      for (const key of ['mode', 'uid', 'gid'] as const) {
        const f = byName.get(key)
        if (!f) continue
        if (!isScalar(f.value) || !isGoInt(f.value))
          fail(`value for '${key}' in import is not an integer: ${sharp(item)}`)
        const n = Number(f.value.value)
        if (key === 'mode') mode = n
        else if (key === 'uid') uid = n
        else gid = n
      }
      if (path === '') fail(`No 'path' entry found in import: ${sharp(item)}`)
      if (dest !== '' && !dest.startsWith('/')) fail(`'dest' path cannot be relative for: ${sharp(item)}`)
      const plain = () => goFormat(item, { sharp: false, doc: p.y.doc })
      if (uid !== -1 && uid < 0) fail(`'uid' (${uid}) cannot be negative: ${plain()}`)
      if (gid !== -1 && gid < 0) fail(`'gid' (${gid}) cannot be negative: ${plain()}`)
    } else {
      fail(`could not read imports entry: ${sharp(item)}`)
    }
    let abs = absolutify(p.opts.referenceDir, path)
    if (path.endsWith('/') && !abs.endsWith('/')) abs += '/'
    const spec: ImportSpec = { path: abs, source: parseSource(abs), pos: p.pos(offset) }
    if (hash !== '') {
      const lower = hash.toLowerCase()
      if (lower.length !== 64) fail(`Given hash ${hash} is not valid: invalid checksum digest length`)
      if (!/^[a-f0-9]{64}$/.test(lower)) fail(`Given hash ${hash} is not valid: invalid checksum digest format`)
      spec.hash = lower
    }
    if (dest !== '') spec.dest = dest
    if (mode !== undefined) spec.mode = mode
    if (uid !== -1) spec.uid = uid
    if (gid !== -1) spec.gid = gid
    return { spec, raw: path, offset }
  })
}
