import { isAbsolute, resolve } from 'node:path'
import { type SourcePos, StackerError } from '@stacker/core'
import { isMap, isScalar, isSeq, type Node } from 'yaml'
import { goFormat } from './go-format.js'
import { type Entry, FileParser, type ParseOptions, yamlTag } from './file-parser.js'
import { parseLayer } from './layer-directives.js'
import type { Layer, Stackerfile } from './model.js'
import { hasScheme, scalarString } from './util.js'

export type { ParseOptions } from './file-parser.js'
export { LAYER_DIRECTIVES, OCI_REF_RE } from './layer-directives.js'

/** A parsed file plus where each prerequisite is written, for errors found while loading them. */
export interface ParsedStackerfile extends Stackerfile {
  prerequisitePositions: SourcePos[]
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
