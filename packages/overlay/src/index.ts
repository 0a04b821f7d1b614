export { listMounts, type Mount } from './mounts.js'
export { acquireLock, acquireStorageLocks, type Lock } from './lock.js'
export { checkOverlay, initStorage } from './storage.js'
export { OverlayStore, STORE_DIR, type Snapshot } from './store.js'
export type { LayerRecord } from './records.js'
export type { MountOptions } from './overlay-mount.js'
export type { BuildWorkspace } from './workspace.js'
export { validateContentId } from './names.js'
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
export { checkStorageOwner, storageMarkers } from './owner.js'
