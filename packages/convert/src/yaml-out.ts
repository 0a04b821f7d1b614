import { Document, Pair, Scalar, YAMLMap, YAMLSeq } from 'yaml'
import type { FromOut, ImportOut, LayerOut } from './model.js'
import type { ArgRef, Template } from './words.js'

/** Stands for a `$` that must be written `\x24` (see markDollars); never in a Dockerfile we accept. */
export const DOLLAR_SENTINEL = '\uE024'

export interface RenderInput {
  layers: readonly LayerOut[]
  imageKey: string
  imageDefault: string
  /** Every build argument in declaration order, with the defaults it was declared with. */
  args: ReadonlyArray<{ name: string; defaults: ReadonlyArray<string | undefined> }>
  /** Substitution names besides the build arguments (IMAGE, stacker's STACKER_* ones). */
  reserved: readonly string[]
  warn(message: string): void
}

/**
 * Writes the stackerfile and the substitutions file.
 *
 * stacker substitutes `${{NAME}}` in the raw text before parsing it, and refuses to build when the
 * text spells `$NAME`, `${NAME}` or `${NAME:...}` for a NAME it substitutes. So every string that
 * holds a placeholder is written double-quoted (a substituted value lands in one known quoting
 * context: the substitutions file holds values escaped for it), and every `$` that would read as one
 * of those spellings is written `\x24`, which YAML reads back as `$`.
 */
export function renderOutput(input: RenderInput): { stackerYaml: string; substitutions: string } {
  const keys = [...input.reserved, ...input.args.map((a) => a.name)]
  const inFile = new Map<string, string>()
  for (const a of input.args) {
    const defs = new Set(a.defaults)
    const [only] = defs
    if (defs.size === 1 && only !== undefined) inFile.set(a.name, only)
  }
  const placeholder = (ref: ArgRef): string => {
    if (ref.def === undefined) return `\${{${ref.arg}:}}`
    // A `$` in the default would read as a placeholder spelling before the default is put in.
    if (!ref.def.includes('}')) return `\${{${ref.arg}:${ref.def.replaceAll('$', DOLLAR_SENTINEL)}}}`
    if (inFile.get(ref.arg) !== ref.def)
      input.warn(
        `ARG ${ref.arg}: its default ${JSON.stringify(ref.def)} has a '}', which a stacker substitution default cannot hold; build with --substitute ${ref.arg}=...`,
      )
    return `\${{${ref.arg}}}`
  }

  const doc = new Document(null, { version: '1.1' })
  const str = (s: string): Scalar => {
    const marked = markDollars(s, keys)
    const n = new Scalar(marked)
    if (marked !== s) n.type = 'QUOTE_DOUBLE'
    else if (s.includes('\n')) n.type = 'BLOCK_LITERAL'
    return n
  }
  const tpl = (t: Template): Scalar => {
    if (t.every((p) => typeof p === 'string')) return str(t.join(''))
    const n = new Scalar(t.map((p) => (typeof p === 'string' ? markDollars(p, keys) : placeholder(p))).join(''))
    n.type = 'QUOTE_DOUBLE'
    return n
  }
  const map = (pairs: Array<[string | Scalar, unknown]>): YAMLMap => {
    const m = new YAMLMap()
    for (const [k, v] of pairs) m.items.push(new Pair(typeof k === 'string' ? str(k) : k, v))
    return m
  }
  const seq = (items: unknown[]): YAMLSeq => {
    const s = new YAMLSeq()
    s.items.push(...items)
    return s
  }
  const int = (n: number, octal = false): Scalar => {
    const s = new Scalar(n)
    if (octal) s.format = 'OCT'
    return s
  }

  const fromNode = (f: FromOut): YAMLMap => {
    switch (f.type) {
      case 'docker':
        return map([
          ['type', str('docker')],
          ['url', tpl(f.url)],
          ...(f.insecure ? [['insecure', true] as [string, unknown]] : []),
        ])
      case 'built':
        return map([
          ['type', str('built')],
          ['tag', layerKey(f.tag)],
        ])
      case 'tar':
        return map([
          ['type', str('tar')],
          ['url', str(f.url)],
        ])
      case 'scratch':
        return map([['type', str('scratch')]])
    }
  }
  const importNode = (i: ImportOut): YAMLMap => {
    const pairs: Array<[string, unknown]> = [['path', str(i.path)]]
    if (i.dest !== undefined) pairs.push(['dest', tpl(i.dest)])
    if (i.hash !== undefined) pairs.push(['hash', str(i.hash)])
    if (i.mode !== undefined) pairs.push(['mode', int(i.mode, true)])
    if (i.uid !== undefined) pairs.push(['uid', int(i.uid)])
    if (i.gid !== undefined) pairs.push(['gid', int(i.gid)])
    return map(pairs)
  }
  const imageName = `\${{${input.imageKey}:${input.imageDefault}}}`
  // The last stage's layer is named by the IMAGE substitution; its name shows up in other layers'
  // names and tags too.
  const layerKey = (name: string): Scalar => {
    const s = new Scalar(name.replace('\0IMAGE', imageName))
    if (name.includes('\0IMAGE')) s.type = 'QUOTE_DOUBLE'
    return s
  }

  const root = new YAMLMap()
  for (const l of input.layers) {
    const pairs: Array<[string, unknown]> = [['from', fromNode(l.from)]]
    if (l.os !== undefined) pairs.push(['os', str(l.os)])
    if (l.arch !== undefined) pairs.push(['arch', str(l.arch)])
    if (l.buildOnly) pairs.push(['build_only', true])
    if (l.imports.length) pairs.push(['imports', seq(l.imports.map(importNode))])
    if (l.run.length) {
      if (l.buildEnv.length) pairs.push(['build_env', map(l.buildEnv.map(([k, v]) => [str(k), tpl(v)]))])
      pairs.push(['run', seq(l.run.map(str))])
    }
    const c = l.config
    if (c) {
      if (c.environment.length) pairs.push(['environment', map(c.environment.map(([k, v]) => [str(k), tpl(v)]))])
      if (c.labels.length) pairs.push(['labels', map(c.labels.map(([k, v]) => [str(k), tpl(v)]))])
      if (c.annotations.length) pairs.push(['annotations', map(c.annotations.map(([k, v]) => [str(k), str(v)]))])
      if (c.volumes.length) pairs.push(['volumes', seq(c.volumes.map(tpl))])
      if (c.exposedPorts.length) pairs.push(['exposed_ports', seq(c.exposedPorts.map(tpl))])
      if (c.workingDir !== undefined) pairs.push(['working_dir', tpl(c.workingDir)])
      if (c.runtimeUser !== undefined) pairs.push(['runtime_user', tpl(c.runtimeUser)])
      if (c.entrypoint !== undefined) pairs.push(['entrypoint', seq(c.entrypoint.map(str))])
      if (c.cmd !== undefined) pairs.push(['cmd', seq(c.cmd.map(str))])
    }
    root.items.push(new Pair(layerKey(l.name), map(pairs)))
  }
  doc.contents = root
  doc.commentBefore = ' Converted from a Dockerfile by `stacker convert`; build it with its substitutions file.'
  const stackerYaml = finish(doc)

  const subs = new Document(null, { version: '1.1' })
  const subsMap = new YAMLMap()
  subsMap.items.push(new Pair(str(input.imageKey), str(input.imageDefault)))
  for (const [k, v] of inFile) subsMap.items.push(new Pair(str(k), str(escapeForDoubleQuotes(v))))
  subs.contents = subsMap
  subs.commentBefore =
    ' Substitutions for the stackerfile `stacker convert` wrote: the name of the image and the build\n' +
    ' arguments\' defaults. A value lands inside a double-quoted YAML string: write \\" and \\\\ for " and \\.'
  return { stackerYaml, substitutions: finish(subs) }
}

/** The name of the layer of the last stage, replaced by the IMAGE placeholder on output. */
export const IMAGE_LAYER = '\0IMAGE'

function finish(doc: Document): string {
  return doc.toString({ lineWidth: 0, doubleQuotedAsJSON: true }).replaceAll(DOLLAR_SENTINEL, '\\x24')
}

/** The text of `value` inside a YAML double-quoted string. Every `$` is written `\x24`: stacker looks
 *  for `$NAME` in the text as it stands after each substitution, values already put in included. */
export function escapeForDoubleQuotes(value: string): string {
  return JSON.stringify(value).slice(1, -1).replaceAll('$', '\\x24')
}

/** Replaces each `$` that stacker's substitution would take for `$KEY`, `${KEY}` or `${KEY:...}` (for
 *  any of `keys`), or for the start of a `${{...}}` placeholder, by DOLLAR_SENTINEL. */
export function markDollars(s: string, keys: readonly string[]): string {
  if (!s.includes('$')) return s
  let out = ''
  for (let i = 0; i < s.length; i++) {
    const c = s[i] as string
    if (c === '$' && (s.startsWith('{{', i + 1) || keys.some((k) => dangerousAt(s, i, k)))) out += DOLLAR_SENTINEL
    else out += c
  }
  return out
}

function dangerousAt(s: string, i: number, key: string): boolean {
  if (s.startsWith(key, i + 1)) return true
  if (!s.startsWith(`{${key}`, i + 1)) return false
  const after = s[i + 2 + key.length]
  return after === '}' || after === ':'
}
