import { isAlias, isMap, isScalar, isSeq, type Document, type Node } from 'yaml'

/** Go's strconv.Quote (what `%q` prints), close enough for messages users grep. */
export function goQuote(s: string): string {
  let out = '"'
  for (const ch of s) {
    const c = ch.codePointAt(0)!
    switch (ch) {
      case '"':
        out += '\\"'
        continue
      case '\\':
        out += '\\\\'
        continue
      case '\n':
        out += '\\n'
        continue
      case '\t':
        out += '\\t'
        continue
      case '\r':
        out += '\\r'
        continue
      case '\x07':
        out += '\\a'
        continue
      case '\b':
        out += '\\b'
        continue
      case '\f':
        out += '\\f'
        continue
      case '\v':
        out += '\\v'
        continue
    }
    if (c < 0x20 || c === 0x7f) out += `\\x${c.toString(16).padStart(2, '0')}`
    else if (c >= 0x80 && c < 0xa0) out += `\\u${c.toString(16).padStart(4, '0')}`
    else out += ch
  }
  return `${out}"`
}

/** How a yaml.v2 decode into interface{} would type a node, as `%T` prints it. */
export function goTypeName(node: Node | null | undefined, doc?: Document): string {
  const n = derefLoose(node, doc)
  if (n === undefined) return '<nil>'
  if (isMap(n)) return 'map[interface {}]interface {}'
  if (isSeq(n)) return '[]interface {}'
  if (isScalar(n)) {
    const v = n.value
    if (v === null || v === undefined) return '<nil>'
    if (typeof v === 'string') return 'string'
    if (typeof v === 'boolean') return 'bool'
    if (typeof v === 'number' || typeof v === 'bigint') return isGoInt(n) ? 'int' : 'float64'
    if (v instanceof Uint8Array) return 'string'
    return 'string'
  }
  return '<nil>'
}

/** True when a numeric scalar would decode to a Go int rather than a float64. */
export function isGoInt(n: Node): boolean {
  if (!isScalar(n)) return false
  const v = n.value
  if (typeof v === 'bigint') return true
  if (typeof v !== 'number' || !Number.isInteger(v)) return false
  const src = typeof n.source === 'string' ? n.source : String(v)
  return !/[.eE]|inf|nan/i.test(src) || /^[-+]?0x/i.test(src)
}

const MAX_FORMAT = 400

/** `%v` (sharp=false) or `%#v` (sharp=true) of a value decoded by yaml.v2 into interface{}.
 *  `style` picks how maps print: Go maps (keys sorted) or yaml.MapSlice (file order).
 *  Output is truncated so a hostile document (alias bombs) cannot blow up a message. */
export function goFormat(
  node: Node | null | undefined,
  opts: { sharp: boolean; style?: 'map' | 'mapslice'; doc?: Document },
): string {
  const budget = { left: MAX_FORMAT }
  const s = fmt(node, opts.sharp, opts.style ?? 'map', opts.doc, budget, 0)
  return budget.left <= 0 ? `${s.slice(0, MAX_FORMAT)}...` : s
}

function derefLoose(node: Node | null | undefined, doc: Document | undefined): Node | undefined {
  let n: Node | null | undefined = node
  for (let i = 0; i < 16 && n && isAlias(n); i++) n = doc ? (n.resolve(doc) as Node | undefined) : undefined
  return n && !isAlias(n) ? n : undefined
}

function scalarText(n: Node): { go: unknown; text: string } {
  if (!isScalar(n)) return { go: null, text: '' }
  const v = n.value
  if (typeof v === 'string') return { go: v, text: v }
  if (v instanceof Uint8Array) return { go: '', text: Buffer.from(v).toString('latin1') }
  if (v === null || v === undefined) return { go: null, text: '' }
  if (typeof v === 'number') {
    if (Number.isNaN(v)) return { go: v, text: 'NaN' }
    if (!Number.isFinite(v)) return { go: v, text: v > 0 ? '+Inf' : '-Inf' }
  }
  return { go: v, text: String(v) }
}

function fmt(
  node: Node | null | undefined,
  sharp: boolean,
  style: 'map' | 'mapslice',
  doc: Document | undefined,
  budget: { left: number },
  depth: number,
): string {
  if (budget.left <= 0 || depth > 8) {
    budget.left = 0
    return '...'
  }
  const n = derefLoose(node, doc)
  let out: string
  const nilText = sharp && depth > 0 ? 'interface {}(nil)' : '<nil>'
  if (n === undefined) out = nilText
  else if (isMap(n)) {
    const entries = n.items.map((p) => ({
      k: fmt(p.key as Node, sharp, style, doc, budget, depth + 1),
      v: fmt(p.value as Node, sharp, style, doc, budget, depth + 1),
    }))
    if (style === 'mapslice') {
      out = sharp
        ? `yaml.MapSlice{${entries.map((e) => `yaml.MapItem{Key:${e.k}, Value:${e.v}}`).join(', ')}}`
        : `[${entries.map((e) => `{${e.k} ${e.v}}`).join(' ')}]`
    } else {
      entries.sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0))
      out = sharp
        ? `map[interface {}]interface {}{${entries.map((e) => `${e.k}:${e.v}`).join(', ')}}`
        : `map[${entries.map((e) => `${e.k}:${e.v}`).join(' ')}]`
    }
  } else if (isSeq(n)) {
    const items = n.items.map((i) => fmt(i as Node, sharp, style, doc, budget, depth + 1))
    out = sharp ? `[]interface {}{${items.join(', ')}}` : `[${items.join(' ')}]`
  } else {
    const { go, text } = scalarText(n)
    if (go === null) out = nilText
    else if (typeof go === 'string') out = sharp ? goQuote(text) : text
    else out = text
  }
  budget.left -= out.length
  return out
}
