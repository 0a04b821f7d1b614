import type { Step } from './shell.js'
import type { ArgRef, Template } from './words.js'

/** Options of convertDockerfile. */
export interface ConvertOptions {
  /** The Dockerfile's text. */
  readonly text: string
  /** The Dockerfile as the user named it: messages say `<file>:<line>: ...`. */
  readonly file: string
  /** Absolute build context: COPY and ADD sources are looked up here. */
  readonly contextDir: string
  /** Absolute directory of the stackerfile to write: import paths are written relative to it. */
  readonly outputDir: string
  /** The platform of a build without `--platform` (default: this machine, in Go's names). */
  readonly os?: string
  /** See `os`. */
  readonly arch?: string
}

/** Something of the Dockerfile that the stackerfile does not say, or says differently. */
export interface ConversionWarning {
  /** The Dockerfile line it is about; 0 for the file as a whole. */
  readonly line: number
  readonly message: string
}

/** What convertDockerfile gives: the two files' texts and the warnings. */
export interface Conversion {
  /** The stackerfile. */
  readonly stackerYaml: string
  /** The substitutions file: `IMAGE` and the defaults of the build arguments. */
  readonly substitutions: string
  /** Sorted by line. */
  readonly warnings: readonly ConversionWarning[]
}

/** The name the last stage's layer gets; the substitutions file sets it (upstream's convert does). */
export const IMAGE_KEY = 'IMAGE'
/** IMAGE's value in the substitutions file, unless a layer already has that name. */
export const IMAGE_DEFAULT = 'app'

/** Substitutions every stacker build has; a Dockerfile text that spells them must be escaped too. */
export const BUILTIN_SUBSTITUTIONS = [
  'STACKER_ROOTFS_DIR',
  'STACKER_STACKER_DIR',
  'STACKER_OCI_DIR',
  'STACKER_WORK_DIR',
]

/** The PATH stacker (and Docker, for an image without one) starts a build container with. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** Directories nearly every base image has: a COPY to one of them without a trailing `/` means
 *  "into it", as Docker decides by looking at the image. */
export const KNOWN_DIRS = [
  '/',
  '/bin',
  '/sbin',
  '/etc',
  '/home',
  '/lib',
  '/opt',
  '/root',
  '/tmp',
  '/usr',
  '/usr/bin',
  '/usr/sbin',
  '/usr/lib',
  '/usr/local',
  '/usr/local/bin',
  '/usr/local/sbin',
  '/usr/local/lib',
  '/usr/share',
  '/var',
  '/var/lib',
  '/var/log',
  '/srv',
]

/** Docker's automatic platform build arguments: they need an `ARG` in a stage, not a value. */
export const PLATFORM_ARGS = [
  'TARGETPLATFORM',
  'TARGETOS',
  'TARGETARCH',
  'TARGETVARIANT',
  'BUILDPLATFORM',
  'BUILDOS',
  'BUILDARCH',
  'BUILDVARIANT',
]

export type FromOut =
  | { type: 'docker'; url: Template; insecure: boolean }
  | { type: 'scratch' }
  | { type: 'built'; tag: string }
  | { type: 'tar'; url: string }

export interface ImportOut {
  path: string
  dest?: Template
  mode?: number
  uid?: number
  gid?: number
  hash?: string
}

/** One stacker layer of the output. */
export interface LayerOut {
  name: string
  from: FromOut
  os?: string
  arch?: string
  buildOnly: boolean
  imports: ImportOut[]
  steps: Step[]
  /** Build arguments in scope at each step, for the steps' `unset`. */
  scopes: Array<ReadonlyMap<string, ArgRef>>
  /** Config, on the layer of the last stage only. */
  config?: LayerConfig
  /** Filled by finishStage(). */
  buildEnv: Array<[string, Template]>
  run: string[]
}

export interface LayerConfig {
  environment: Array<[string, Template]>
  labels: Array<[string, Template]>
  annotations: Array<[string, string]>
  volumes: Template[]
  exposedPorts: Template[]
  workingDir?: Template
  runtimeUser?: Template
  entrypoint?: string[]
  cmd?: string[]
}

/** One stage of the Dockerfile (a FROM and what follows it), as the conversion goes. */
export interface Stage {
  index: number
  line: number
  /** `AS` name, lower-cased as Docker compares them. */
  name: string | undefined
  /** The name of its (last) stacker layer. */
  layerName: string
  layers: LayerOut[]
  /** The current layer has a RUN-like step: a COPY after it needs the next layer. */
  effectful: boolean
  parent: Stage | undefined
  /** The image at the root of its chain, for messages. */
  externalRef: string | undefined
  externalLine: number
  platform: { os: string; arch: string } | undefined
  args: Map<string, ArgRef>
  env: Array<[string, Template]>
  labels: Array<[string, Template]>
  annotations: Array<[string, string]>
  volumes: Template[]
  exposedPorts: Template[]
  workdir: Template
  workdirSet: boolean
  user: Template | undefined
  shell: string[]
  cmd: string[] | null | undefined
  entrypoint: string[] | undefined
  cmdSet: boolean
  knownDirs: Set<string>
  /** RUN steps somewhere in its chain: the image has a shell. */
  hasRun: boolean
  workdirLines: Array<{ line: number; dir: string }>
  importDests: string[]
  used: boolean
}
