import type { Digest } from '@stacker/core'

/** An OCI content descriptor. */
export interface Descriptor {
  mediaType: string
  digest: Digest
  size: number
  annotations?: Record<string, string>
  platform?: Platform
  urls?: string[]
  artifactType?: string
}

/** What an image runs on (image-spec `platform`), in Go's GOOS/GOARCH names. */
export interface Platform {
  architecture: string
  os: string
  variant?: string
  'os.version'?: string
  'os.features'?: string[]
}

/** An image manifest (image-spec `application/vnd.oci.image.manifest.v1+json`). */
export interface Manifest {
  schemaVersion: 2
  mediaType?: string
  config: Descriptor
  layers: Descriptor[]
  annotations?: Record<string, string>
  artifactType?: string
  subject?: Descriptor
}

/** An image index: index.json of a layout, or a multi-platform image. */
export interface ImageIndex {
  schemaVersion: 2
  mediaType?: string
  manifests: Descriptor[]
  annotations?: Record<string, string>
  artifactType?: string
  subject?: Descriptor
}

/** An image configuration (image-spec `application/vnd.oci.image.config.v1+json`). */
export interface ImageConfig {
  created?: string
  author?: string
  architecture: string
  os: string
  'os.version'?: string
  'os.features'?: string[]
  variant?: string
  config?: ContainerConfig
  rootfs: { type: 'layers'; diff_ids: Digest[] }
  history?: History[]
}

/** The `config` member of an image configuration: how a container of the image is run. */
export interface ContainerConfig {
  User?: string
  ExposedPorts?: Record<string, object>
  Env?: string[]
  Entrypoint?: string[] | null
  Cmd?: string[] | null
  Volumes?: Record<string, object>
  WorkingDir?: string
  Labels?: Record<string, string>
  StopSignal?: string
}

/** One entry of an image configuration's history, oldest first. */
export interface History {
  created?: string
  created_by?: string
  author?: string
  comment?: string
  empty_layer?: boolean
}
