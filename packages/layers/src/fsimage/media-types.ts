import { StackerError } from '@stacker/core'
import { layerKind, MediaTypes } from '@stacker/oci'

/** The filesystem of an image layer. */
export type FsImageKind = 'squashfs' | 'erofs'

/** The compression named in a filesystem image's media type. */
export type FsImageLabel = 'zstd' | 'gzip' | 'lz4hc'

/** The media type this project writes for an image. squashfs carries the compressor mksquashfs
 *  used (zstd, or gzip where mksquashfs lacks zstd). erofs is always labelled `+lz4hc`, as
 *  upstream labels it: lz4 and lz4hc produce the same on-disk format, and an uncompressed erofs
 *  needs no decompressor, so the label never promises something a reader cannot handle.
 *  Pure: lets a cache key name the output type before anything is built. */
export function fsImageMediaType(kind: FsImageKind, compression?: FsImageLabel): string {
  if (kind === 'squashfs') {
    if (compression === 'zstd') return MediaTypes.layerSquashfsZstd
    if (compression === 'gzip') return MediaTypes.layerSquashfsGzip
    throw new StackerError('UNSUPPORTED', `squashfs layers are written with zstd or gzip, not ${String(compression)}`)
  }
  if (compression === undefined || compression === 'lz4hc') return MediaTypes.layerErofsLz4hc
  throw new StackerError('UNSUPPORTED', `erofs layers are labelled lz4hc, not ${compression}`)
}

/** The filesystem kind of a layer media type: squashfs or erofs for any type upstream accepts
 *  (including the legacy suffix-less squashfs type), undefined for tar layers. Throws LAYER
 *  `invalid layer type <type>` for anything else. */
export function fsImageKindOf(mediaType: string): FsImageKind | undefined {
  const kind = layerKind(mediaType)
  return kind === 'tar' ? undefined : kind
}

/** Like fsImageKindOf, but a tar media type is an error too. */
export function requireFsImageKind(mediaType: string): FsImageKind {
  const kind = fsImageKindOf(mediaType)
  if (!kind) throw new StackerError('LAYER', `${mediaType} is not a squashfs or erofs layer`)
  return kind
}
