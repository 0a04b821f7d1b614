export type { Descriptor, Platform, Manifest, ImageIndex, ImageConfig, ContainerConfig, History } from './types.js'
export {
  MediaTypes,
  Annotations,
  type MediaType,
  type LayerKind,
  type LayerCompression,
  layerKind,
  layerCompression,
  isLayerMediaType,
  isManifestMediaType,
  isIndexMediaType,
} from './media-types.js'
export { validateRefName, isValidRefName, REF_NAME_RE, goQuote } from './ref-name.js'
export type { BlobWriter, BlobInfo, ExpectedBlob } from './blob-writer.js'
export { type FileHasher, hashFileOffThread, openFileHasher } from './file-hasher.js'
export {
  OciLayout,
  openVerifiedFile,
  type OpenOptions,
  type TagEntry,
  type GcOptions,
  type GcResult,
  type ImageRecord,
  type WriteImageOptions,
} from './layout.js'
export { mutateImage, newImageConfig, type NewLayer, type MutateOptions, type ImageParts } from './mutate.js'
export { hostPlatform, ociArchitecture, platformMatches } from './platform.js'
// The core types this package's API takes and throws, so a user needs no second import.
export { isStackerError, StackerError } from '@stacker/core'
export type {
  Digest,
  LogFields,
  Logger,
  LogLevel,
  SourcePos,
  StackerErrorCode,
  StackerErrorDetail,
} from '@stacker/core'
