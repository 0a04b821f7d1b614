export { type BindMount, parseBind } from './bind.js'
export { type BuildEnvironmentOptions, DEFAULT_PASSTHROUGH, DEFAULT_PATH, buildEnvironment } from './env.js'
export { type RunOptions, type RunResult, runContainer } from './run.js'
export { BUILD_CAPABILITIES } from './spec.js'
export { removeStaleContainers } from './stale.js'
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
export {
  type IdMapper,
  type IdRange,
  type NamespaceUser,
  type SubordinateEntry,
  type UserNamespaceMapping,
  SUBGID_FILE,
  SUBORDINATE_IDS_MAPPED,
  SUBORDINATE_RANGE_SIZE,
  SUBUID_FILE,
  allocateSubordinateRange,
  currentUser,
  displayName,
  findIdMapper,
  parseSubordinateIds,
  pickRange,
  rangesOf,
  readSubordinateIds,
  requireIdMapper,
  userNamespaceCommand,
  userNamespaceMapping,
} from './userns.js'
