import type { Layer } from './model.js'

/** What an import path or a `tar` base url names, parsed once for every user (order, build, imports,
 *  bases). A string is a URL when it contains `://`, as upstream decides; its scheme is what comes
 *  before. */
export type SourceRef =
  /** A path on the host (absolute once the stackerfile is loaded, for imports). */
  | { kind: 'local'; path: string }
  /** `http://` or `https://`. */
  | { kind: 'http'; url: string }
  /** `stacker://<layer>/<path>`: `path` is absolute in the layer's filesystem, `/` when none is given. */
  | { kind: 'stacker'; layer: string; path: string }
  /** Any other scheme: refused where it is used (`unsupported url scheme <scheme>`). */
  | { kind: 'unsupported'; scheme: string; url: string }

/** Parses an `imports` path or a `from.url` into a SourceRef (see there). Never throws. */
export function parseSource(s: string): SourceRef {
  const i = s.indexOf('://')
  if (i < 0) return { kind: 'local', path: s }
  const scheme = s.slice(0, i)
  if (scheme === 'http' || scheme === 'https') return { kind: 'http', url: s }
  if (scheme === 'stacker') {
    const rest = s.slice(i + 3)
    const slash = rest.indexOf('/')
    return slash < 0
      ? { kind: 'stacker', layer: rest, path: '/' }
      : { kind: 'stacker', layer: rest.slice(0, slash), path: rest.slice(slash) }
  }
  return { kind: 'unsupported', scheme, url: s }
}

/** The layers `layer` needs built first, each once, in the order met: its `built` parent, the
 *  source layer of a `stacker://` tar base, and those of its `stacker://` imports. */
export function layerDependencies(layer: Layer): string[] {
  const out: string[] = []
  const add = (name: string) => {
    if (!out.includes(name)) out.push(name)
  }
  const from = layer.from
  if (from?.type === 'built' && from.tag) add(from.tag)
  if (from?.type === 'tar' && from.source?.kind === 'stacker') add(from.source.layer)
  for (const i of layer.imports) if (i.source.kind === 'stacker') add(i.source.layer)
  return out
}
