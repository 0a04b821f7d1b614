export { listMounts, type Mount } from './mounts.js'
export { acquireLock, acquireStorageLocks, type Lock } from './lock.js'
export { checkOverlay, initStorage } from './storage.js'
export {
  OverlayStore,
  STORE_DIR,
  type Snapshot,
  type LayerRecord,
  type MountOptions,
  type BuildWorkspace,
} from './store.js'
export { validateContentId } from './names.js'
export { checkStorageOwner, storageMarkers } from './owner.js'
