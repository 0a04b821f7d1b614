import { isAbsolute, resolve } from 'node:path'
import { isMap, isScalar, isSeq, type Node } from 'yaml'
import { type Entry, type FileParser, yamlTag } from './file-parser.js'
import { goFormat, goQuote, goTypeName, isGoInt } from './go-format.js'
import type { Bind, ImageSource, ImportSpec, Layer, OverlayDir } from './model.js'
import { splitShellWords } from './shlex.js'
import { parseSource } from './source.js'
import { hasScheme, scalarString, urlScheme } from './util.js'

/** Non-build-only layers become OCI refs, so their names must be valid ref names, as upstream requires. */
export const OCI_REF_RE = /^([A-Za-z0-9]+(([-._:@+]|--)[A-Za-z0-9]+)*)(\/([A-Za-z0-9]+(([-._:@+]|--)[A-Za-z0-9]+)*))*$/

/** Makes a stackerfile path absolute against the reference dir; `scheme://` strings are left alone. */
export function absolutify(ref: string, path: string): string {
  return hasScheme(path) || isAbsolute(path) ? path : resolve(ref, path)
}

/** Reads a layer's directives: the typed values and upstream's messages for wrong ones. */
class LayerReader {
  constructor(
    readonly p: FileParser,
    readonly name: string,
  ) {}

  typeError(d: Entry, expected: string): never {
    return this.p.fail(
      `stackerfile: layer ${this.name}: '${d.name}' must be ${expected}, found ${yamlTag(d.value)}`,
      d.value === null ? d.keyOffset : d.valueOffset,
    )
  }

  str(d: Entry): string | undefined {
    if (d.value === null) return undefined
    if (!isScalar(d.value)) return this.typeError(d, 'a string')
    return scalarString(d.value)
  }

  bool(d: Entry): boolean {
    if (d.value === null) return false
    if (!isScalar(d.value) || typeof d.value.value !== 'boolean') return this.typeError(d, 'a boolean (true or false)')
    return d.value.value
  }

  strList(d: Entry): string[] {
    if (d.value === null) return []
    if (!isSeq(d.value)) return this.typeError(d, 'a list of strings')
    return d.value.items.map((item) => {
      const v = this.p.deref(item as Node)
      if (v !== null && !isScalar(v)) {
        this.p.fail(
          `stackerfile: layer ${this.name}: '${d.name}' must be a list of strings, found ${yamlTag(v)} in it`,
          this.p.offsetOf(v, d.valueOffset),
        )
      }
      return scalarString(v)
    })
  }

  /** A map of strings in file order; a repeated key keeps its first place and its last value. */
  strMap(d: Entry): Array<[string, string]> {
    if (d.value === null) return []
    if (!isMap(d.value)) return this.typeError(d, 'a map of strings to strings')
    const out: Array<[string, string]> = []
    const index = new Map<string, number>()
    for (const kv of this.p.entries(d.value)) {
      if (kv.keyNode !== null && !isScalar(kv.keyNode)) {
        this.p.fail(
          `stackerfile: layer ${this.name}: '${d.name}' keys must be strings, found ${yamlTag(kv.keyNode)}`,
          kv.keyOffset,
        )
      }
      if (kv.value !== null && !isScalar(kv.value)) {
        this.p.fail(
          `stackerfile: layer ${this.name}: '${d.name}' values must be strings, found ${yamlTag(kv.value)}`,
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

  /** upstream's StringList / Command: a string (split into words with `split`), or a list whose items
   *  are all strings. */
  stringOrList(d: Entry, split: boolean): string[] | undefined {
    const p: FileParser = this.p
    if (d.value === null) return undefined
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
        return p.fail(`stackerfile: layer ${this.name}: can't split '${d.name}' into words: ${why}`, d.valueOffset)
      }
    }
    return p.fail(`unknown directive type: ${goTypeName(d.value, p.y.doc)}`, d.valueOffset)
  }
}

/** A layer while its directives are read: the Layer's fields plus what several directives decide
 *  together (imports against the legacy `import`). */
type LayerDraft = Omit<Layer, 'name' | 'file' | 'pos'> & {
  legacyImports?: { entries: ParsedImport[]; at: Entry }
  parsedImports: ParsedImport[]
}

type DirectiveParser = (r: LayerReader, d: Entry, l: LayerDraft) => void

const IMAGE_SOURCE_FIELDS = new Set(['type', 'url', 'tag', 'insecure'])

/**
 * Every directive of a layer, in the order of upstream's Layer struct, and how each is read. The
 * list of directives a stacker.yaml may use is this table's keys.
 */
const DIRECTIVE_PARSERS = {
  from: (r, d, l) => {
    l.from = parseFrom(r, d)
  },
  imports: (r, d, l) => {
    l.parsedImports = parseImports(r.p, d)
  },
  import: (r, d, l) => {
    l.legacyImports = { entries: parseImports(r.p, d), at: d }
  },
  overlay_dirs: (r, d, l) => {
    l.overlayDirs = parseOverlayDirs(r, d)
  },
  run: (r, d, l) => {
    l.run = r.stringOrList(d, false) ?? []
  },
  cmd: (r, d, l) => {
    const v = r.stringOrList(d, true)
    if (v !== undefined) l.cmd = v
  },
  entrypoint: (r, d, l) => {
    const v = r.stringOrList(d, true)
    if (v !== undefined) l.entrypoint = v
  },
  full_command: (r, d, l) => {
    const v = r.stringOrList(d, true)
    if (v !== undefined) l.fullCommand = v
  },
  build_env_passthrough: (r, d, l) => {
    const v = r.strList(d)
    if (v.length > 0) l.buildEnvPassthrough = v
  },
  build_env: (r, d, l) => {
    l.buildEnv = r.strMap(d)
  },
  environment: (r, d, l) => {
    l.environment = r.strMap(d)
  },
  volumes: (r, d, l) => {
    l.volumes = r.strList(d)
  },
  exposed_ports: (r, d, l) => {
    l.exposedPorts = r.strList(d).map((port, i) => {
      const m = /^([0-9]{1,5})(?:\/(tcp|udp|sctp))?$/.exec(port)
      if (!m || Number(m[1]) < 1 || Number(m[1]) > 65535) {
        const item = isSeq(d.value) ? (r.p.deref(d.value.items[i] as Node) ?? d.value) : d.value
        return r.p.fail(
          `stackerfile: layer ${r.name}: exposed port ${JSON.stringify(port)} is not PORT or PORT/PROTO (PORT 1 to 65535, PROTO tcp, udp or sctp)`,
          r.p.offsetOf(item as Node, d.valueOffset),
        )
      }
      return `${Number(m[1])}/${m[2] ?? 'tcp'}`
    })
  },
  labels: (r, d, l) => {
    l.labels = r.strMap(d)
  },
  generate_labels: (r, d, l) => {
    l.generateLabels = r.stringOrList(d, false) ?? []
  },
  working_dir: (r, d, l) => {
    const v = r.str(d)
    if (v !== undefined) l.workingDir = v
  },
  build_only: (r, d, l) => {
    l.buildOnly = r.bool(d)
  },
  binds: (r, d, l) => {
    l.binds = parseBinds(r, d)
  },
  runtime_user: (r, d, l) => {
    const v = r.str(d)
    if (v !== undefined) l.runtimeUser = v
  },
  annotations: (r, d, l) => {
    l.annotations = r.strMap(d)
  },
  os: (r, d, l) => {
    // An explicit empty value is an error; absent means the default.
    if (d.value === null) r.p.fail(`stackerfile: ${goQuote('os')} value cannot be empty`, d.keyOffset)
    l.os = r.str(d) ?? l.os
  },
  arch: (r, d, l) => {
    if (d.value === null) r.p.fail(`stackerfile: ${goQuote('arch')} value cannot be empty`, d.keyOffset)
    l.arch = r.str(d) ?? l.arch
  },
  bom: (r, d, l) => {
    // Dropped, remembered: it still counts in the cache key, as upstream's `was_bom` does.
    if (d.value === null) return
    if (!isMap(d.value)) r.typeError(d, 'a map')
    l.wasBom = true
    r.p.opts.logger.warn(
      `'bom' directive used in layer '${r.name}' inside file '${r.p.opts.path}' is deprecated. Support for 'bom' is removed in releases after 2026-03-10. `,
    )
  },
  was_legacy_import: (r, d, l) => {
    l.wasLegacyImport = l.wasLegacyImport || r.bool(d)
  },
  was_bom: (r, d, l) => {
    l.wasBom = l.wasBom || r.bool(d)
  },
} satisfies Record<string, DirectiveParser>

/** The directives a layer accepts: those of upstream's Layer struct (its yaml tags), and
 *  `exposed_ports`. */
export const LAYER_DIRECTIVES: readonly string[] = Object.keys(DIRECTIVE_PARSERS)

function isDirective(name: string): name is keyof typeof DIRECTIVE_PARSERS {
  return Object.hasOwn(DIRECTIVE_PARSERS, name)
}

/** Reads one layer: each directive through DIRECTIVE_PARSERS, then what they decide together. */
export function parseLayer(p: FileParser, name: string, e: Entry): Layer {
  const layerPos = p.pos(e.keyOffset)
  if (e.value === null || !isMap(e.value)) {
    p.fail(
      `stackerfile: layer ${name} must be a map of directives, found ${yamlTag(e.value)}`,
      e.value === null ? e.keyOffset : e.valueOffset,
    )
  }
  const directives = new Map<keyof typeof DIRECTIVE_PARSERS, Entry>()
  for (const d of p.entries(e.value)) {
    const dname = d.name ?? goFormat(d.keyNode, { sharp: false, doc: p.y.doc })
    if (d.name === undefined || !isDirective(dname)) p.fail(`stackerfile: unknown directive ${dname}`, d.keyOffset)
    if (directives.has(dname)) {
      p.opts.logger.warn(`stackerfile: directive ${dname} appears twice in layer ${name}, the last one is used`, {
        file: p.opts.path,
        line: p.pos(d.keyOffset).line,
      })
    }
    directives.set(dname, d)
  }

  const draft: LayerDraft = {
    from: undefined,
    imports: [],
    parsedImports: [],
    overlayDirs: [],
    run: [],
    generateLabels: [],
    buildEnv: [],
    environment: [],
    labels: [],
    annotations: [],
    volumes: [],
    exposedPorts: [],
    buildOnly: false,
    binds: [],
    os: p.opts.os,
    arch: p.opts.arch,
    wasLegacyImport: false,
    wasBom: false,
  }
  const reader = new LayerReader(p, name)
  for (const [key, parse] of Object.entries(DIRECTIVE_PARSERS) as Array<
    [keyof typeof DIRECTIVE_PARSERS, DirectiveParser]
  >) {
    const d = directives.get(key)
    if (d) parse(reader, d, draft)
  }

  if (p.opts.requireHash) {
    for (const imp of draft.parsedImports) {
      const scheme = urlScheme(imp.raw)
      if ((scheme === 'http' || scheme === 'https') && imp.spec.hash === undefined) {
        p.fail(`Remote import needs a hash in yaml for path: ${imp.raw}`, imp.offset)
      }
    }
  }
  let imports = draft.parsedImports
  const legacy = draft.legacyImports
  if (legacy && legacy.entries.length > 0) {
    if (imports.length > 0) p.fail(`layer '${name}' cannot have both 'import' and 'imports'`, legacy.at.keyOffset)
    imports = legacy.entries
    draft.wasLegacyImport = true
    p.opts.logger.warn(
      `'import' directive used in layer '${name}' inside file '${p.opts.path}' is deprecated. ` +
        `Support for 'import' will be removed in releases after 2025-01-01. ` +
        `Migrate by changing 'import' to 'imports' and '/stacker' to '/stacker/imports'. ` +
        `See https://github.com/project-stacker/stacker/issues/571 for migration.`,
    )
  }
  checkLayerName(p, name, draft.buildOnly, e.keyOffset)

  const { parsedImports: _parsed, legacyImports: _legacy, ...fields } = draft
  return { name, file: p.opts.path, pos: layerPos, ...fields, imports: imports.map((i) => i.spec) }
}

function parseFrom(r: LayerReader, fromD: Entry): ImageSource {
  const p: FileParser = r.p
  const { name } = r
  const value = fromD.value
  if (value === null || !isMap(value)) return r.typeError(fromD, 'a map with type, url, tag and insecure')
  const src: { type: string; url?: string; tag?: string; insecure: boolean } = { type: '', insecure: false }
  let typeOffset = fromD.keyOffset
  for (const f of p.entries(value)) {
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
  const from: ImageSource = {
    ...src,
    ...(src.url !== undefined ? { source: parseSource(src.url) } : {}),
    pos: p.pos(typeOffset),
  }
  if (from.type === 'built' && !from.tag) {
    p.fail(`${name}: from tag cannot be empty for image type 'built'`, typeOffset)
  }
  return from
}

function parseOverlayDirs(r: LayerReader, odD: Entry): OverlayDir[] {
  const p: FileParser = r.p
  const { name } = r
  const overlayDirs: OverlayDir[] = []
  if (odD.value === null) return overlayDirs
  if (!isSeq(odD.value)) r.typeError(odD, 'a list of {source, dest} maps')
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
    overlayDirs.push({
      source: absolutify(p.opts.referenceDir, source),
      dest: dest === '' ? '/' : dest,
      pos: p.pos(at),
    })
  }
  return overlayDirs
}

function parseBinds(r: LayerReader, bindsD: Entry): Bind[] {
  const p: FileParser = r.p
  const binds: Bind[] = []
  if (bindsD.value === null) return binds
  if (!isSeq(bindsD.value)) r.typeError(bindsD, 'a list')
  const ref = p.opts.referenceDir
  for (const item of bindsD.value.items) {
    const v = p.deref(item as Node)
    const at = p.offsetOf(v ?? (item as Node), bindsD.valueOffset)
    const b = parseBind(p, v, at)
    binds.push({ source: absolutify(ref, b.source), dest: absolutify(ref, b.dest), pos: p.pos(at) })
  }
  return binds
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
