import type { Digest } from '@stacker/core'
import { hostPlatform } from './platform.js'
import type { ContainerConfig, Descriptor, History, ImageConfig, Manifest } from './types.js'

/** A layer to append: its descriptor in the manifest, its diff_id (digest of the uncompressed
 *  content; the blob digest itself for uncompressed or filesystem-image layers) and its history. */
export interface NewLayer {
  descriptor: Descriptor
  diffId: Digest
  history?: History
}

/** Options of mutateImage: what the new image adds to or changes in its base. */
export interface MutateOptions {
  /** Appended to the base's layers, in order. */
  layers?: NewLayer[]
  /** Appended after the layers' own history entries (e.g. a final `empty_layer` entry). */
  history?: History[]
  /** Replaces the container config when given; compute it from `base.config.config`. */
  config?: ContainerConfig
  /** The config's `created` (RFC 3339); nothing is set when absent, for reproducible images. */
  created?: string
  /** The config's `author`. */
  author?: string
  /** Platform of the new image; the base's (or this host's, without a base) when absent. */
  architecture?: string
  /** See `architecture`. */
  os?: string
  /** See `architecture`. */
  variant?: string
  /** Merged over the base manifest's annotations, which carry over. */
  annotations?: Record<string, string>
}

/** What writeImage takes. */
export interface ImageParts {
  config: ImageConfig
  layers: Descriptor[]
  annotations: Record<string, string>
}

/** An empty image config (no layers). Deterministic: `created` is set only when given. */
export function newImageConfig(opts: { architecture?: string; os?: string; created?: string } = {}): ImageConfig {
  const host = hostPlatform()
  const c: ImageConfig = {
    architecture: opts.architecture ?? host.architecture,
    os: opts.os ?? host.os,
    rootfs: { type: 'layers', diff_ids: [] },
    config: {},
  }
  if (opts.created !== undefined) c.created = opts.created
  return c
}

/**
 * Derives a new image from `base` (or from an empty config when undefined) by appending layers,
 * diff_ids and history. Pure: `base` is not modified, nothing is written; pass the result to
 * OciLayout.writeImage.
 */
export function mutateImage(
  base: { manifest: Manifest; config: ImageConfig } | undefined,
  opts: MutateOptions = {},
): ImageParts {
  const config: ImageConfig = base
    ? structuredClone(base.config)
    : newImageConfig({
        ...(opts.architecture !== undefined && { architecture: opts.architecture }),
        ...(opts.os !== undefined && { os: opts.os }),
      })
  const layers: Descriptor[] = base ? structuredClone(base.manifest.layers) : []
  config.rootfs = { type: 'layers', diff_ids: [...(config.rootfs?.diff_ids ?? [])] }
  const history = [...(config.history ?? [])]
  for (const l of opts.layers ?? []) {
    layers.push(structuredClone(l.descriptor))
    config.rootfs.diff_ids.push(l.diffId)
    if (l.history) history.push({ ...l.history })
  }
  for (const h of opts.history ?? []) history.push({ ...h })
  if (history.length > 0 || config.history) config.history = history
  if (opts.config) config.config = structuredClone(opts.config)
  if (opts.created !== undefined) config.created = opts.created
  if (opts.author !== undefined) config.author = opts.author
  if (opts.architecture !== undefined) config.architecture = opts.architecture
  if (opts.os !== undefined) config.os = opts.os
  if (opts.variant !== undefined) config.variant = opts.variant
  const annotations = { ...(base?.manifest.annotations ?? {}), ...(opts.annotations ?? {}) }
  return { config, layers, annotations }
}
