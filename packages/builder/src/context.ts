import {
  canonicalJson,
  digestHex,
  type KeptResults,
  type KeyedMutex,
  sha256Digest,
  type SingleFlight,
  type Logger,
} from '@stacker/core'
import type { Descriptor } from '@stacker/oci'
import type { Projection } from './projections.js'
import type { OpenedImages } from './fs-contents.js'
import type { OciLayout } from '@stacker/oci'
import type { OverlayStore } from '@stacker/overlay'
import type { Layer, StackerfileSet } from '@stacker/stackerfile'
import type { BuildCache, CacheEntry } from './cache.js'
import type { HashCache } from './hashing.js'
import type { RemoteCache } from './remote-cache.js'
import type { TagWriter } from './tags.js'
import type { OutputType, Session, TarCompression } from './types.js'

/** What `stacker build` was asked for: which files, substitutions, output types and cache use. */
export interface BuildOptions {
  stackerFiles: string[]
  substitute: string[]
  substituteFile?: string
  noCache: boolean
  onRunFailure?: string
  layerTypes: OutputType['type'][]
  verity: boolean
  requireHash: boolean
  orderOnly: boolean
  annotationsNamespace: string
  jobs: number
  /** Compression of generated tar layers (default gzip). */
  tarCompression?: TarCompression
  /** Repositories (`docker://host/repo`) the shared build cache is pushed to / read from. */
  cacheTo?: string[]
  cacheFrom?: string[]
  /** A failed push to the shared cache fails the build. */
  cacheToRequired?: boolean
}

/** A layer that is available to later layers: built in this run, or found in the cache. */
export interface BuiltLayer {
  layer: Layer
  entry: CacheEntry
}

/** State shared by the layers of one build. */
export interface BuildContext {
  s: Session
  logger: Logger
  layout: OciLayout
  store: OverlayStore
  cache: BuildCache
  hashes: HashCache
  set: StackerfileSet
  opts: BuildOptions
  outputs: OutputType[]
  built: Map<string, BuiltLayer>
  /** Where runc keeps container state. */
  runtimeDir: string
  /** Sets the build's tags in build order (see TagWriter). */
  tags: TagWriter
  /** squashfs/erofs base contents this build opened; closed when it ends. */
  images: OpenedImages
  /** Work shared by layers building at once: one projection per content dir and output, one
   *  output manifest per layer and type, one pull per base cache dir at a time. */
  flights: {
    projections: SingleFlight<string, Projection | undefined>
    outputs: SingleFlight<string, Descriptor>
    basePulls: KeyedMutex<string>
  }
  /** `git describe` results by directory. */
  gitVersions: KeptResults<string, string | undefined>
  /** The shared build cache (`--cache-to`/`--cache-from`), if any. */
  remote?: RemoteCache | undefined
}

/** Opens the squashfs/erofs base contents of a chain before it is mounted or read. */
export function openChain(ctx: BuildContext, chain: readonly string[]): Promise<void> {
  return ctx.images.open(chain, ctx.logger)
}

/** What a layer built on `parent` depends on: the parent's inputs (its image config is inherited)
 *  and what its build produced (the content ids of its filesystem are derived from the content),
 *  so a parent rebuilt with other content rebuilds its children, and one rebuilt with the same
 *  content does not. */
export function builtIdentity(parent: BuiltLayer): string {
  const { key, chain, generatedLabels } = parent.entry
  return digestHex(sha256Digest(canonicalJson({ key, chain, generatedLabels })))
}
