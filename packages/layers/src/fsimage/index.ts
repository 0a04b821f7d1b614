export { type FsImageKind, type FsImageLabel, fsImageMediaType, fsImageKindOf } from './media-types.js'
export {
  type FsImageOptions,
  type FsImageResult,
  writeFsImage,
  squashfsCompression,
  DEFAULT_SQUASHFS_ZSTD_LEVEL,
  EROFS_UUID,
  EROFS_WRITER_ID,
} from './write.js'
export { appendVerity, verifyVerity } from './verity.js'
export { type ExtractErofsOptions, extractErofs } from './erofs-read.js'
export { fsImageDataSize, detectFsImageKind } from './superblock.js'
export { stripOverlayXattrs, isOverlayBookkeepingXattr, supportsXattrs } from './scan.js'
export {
  type MountedFsImage,
  type OpenMethod,
  type OpenFsImageOptions,
  type ExtractFsImageOptions,
  openFsImage,
  extractFsImage,
  parseOpenPolicy,
  DEFAULT_OPEN_POLICY,
  mountPointsUnder,
} from './open.js'
