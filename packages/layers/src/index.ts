export * from './tar/index.js'
export * from './fsimage/index.js'
// The core and oci types this package's API takes, returns and throws, so a user needs no second import.
export type { Descriptor } from '@stacker/oci'
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
