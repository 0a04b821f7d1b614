import { type Logger, silentLogger, StackerError } from '@stacker/core'
import type { Layer, Stackerfile, StackerfileSet } from './model.js'

/** The `--order-only` lines: `%d build %s: requires: [%s]`, 0-based like upstream (scripts match
 *  `0 build .../sub1/stacker.yaml`), prerequisites space-separated. */
export function orderLines(set: StackerfileSet): string[] {
  return set.order.map((sf, i) => `${i} build ${sf.path}: requires: [${sf.prerequisites.join(' ')}]`)
}

/** What keeps a layer from being built yet: unprocessed `stacker://` imports, a `stacker://` tar base,
 *  an unprocessed `built` base. */
function missingDeps(layer: Layer, processed: ReadonlySet<string>): string[] {
  const missing: string[] = []
  for (const imp of layer.imports)
    if (imp.source.kind === 'stacker' && !processed.has(imp.source.layer)) missing.push(imp.path)
  const from = layer.from
  if (from?.type === 'tar' && from.url !== undefined && from.source?.kind === 'stacker')
    if (!processed.has(from.source.layer)) missing.push(from.url)
  if (from?.type === 'built' && !processed.has(from.tag ?? '')) missing.push(`base layer ${from.tag ?? ''}`)
  return missing
}

/**
 * The order to build the layers of `file` in. Layers of its transitive prerequisites count as
 * already built; a layer is ready once what it needs (see missingDeps) is built. Passes over the file
 * order, so independent layers keep file order. Unresolvable layers are logged as
 * `couldn't find dependencies for <layer>: <items>` and then DEPENDENCY is thrown.
 */
export function layerBuildOrder(set: StackerfileSet, file: Stackerfile, logger: Logger = silentLogger): Layer[] {
  const processed = new Set<string>()
  const seen = new Set<string>([file.path])
  const addPrerequisites = (sf: Stackerfile): void => {
    for (const pre of sf.prerequisites) {
      if (seen.has(pre)) continue
      seen.add(pre)
      const dep = set.files.get(pre)
      if (!dep)
        throw new StackerError('DEPENDENCY', `couldn't find prerequisite ${pre}`, { detail: { missing: [pre] } })
      for (const name of dep.fileOrder) processed.add(name)
      addPrerequisites(dep)
    }
  }
  addPrerequisites(file)

  const layers = file.fileOrder.map((n) => file.layers.get(n)!)
  const order: Layer[] = []
  for (let pass = 0; pass < layers.length; pass++) {
    const before = order.length
    for (const layer of layers) {
      if (processed.has(layer.name)) continue
      if (!layer.from || layer.from.type === '') {
        throw new StackerError('STACKERFILE', 'invalid layer: no base (from directive)', { pos: layer.pos })
      }
      if (missingDeps(layer, processed).length === 0) {
        order.push(layer)
        processed.add(layer.name)
      }
    }
    if (order.length === before) break
  }
  if (order.length !== layers.length) {
    let first: Layer | undefined
    const missing: string[] = []
    for (const layer of layers) {
      if (processed.has(layer.name)) continue
      first ??= layer
      const deps = missingDeps(layer, processed)
      for (const d of deps) if (!missing.includes(d)) missing.push(d)
      logger.error(`couldn't find dependencies for ${layer.name}: ${deps.join(', ')}`)
    }
    throw new StackerError('DEPENDENCY', "couldn't resolve some dependencies", {
      ...(first ? { pos: first.pos } : {}),
      detail: { missing },
    })
  }
  return order
}
