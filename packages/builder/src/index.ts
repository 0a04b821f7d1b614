export { build } from './build.js'
export { hostCouplings } from './coupling.js'
export { chroot, grab, inspect, clean, check, gc, internalCheckOverlay } from './commands.js'
export { publish, type PublishOptions } from './publish.js'
export {
  parseLayerTypes,
  parseTarCompression,
  tagFor,
  LAYER_TYPES,
  type LayerType,
  type Session,
  type SessionDirs,
  type OutputType,
  type TarCompression,
  TAR_COMPRESSIONS,
} from './types.js'
export type { BuildOptions } from './context.js'
export { containerConfig, DEFAULT_PATH_ENV } from './image.js'
export { destPlacement } from './imports.js'
export {
  internalCopy,
  internalCp,
  internalChmod,
  internalChown,
  NO_APPARMOR_EXIT,
  type InternalCopyOptions,
} from './internal-go.js'
export { atomfsMount, atomfsUmount, type AtomfsMountOptions, type AtomfsUmountOptions } from './atomfs.js'
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
// The types of the other packages that its API names.
export type { ContainerConfig } from '@stacker/oci'
export type { Layer } from '@stacker/stackerfile'
export { unprivSetup, type UnprivSetupOptions } from './unpriv.js'
