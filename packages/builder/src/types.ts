import { StackerError, type Logger } from '@stacker/core'

/** The output formats a layer's image can be made in (`--layer-type`). */
export const LAYER_TYPES = ['tar', 'squashfs', 'erofs'] as const
/** One of LAYER_TYPES. */
export type LayerType = (typeof LAYER_TYPES)[number]

/** Output settings that change the bytes of a layer type's blobs. */
export interface OutputType {
  type: LayerType
  verity: boolean
  /** How tar layers are compressed; absent means gzip. */
  tarCompression?: TarCompression
}

/** The compressions of generated tar layers (`--tar-compression`). */
export const TAR_COMPRESSIONS = ['gzip', 'zstd'] as const
/** One of TAR_COMPRESSIONS. */
export type TarCompression = (typeof TAR_COMPRESSIONS)[number]

/** Parses `--tar-compression`: gzip (the default, what every runtime reads) or zstd. */
export function parseTarCompression(value: string | undefined): TarCompression {
  if (value === undefined) return 'gzip'
  if (!(TAR_COMPRESSIONS as readonly string[]).includes(value))
    throw new StackerError('USAGE', `unknown tar compression: ${value} (expected gzip or zstd)`)
  return value as TarCompression
}

/** The directories a command works in, absolute (stacker's --stacker-dir, --oci-dir, --roots-dir). */
export interface SessionDirs {
  workDir: string
  stackerDir: string
  ociDir: string
  rootsDir: string
  /** The roots dir as the user gave it (before it was made absolute). */
  rootsDirArg: string
}

/** What every command gets from the CLI. */
export interface Session {
  dirs: SessionDirs
  logger: Logger
  debug: boolean
  version: string
  sourceDateEpoch: number | undefined
  /** Where container output goes (upstream: stacker's stdout). */
  output(chunk: Uint8Array): void
  interactive: boolean
  /** Aborted when the user interrupts (SIGINT/SIGTERM): no new layer, mount or container is started
   *  after it, and running containers are killed, so the command unwinds through its own cleanup. */
  signal?: AbortSignal | undefined
}

/** Parses repeated `--layer-type` values: giving the flag replaces the default `tar`. */
export function parseLayerTypes(values: readonly string[]): LayerType[] {
  if (values.length === 0) return ['tar']
  const out: LayerType[] = []
  for (const v of values) {
    if (v === '') throw new StackerError('USAGE', 'must specify at least one output --layer-type')
    if (!(LAYER_TYPES as readonly string[]).includes(v)) throw new StackerError('USAGE', `unknown layer type: ${v}`)
    if (!out.includes(v as LayerType)) out.push(v as LayerType)
  }
  return out
}

/** The tag suffix of a layer type: `<name>`, `<name>-squashfs`, `<name>-erofs`. */
export function tagFor(name: string, type: LayerType): string {
  return type === 'tar' ? name : `${name}-${type}`
}

/** The key of an output type in cache records (upstream spells them `tar+false`, `squashfs+true`). */
export function outputKey(t: OutputType): string {
  // zstd tar layers are a different output: they get their own key, so cached gzip outputs are
  // never reused for them or the reverse.
  const zstd = t.type === 'tar' && t.tarCompression === 'zstd' ? '+zstd' : ''
  return `${t.type}+${t.type === 'tar' ? false : t.verity}${zstd}`
}
