import type { Logger, SourcePos } from '@stacker/core'
import type { SourceRef } from './source.js'

export type { SourcePos }

export interface LoadOptions {
  /** Ordered `KEY=VALUE` list (see buildSubstitutions). */
  substitutions: readonly string[]
  /** `--require-hash`: every http(s) entry of `imports` needs a `hash`. */
  requireHash?: boolean
  logger?: Logger
  /** Defaults for layers without `os`/`arch`: `linux` and the Go name of the host architecture. */
  os?: string
  arch?: string
}

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

export interface OverlayDir {
  /** Absolute path on the host. */
  source: string
  /** Path in the image; `/` when not given. */
  dest: string
  pos: SourcePos
}

export interface Bind {
  /** Absolute host path. */
  source: string
  /** Absolute container path (a relative dest was made absolute against the stackerfile's dir, as upstream does). */
  dest: string
  pos: SourcePos
}

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

export interface StackerfileSet {
  /** Every loaded file (given ones and their transitive prerequisites), keyed by path. */
  files: ReadonlyMap<string, Stackerfile>
  /** Prerequisites before dependents; ties broken by path order. */
  order: Stackerfile[]
  findLayer(name: string): Layer | undefined
}
