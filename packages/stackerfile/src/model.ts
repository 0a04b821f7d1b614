import type { Logger, SourcePos } from '@stacker/core'
import type { SourceRef } from './source.js'

export type { SourcePos }

/** Options of loadStackerfile and loadStackerfiles. */
export interface LoadOptions {
  /** Ordered `KEY=VALUE` list (see buildSubstitutions). */
  substitutions: readonly string[]
  /** `--require-hash`: every http(s) entry of `imports` needs a `hash`. */
  requireHash?: boolean
  /** Receives warnings (legacy `import:`, `bom:`, repeated keys) and debug lines. Default: dropped. */
  logger?: Logger
  /** Defaults for layers without `os`/`arch`: `linux` and the Go name of the host architecture. */
  os?: string
  /** See `os`. */
  arch?: string
}

/** The `from.type` values upstream stacker knows. */
export type SourceType = 'docker' | 'oci' | 'tar' | 'built' | 'scratch'

/** `from:`. `type` is kept as written ('' when missing); the builder rejects unknown types. */
export interface ImageSource {
  type: string
  url?: string
  /** `url` parsed (see parseSource), when there is one. */
  source?: SourceRef
  tag?: string
  insecure: boolean
  pos: SourcePos
}

/** One `imports` entry. `path` is absolute (or a `scheme://` URL, left alone); a trailing `/` is kept. */
export interface ImportSpec {
  path: string
  /** `path` parsed: a local path, http(s), `stacker://<layer>/<path>`, or an unsupported scheme. */
  source: SourceRef
  /** sha256 hex, lower-cased, no `sha256:` prefix. Format-checked at parse time. */
  hash?: string
  /** Absolute path in the image. */
  dest?: string
  mode?: number
  uid?: number
  gid?: number
  pos: SourcePos
}

/** One `overlay_dirs` entry: a host directory laid over the image at `dest`. */
export interface OverlayDir {
  /** Absolute path on the host. */
  source: string
  /** Path in the image; `/` when not given. */
  dest: string
  pos: SourcePos
}

/** One `binds` entry: a host path mounted read-write while the layer's `run` runs. */
export interface Bind {
  /** Absolute host path. */
  source: string
  /** Absolute container path (a relative dest was made absolute against the stackerfile's dir, as upstream does). */
  dest: string
  pos: SourcePos
}

/** One layer of a stackerfile, validated, with absolute host paths and the position of each part. */
export interface Layer {
  name: string
  /** Absolute path or URL of its stackerfile. */
  file: string
  /** Where the layer's name is written. */
  pos: SourcePos
  from: ImageSource | undefined
  imports: ImportSpec[]
  overlayDirs: OverlayDir[]
  run: string[]
  generateLabels: string[]
  cmd?: string[]
  entrypoint?: string[]
  fullCommand?: string[]
  /** Regexes of host env names to pass; undefined (also for an empty list) means the default list. */
  buildEnvPassthrough?: string[]
  buildEnv: Array<[string, string]>
  /** File order; a repeated key keeps its first place and its last value. */
  environment: Array<[string, string]>
  labels: Array<[string, string]>
  annotations: Array<[string, string]>
  volumes: string[]
  /** `exposed_ports`, each as `PORT/PROTO` (the image config's ExposedPorts keys); a directive of
   *  this project's, not upstream's. */
  exposedPorts: string[]
  workingDir?: string
  runtimeUser?: string
  buildOnly: boolean
  binds: Bind[]
  os: string
  arch: string
  /** The layer used the deprecated `import:` (converted into `imports`). */
  wasLegacyImport: boolean
  /** The layer had a (dropped) `bom:` directive. */
  wasBom: boolean
}

/** One parsed stacker.yaml. */
export interface Stackerfile {
  /** Absolute path, or the URL it was fetched from. */
  path: string
  /** Relative paths in the file resolve against this: the file's dir, or the cwd for URLs. */
  referenceDir: string
  /** The content after substitution. */
  text: string
  /** `config.prerequisites`, absolute (or URLs), in file order. */
  prerequisites: string[]
  /** In file order. */
  layers: ReadonlyMap<string, Layer>
  fileOrder: string[]
}

/** Stackerfiles loaded together (the given ones and their prerequisites), in build order. */
export interface StackerfileSet {
  /** Every loaded file (given ones and their transitive prerequisites), keyed by path. */
  files: ReadonlyMap<string, Stackerfile>
  /** Prerequisites before dependents; ties broken by path order. */
  order: Stackerfile[]
  /** The layer of that name in any of the files. */
  findLayer(name: string): Layer | undefined
}
