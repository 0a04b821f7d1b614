import {
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  visit,
  type Alias,
  type Document,
  type Node,
} from 'yaml'

/** yaml.v2 (what upstream parses with) resolves YAML 1.1 scalars: `0777` is octal, `yes` is a bool.
 *  It does not turn `1:20` into a sexagesimal number or dates into timestamps, so those tags go. */
export const YAML_OPTIONS = {
  version: '1.1',
  uniqueKeys: false,
  prettyErrors: false,
  keepSourceTokens: false,
  customTags: (tags: unknown[]) =>
    tags.filter((t) => {
      const tag = t as { tag?: string; format?: string }
      return tag.format !== 'TIME' && !String(tag.tag).endsWith(':timestamp')
    }),
} as const

export interface ParsedYaml {
  doc: Document
  lc: LineCounter
  /** Every alias resolved once, in document order: the last anchor of that name before it. */
  aliases: Map<Alias, Node | undefined>
  /** First error, if any: message and offset. */
  error: { message: string; offset: number } | undefined
}

export function parseYaml(text: string): ParsedYaml {
  const lc = new LineCounter()
  const doc = parseDocument(text, { ...YAML_OPTIONS, lineCounter: lc } as Parameters<typeof parseDocument>[1])
  const aliases = new Map<Alias, Node | undefined>()
  const anchors = new Map<string, Node>()
  visit(doc, {
    Node: (_key, node) => {
      if (isAlias(node)) aliases.set(node, anchors.get(node.source))
      else if (node.anchor) anchors.set(node.anchor, node)
    },
  })
  const e = doc.errors[0]
  return { doc, lc, aliases, error: e ? { message: e.message, offset: e.pos[0] } : undefined }
}

/** Line and column (1-based) of `offset` in `text`. */
export function lineCol(text: string, offset: number): { line: number; col: number } {
  let line = 1
  let start = 0
  for (let i = text.indexOf('\n'); i >= 0 && i < offset; i = text.indexOf('\n', i + 1)) {
    line++
    start = i + 1
  }
  return { line, col: offset - start + 1 }
}

export { isAlias, isMap, isScalar, isSeq }
