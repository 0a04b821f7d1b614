import { realpathSync } from 'node:fs'
import { dirname, basename, join, resolve } from 'node:path'
import type { Layer } from '@stacker/stackerfile'

/** The host paths a layer's build touches: `writes` may change (bind sources are mounted
 *  read-write), `reads` are read (local imports, overlay_dir sources, tar and OCI layout bases). */
export interface HostPaths {
  writes: string[]
  reads: string[]
}

export function hostPaths(layer: Layer): HostPaths {
  const reads: string[] = []
  for (const i of layer.imports) if (i.source.kind === 'local') reads.push(i.path)
  for (const od of layer.overlayDirs) reads.push(od.source)
  const url = layer.from?.url
  if (url !== undefined) {
    if (layer.from?.type === 'tar' && layer.from.source?.kind === 'local') reads.push(url)
    const oci = layer.from?.type === 'oci' ? url : url.startsWith('oci:') ? url.slice('oci:'.length) : undefined
    if (oci !== undefined && !oci.startsWith('docker://')) {
      const i = oci.indexOf(':')
      reads.push(i < 0 ? oci : oci.slice(0, i))
    }
  }
  return {
    writes: layer.binds.map((b) => canonical(b.source)),
    reads: reads.map(canonical),
  }
}

/** Resolves symlinks in the existing part of `p`, so two spellings of one dir are seen as one. */
function canonical(p: string): string {
  const abs = resolve(p)
  try {
    return realpathSync(abs)
  } catch {
    const parent = dirname(abs)
    return parent === abs ? abs : join(canonical(parent), basename(abs))
  }
}

function overlaps(a: string, b: string): boolean {
  if (a === b) return true
  const under = (x: string, y: string) => x.startsWith(y === '/' ? '/' : `${y}/`)
  return under(a, b) || under(b, a)
}

function anyOverlap(xs: readonly string[], ys: readonly string[]): boolean {
  return xs.some((x) => ys.some((y) => overlaps(x, y)))
}

/**
 * For each layer (by name), the earlier layers in `order` it must wait for because the two meet on
 * the host: one writes (binds) a path the other reads or writes, in either direction. Such layers
 * are not independent; they keep file order, as a serial build gives them, so parallelism never
 * changes what a layer sees.
 */
export function hostCouplings(order: readonly Layer[]): Map<string, string[]> {
  const paths = order.map(hostPaths)
  const out = new Map<string, string[]>()
  for (let j = 0; j < order.length; j++) {
    const pj = paths[j] as HostPaths
    const deps: string[] = []
    for (let i = 0; i < j; i++) {
      const pi = paths[i] as HostPaths
      if (anyOverlap(pi.writes, [...pj.reads, ...pj.writes]) || anyOverlap(pj.writes, pi.reads))
        deps.push((order[i] as Layer).name)
    }
    out.set((order[j] as Layer).name, deps)
  }
  return out
}
