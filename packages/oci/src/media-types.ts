import { StackerError } from '@stacker/core'

/** Media types this project writes or accepts. The stacker.* ones are upstream stacker's own. */
export const MediaTypes = {
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
  layerTarGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  layerTarZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  /** Legacy: no compression suffix. Accepted on input only. */
  layerSquashfs: 'application/vnd.stacker.image.layer.squashfs',
  layerSquashfsGzip: 'application/vnd.stacker.image.layer.squashfs+gzip',
  layerSquashfsZstd: 'application/vnd.stacker.image.layer.squashfs+zstd',
  layerErofs: 'application/vnd.stacker.image.layer.erofs',
  layerErofsLz4hc: 'application/vnd.stacker.image.layer.erofs+lz4hc',
  layerErofsLz4: 'application/vnd.stacker.image.layer.erofs+lz4',
  layerErofsZstd: 'application/vnd.stacker.image.layer.erofs+zstd',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
  layout: 'application/vnd.oci.layout.header.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
} as const

/** One of MediaTypes' values. */
export type MediaType = (typeof MediaTypes)[keyof typeof MediaTypes]

/** Annotation keys this project reads or writes. */
export const Annotations = {
  /** The tag of a descriptor in index.json. */
  refName: 'org.opencontainers.image.ref.name',
  /** Size of a compressed tar layer once decompressed, as a decimal string (umoci's key). */
  uncompressedBlobSize: 'ci.umo.uncompressed_blob_size',
  /** dm-verity root hash (hex) of a squashfs/erofs layer. Fixed: ignores --annotations-namespace. */
  verityRootHash: 'io.stackeroci.stacker.atomfs_verity_root_hash',
  authors: 'org.opencontainers.image.authors',
  vendor: 'org.opencontainers.image.vendor',
  licenses: 'org.opencontainers.image.licenses',
  created: 'org.opencontainers.image.created',
} as const

/** The filesystem format of a layer blob. */
export type LayerKind = 'tar' | 'squashfs' | 'erofs'
/** For tar: the stream compression to undo. For squashfs/erofs: the label's suffix; the image's
 *  internal compression is the filesystem's business and there is nothing to decompress. */
export type LayerCompression = 'none' | 'gzip' | 'zstd' | 'lz4' | 'lz4hc'

const LAYER_TYPES: Readonly<Record<string, readonly [LayerKind, LayerCompression]>> = {
  [MediaTypes.layerTar]: ['tar', 'none'],
  [MediaTypes.layerTarGzip]: ['tar', 'gzip'],
  [MediaTypes.layerTarZstd]: ['tar', 'zstd'],
  [MediaTypes.layerSquashfs]: ['squashfs', 'none'],
  [MediaTypes.layerSquashfsGzip]: ['squashfs', 'gzip'],
  [MediaTypes.layerSquashfsZstd]: ['squashfs', 'zstd'],
  [MediaTypes.layerErofs]: ['erofs', 'none'],
  [MediaTypes.layerErofsLz4hc]: ['erofs', 'lz4hc'],
  [MediaTypes.layerErofsLz4]: ['erofs', 'lz4'],
  [MediaTypes.layerErofsZstd]: ['erofs', 'zstd'],
}

function lookupLayer(mediaType: string): readonly [LayerKind, LayerCompression] {
  const t = Object.hasOwn(LAYER_TYPES, mediaType) ? LAYER_TYPES[mediaType] : undefined
  if (!t) throw new StackerError('LAYER', `invalid layer type ${mediaType}`)
  return t
}

/** Whether `mediaType` is a layer type this project reads (tar, squashfs or erofs, any compression). */
export function isLayerMediaType(mediaType: string): boolean {
  return Object.hasOwn(LAYER_TYPES, mediaType)
}

/** The filesystem format of a layer; throws LAYER `invalid layer type %s` for anything else. */
export function layerKind(mediaType: string): LayerKind {
  return lookupLayer(mediaType)[0]
}

/** The compression named by a layer media type; throws like layerKind. */
export function layerCompression(mediaType: string): LayerCompression {
  return lookupLayer(mediaType)[1]
}

/** Whether `mediaType` names an image manifest (OCI or Docker schema 2). */
export function isManifestMediaType(mediaType: string | undefined): boolean {
  return mediaType === MediaTypes.manifest || mediaType === MediaTypes.dockerManifest
}

/** Whether `mediaType` names an image index (OCI index or Docker manifest list). */
export function isIndexMediaType(mediaType: string | undefined): boolean {
  return mediaType === MediaTypes.index || mediaType === MediaTypes.dockerManifestList
}
