export type {
  Bind,
  ImageSource,
  ImportSpec,
  Layer,
  LoadOptions,
  OverlayDir,
  SourcePos,
  SourceType,
  Stackerfile,
  StackerfileSet,
} from './model.js'
export { type BuildSubstitutionsOptions, buildSubstitutions, substitute, type Dirs } from './substitute.js'
export { loadStackerfile, loadStackerfiles } from './load.js'
export { layerBuildOrder, orderLines } from './order.js'
export { parseStackerfile, stackerfileSet, type ParseStackerfileOptions, type ParsedText } from './text.js'
export { layerDependencies, parseSource, type SourceRef } from './source.js'
export { hostGoArch, hostGoOs, layerDefinition, renderRunScript } from './layer.js'
export { splitShellWords } from './shlex.js'
export { DEFAULT_STACKERFILE_PATTERN, findStackerfiles } from './find.js'
export {
  LAYER_DIRECTIVES,
  OCI_REF_RE,
  parseStackerfileText,
  type ParsedStackerfile,
  type ParseOptions,
} from './parse.js'
// The core types this package's API takes and throws, so a user needs no second import.
export { isStackerError, StackerError } from '@stacker/core'
export type { Digest, LogFields, Logger, LogLevel, StackerErrorCode, StackerErrorDetail } from '@stacker/core'
