/** Stable error codes. Scripts may match on them; messages may gain context over time. */
export const ERROR_CODES = [
  'USAGE',
  'STACKERFILE',
  'DOCKERFILE',
  'SUBSTITUTION',
  'DEPENDENCY',
  'OCI_LAYOUT',
  'DIGEST',
  'NOT_FOUND',
  'LOCK',
  'RUN_FAILED',
  'IMPORT',
  'HASH',
  'CACHE',
  'REGISTRY',
  'AUTH',
  'MOUNT',
  'EXTRACT',
  'LAYER',
  'TOOL_MISSING',
  'UNSUPPORTED',
  'NOT_IMPLEMENTED',
  'INTERRUPTED',
  'INTERNAL',
] as const
export type StackerErrorCode = (typeof ERROR_CODES)[number]

/** A position in a source file, 1-based line and column. */
export interface SourcePos {
  readonly file: string
  readonly line: number
  readonly col: number
}

export function formatPos(pos: SourcePos): string {
  return `${pos.file}:${pos.line}:${pos.col}`
}

export interface StackerErrorOptions {
  hint?: string | undefined
  cause?: unknown
  pos?: SourcePos | undefined
}

/** The one error class of the project. `message` is upstream's text where upstream has one;
 *  `pos` says where in a stacker.yaml the problem is. */
export class StackerError extends Error {
  readonly code: StackerErrorCode
  readonly hint: string | undefined
  readonly pos: SourcePos | undefined
  constructor(code: StackerErrorCode, message: string, opts: StackerErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'StackerError'
    this.code = code
    this.hint = opts.hint
    this.pos = opts.pos
  }

  /** The one-line form shown to users: `<message> (<file:line:col>)`. */
  describe(): string {
    return this.pos ? `${this.message} (${formatPos(this.pos)})` : this.message
  }
}

export function isStackerError(e: unknown): e is StackerError {
  return e instanceof StackerError
}

/** Wraps an unknown thrown value: StackerErrors pass through, others become INTERNAL with a cause. */
export function toStackerError(e: unknown, code: StackerErrorCode = 'INTERNAL'): StackerError {
  if (e instanceof StackerError) return e
  const msg = e instanceof Error ? e.message : String(e)
  return new StackerError(code, msg, { cause: e })
}
