export { type ImageRef, parseImageRef, makeRef, refReference, registryHost, DOCKER_HUB } from './ref.js'
export {
  type Credentials,
  type CredentialsEntry,
  type LookupAuthOptions,
  lookupAuth,
  lookupAuthEntry,
  authFilePaths,
} from './auth-file.js'
export {
  RegistryClient,
  type RegistryClientOptions,
  type ManifestResult,
  type PushBlobResult,
  DEFAULT_CHUNK_SIZE,
} from './client.js'
export { isRetryable, OFFLINE_REASONS, type RegistryReason } from './errors.js'
export type { OciLayoutLike } from './layout-like.js'
export { pullImage, type PullImageOptions, type BlobCheck, stageBlob, type StageBlobOptions } from './pull.js'
export { pushImage, pushImageDetailed, type PushImageOptions, type PushImageResult } from './push.js'
export {
  MountSources,
  SOURCE_ANNOTATION,
  sourceAnnotation,
  type AnnotatedLayoutLike,
} from './mount-sources.js'
export {
  copyImage,
  parseTransportRef,
  isLoopbackRegistry,
  type CopyImageOptions,
  type TransportRef,
} from './copy.js'
export {
  NetDispatcher,
  type DispatcherOptions,
  type ProxyConfig,
  type HostCerts,
  type TrustWarning,
  proxyConfig,
  proxyFor,
  describeProxy,
  trustedCas,
  hostCerts,
  certsDirs,
  sharedDispatcher,
  netFetch,
} from './net.js'
export {
  type RegistryEntry,
  type PullSource,
  type RegistriesConfOptions,
  registriesConfFiles,
  readRegistriesConf,
  findRegistryEntry,
  pullSources,
  pushTarget,
} from './registries-conf.js'
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
// The @stacker/oci types its API takes and gives.
export type { BlobInfo, BlobWriter, Descriptor, ExpectedBlob, ImageIndex, Platform } from '@stacker/oci'
