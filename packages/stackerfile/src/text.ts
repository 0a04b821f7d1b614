import { dirname, resolve } from 'node:path'
import { type Logger, memoryLogger, StackerError } from '@stacker/core'
import { hostGoArch, hostGoOs } from './layer.js'
import type { Layer, Stackerfile, StackerfileSet } from './model.js'
import { layerBuildOrder } from './order.js'
import { parseStackerfileText } from './parse.js'
import { substitute } from './substitute.js'

/** Options of parseStackerfile; every one has a default. */
export interface ParseStackerfileOptions {
  /** Where the text comes from: names it in messages and positions, and relative paths in it
   *  resolve against its directory. Default `stacker.yaml` in the current directory. */
  path?: string
  /** `KEY=VALUE` entries (applied in order) or a map; `${{KEY}}` placeholders are replaced first.
   *  Default none: placeholders with a default take it, others are an error. */
  substitutions?: readonly string[] | Readonly<Record<string, string>>
  /** Defaults for layers without `os`/`arch`: `linux` and the Go name of the host architecture. */
  os?: string
  /** See `os`. */
  arch?: string
  /** `--require-hash`: every http(s) import needs a `hash`. Default false. */
  requireHash?: boolean
}

/** A stackerfile parsed from text. */
export interface ParsedText {
  file: Stackerfile
  /** The layers in file order. */
  layers: Layer[]
  /** Warnings the file gives (deprecated directives, repeated keys, ...), one line each. */
  warnings: string[]
  /** The order to build the layers in (a layer after what it needs). Layers that need a layer of
   *  another file (its prerequisites, which text alone does not have) are a DEPENDENCY error. */
  buildOrder(): Layer[]
}

/**
 * Parses a stacker.yaml from text, with no files read: substitution, YAML with positions, every
 * directive checked with upstream's messages. Throws StackerError (STACKERFILE with `pos`,
 * SUBSTITUTION with `detail.variables`).
 *
 * ```ts
 * const { layers, warnings, buildOrder } = parseStackerfile(text, { substitutions: { VERSION: '1.2' } })
 * ```
 */
export function parseStackerfile(text: string, opts: ParseStackerfileOptions = {}): ParsedText {
  const path = resolve(opts.path ?? 'stacker.yaml')
  const subs = Array.isArray(opts.substitutions)
    ? [...(opts.substitutions as readonly string[])]
    : Object.entries(opts.substitutions ?? {}).map(([k, v]) => `${k}=${v}`)
  const log = memoryLogger()
  const substituted = substitute(text, subs, log, { file: path })
  const file = parseStackerfileText(substituted, {
    path,
    referenceDir: dirname(path),
    requireHash: opts.requireHash ?? false,
    logger: log,
    os: opts.os ?? hostGoOs(),
    arch: opts.arch ?? hostGoArch(),
  })
  const layers = file.fileOrder.map((n) => file.layers.get(n) as Layer)
  const warnings = log.records.filter((r) => r.level === 'warn').map((r) => r.msg)
  return { file, layers, warnings, buildOrder: () => layerBuildOrder(stackerfileSet([file]), file) }
}

/** A StackerfileSet of files already parsed (no I/O): the files must not define a layer twice;
 *  prerequisites not among them are left out of the order. */
export function stackerfileSet(files: readonly Stackerfile[]): StackerfileSet {
  const byPath = new Map(files.map((f) => [f.path, f]))
  const owner = new Map<string, Stackerfile>()
  for (const f of files)
    for (const name of f.fileOrder) {
      const other = owner.get(name)
      if (other)
        throw new StackerError('STACKERFILE', `duplicate layer name: both ${other.path} and ${f.path} have ${name}`, {
          pos: f.layers.get(name)?.pos,
        })
      owner.set(name, f)
    }
  const known = (f: Stackerfile): Stackerfile => ({ ...f, prerequisites: f.prerequisites.filter((p) => byPath.has(p)) })
  const order: Stackerfile[] = []
  const placed = new Set<string>()
  const place = (f: Stackerfile, depth: number): void => {
    if (placed.has(f.path) || depth > files.length) return
    for (const p of f.prerequisites) {
      const dep = byPath.get(p)
      if (dep) place(dep, depth + 1)
    }
    placed.add(f.path)
    order.push(f)
  }
  for (const f of [...files].sort((a, b) => (a.path < b.path ? -1 : 1))) place(f, 0)
  return {
    files: new Map([...byPath].map(([p, f]) => [p, known(f)])),
    order: order.map(known),
    findLayer: (name) => owner.get(name)?.layers.get(name),
  }
}

export type { Logger }
