// What the --jobs replay needs to know of a recorded build (helpers/corpus.ts), found with the
// project's own stackerfile loader and the builder's dependency rules, on the inputs as they are when
// the build starts.
import { resolve, sep } from 'node:path'
import { silentLogger } from '@stacker/core'
import { hostCouplings } from '@stacker/builder'
import {
  buildSubstitutions,
  findStackerfiles,
  type Layer,
  layerBuildOrder,
  layerDependencies,
  loadStackerfiles,
  type StackerfileSet,
} from '@stacker/stackerfile'
import { type StackerArgs, stackerDirs } from './stacker-args.js'

export interface BuildPlan {
  /** Two layers of one stackerfile that --jobs 2 may build at once (no dependency path between
   *  them, host couplings included), or undefined when every file is a chain. */
  independent: { file: string; layers: [string, string] } | undefined
  /** Why the build cannot be replayed offline, e.g. a docker:// base or an http import. */
  needsServer: string[]
  /** Inputs in the build's stacker or roots dir: what an earlier build left there, which the corpus
   *  does not hold. */
  readsState: string[]
  /** The build's output dirs that are outside the dirs the corpus holds. */
  outsideOutputs: string[]
  /** The stackerfiles the build loads (given ones and their prerequisites), by absolute path. */
  stackerfiles: string[]
}

const NETWORK_SCHEMES = new Set(['http', 'https', 'docker'])
const scheme = (p: string) => /^([a-z][a-z0-9+.-]*):\/\//.exec(p)?.[1]
const within = (p: string, dir: string) => p === dir || p.startsWith(`${dir}${sep}`)

/**
 * Loads a build's stackerfiles as the CLI would for `args` in `cwd` (substitutions, search dir and
 * storage dirs included) and finds what the replay needs to know. `roots` are the dirs the corpus
 * holds. Reads files, runs nothing, fetches nothing (a stackerfile given as a URL is reported in
 * needsServer, not loaded).
 */
export async function planBuild(
  parsed: StackerArgs,
  cwd: string,
  env: Record<string, string | undefined>,
  roots: readonly string[],
): Promise<BuildPlan> {
  const dirs = stackerDirs(parsed, cwd, env)
  const last = (name: string) => parsed.options.get(name)?.at(-1)
  const needsServer: string[] = []
  let files: string[]
  if (parsed.command === 'recursive-build') {
    files = await findStackerfiles(resolve(cwd, last('--search-dir') ?? '.'), last('--stacker-file-pattern'))
  } else {
    const f = last('--stacker-file') ?? 'stacker.yaml'
    if (scheme(f) !== undefined) {
      needsServer.push(`stackerfile ${f}`)
      return { independent: undefined, needsServer, readsState: [], outsideOutputs: [], stackerfiles: [] }
    }
    files = [resolve(cwd, f)]
  }
  const substituteFile = last('--substitute-file')
  const set = await loadStackerfiles(files, {
    substitutions: await buildSubstitutions({
      substitute: parsed.options.get('--substitute') ?? [],
      ...(substituteFile !== undefined ? { substituteFile: resolve(cwd, substituteFile) } : {}),
      dirs,
    }),
    requireHash: parsed.options.has('--require-hash'),
    logger: silentLogger,
  })
  const state = [dirs.stackerDir, dirs.rootsDir]
  const readsState: string[] = []
  for (const file of set.files.values()) {
    for (const layer of file.layers.values()) {
      const from = layer.from
      if (from?.url !== undefined && NETWORK_SCHEMES.has(scheme(from.url) ?? ''))
        needsServer.push(`${layer.name}: base ${from.url}`)
      for (const i of layer.imports)
        if (NETWORK_SCHEMES.has(scheme(i.path) ?? '')) needsServer.push(`${layer.name}: import ${i.path}`)
      for (const p of localPaths(layer, cwd))
        if (state.some((o) => within(p, o))) readsState.push(`${layer.name}: ${p}`)
    }
  }
  const outsideOutputs = [dirs.ociDir, ...state].filter((p) => !roots.some((root) => within(p, root)))
  return {
    independent: independentPair(set, cwd),
    needsServer,
    readsState,
    outsideOutputs,
    stackerfiles: [...set.files.keys()].sort(),
  }
}

/** The layer with a local base path made absolute against cwd, as packages/builder/src/bases.ts
 *  resolves it in the CLI's cwd. (Imports, overlay_dirs and binds are absolute after loading.) */
function withAbsoluteBase(layer: Layer, cwd: string): Layer {
  const from = layer.from
  const url = from?.url
  if (!from || url === undefined || scheme(url) !== undefined) return layer
  let abs: string | undefined
  if (from.type === 'tar') abs = resolve(cwd, url)
  else if (from.type === 'oci' && url.includes(':')) {
    const i = url.indexOf(':')
    abs = `${resolve(cwd, url.slice(0, i))}${url.slice(i)}`
  } else if (from.type === 'docker' && url.startsWith('oci:')) {
    const rest = url.slice('oci:'.length)
    const i = rest.indexOf(':')
    abs = i < 0 ? `oci:${resolve(cwd, rest)}` : `oci:${resolve(cwd, rest.slice(0, i))}${rest.slice(i)}`
  }
  return abs === undefined ? layer : { ...layer, from: { ...from, url: abs } }
}

/** The host paths a layer reads or binds: local imports, overlay_dir and bind sources, a local base. */
function localPaths(layer: Layer, cwd: string): string[] {
  const out = [
    ...layer.imports.map((i) => i.path).filter((p) => scheme(p) === undefined),
    ...layer.overlayDirs.map((o) => o.source),
    ...layer.binds.map((b) => b.source),
  ]
  const { type, url } = withAbsoluteBase(layer, cwd).from ?? {}
  if (url !== undefined && scheme(url) === undefined) {
    if (type === 'tar') out.push(url)
    // An OCI layout reference is `path:ref`, and `oci:path[:ref]` as a docker URL.
    const ref =
      type === 'oci' ? url : type === 'docker' && url.startsWith('oci:') ? url.slice('oci:'.length) : undefined
    if (ref !== undefined) out.push(ref.split(':')[0] as string)
  }
  return out
}

/** The first two layers of one file, in build order, with no dependency path between them: the
 *  dependencies packages/builder/src/build.ts buildFile waits for, host couplings included. */
export function independentPair(set: StackerfileSet, cwd: string): BuildPlan['independent'] {
  for (const file of set.order) {
    const order = layerBuildOrder(set, file, silentLogger)
    const coupled = hostCouplings(order.map((l) => withAbsoluteBase(l, cwd)))
    const names = new Set(order.map((l) => l.name))
    // Everything each layer waits for, transitively (build order puts what a layer waits for first).
    const before = new Map<string, Set<string>>()
    for (const layer of order) {
      const all = new Set<string>()
      for (const d of [...layerDependencies(layer), ...(coupled.get(layer.name) ?? [])]) {
        if (!names.has(d)) continue
        all.add(d)
        for (const x of before.get(d) ?? []) all.add(x)
      }
      before.set(layer.name, all)
    }
    for (const [i, x] of order.entries())
      for (const y of order.slice(i + 1))
        if (!before.get(y.name)?.has(x.name)) return { file: file.path, layers: [x.name, y.name] }
  }
  return undefined
}
