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
/** One of ERROR_CODES: what kind of problem a StackerError is. */
export type StackerErrorCode = (typeof ERROR_CODES)[number]

/** A position in a source file, 1-based line and column. */
export interface SourcePos {
  readonly file: string
  readonly line: number
  readonly col: number
}

/** `file:line:col`, as editors and compilers print positions. */
export function formatPos(pos: SourcePos): string {
  return `${pos.file}:${pos.line}:${pos.col}`
}

/** What an error of a given code says about itself, for callers that act on it (no caller needs to
 *  read `message`). Codes not listed carry no detail. */
export interface StackerErrorDetails {
  /** `no-value`: `variables` have no value and no default; `unsupported-placeholder`: `$A` or `${A}`
   *  was written for the substitutions `variables`. */
  SUBSTITUTION: { reason: 'no-value' | 'unsupported-placeholder'; variables: string[] }
  /** What went wrong talking to a registry: the HTTP status when there was one, a short reason
   *  (`unreachable`, `unauthorized`, `not-found`, `digest`, `protocol`, ...) and whether trying
   *  again later may succeed. */
  REGISTRY: { status?: number; reason: string; retryable: boolean }
  /** What could not be found: layer names, `stacker://` imports, prerequisite files. */
  DEPENDENCY: { missing: string[] }
  /** The path at fault and why: `not-a-directory`, `not-a-layout`, `missing`. */
  OCI_LAYOUT: { path: string; reason: 'not-a-directory' | 'not-a-layout' | 'missing' }
}

/** The detail of an error of code `C`: see StackerErrorDetails. */
export type StackerErrorDetail<C extends StackerErrorCode> = C extends keyof StackerErrorDetails
  ? StackerErrorDetails[C]
  : undefined

/** The optional parts of a StackerError. */
export interface StackerErrorOptions<C extends StackerErrorCode = StackerErrorCode> {
  /** What the user can do about it, shown on a line of its own. */
  hint?: string | undefined
  /** The underlying error (`Error.cause`). */
  cause?: unknown
  /** Where in a stacker.yaml (or Dockerfile) the problem is. */
  pos?: SourcePos | undefined
  /** What a caller needs to act on the error, shaped by its code (see StackerErrorDetails). */
  detail?: StackerErrorDetail<C> | undefined
}

// Marks instances across copies of this package (two versions installed side by side): `instanceof`
// and isStackerError look for the mark, not for this particular class object.
const BRAND = Symbol.for('@stacker/core.StackerError')

/** The one error class of the project. `message` is upstream's text where upstream has one;
 *  `pos` says where in a stacker.yaml the problem is; `detail` (shaped by `code`) says what a caller
 *  needs to act on it. */
export class StackerError<C extends StackerErrorCode = StackerErrorCode> extends Error {
  readonly code: C
  readonly hint: string | undefined
  readonly pos: SourcePos | undefined
  readonly detail: StackerErrorDetail<C> | undefined
  constructor(code: C, message: string, opts: StackerErrorOptions<C> = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'StackerError'
    this.code = code
    this.hint = opts.hint
    this.pos = opts.pos
    this.detail = opts.detail
    Object.defineProperty(this, BRAND, { value: true })
  }

  static override [Symbol.hasInstance](v: unknown): boolean {
    return typeof v === 'object' && v !== null && (v as Record<symbol, unknown>)[BRAND] === true
  }

  /** The one-line form shown to users: `<message> (<file:line:col>)`. */
  describe(): string {
    return this.pos ? `${this.message} (${formatPos(this.pos)})` : this.message
  }
}

/** Whether `e` is a StackerError (of `code`, when given), from this copy of the package or another. */
export function isStackerError<C extends StackerErrorCode>(e: unknown, code?: C): e is StackerError<C> {
  return e instanceof StackerError && (code === undefined || e.code === code)
}

/** Wraps an unknown thrown value: StackerErrors pass through, others become INTERNAL with a cause. */
export function toStackerError(e: unknown, code: StackerErrorCode = 'INTERNAL'): StackerError {
  if (e instanceof StackerError) return e
  const msg = e instanceof Error ? e.message : String(e)
  return new StackerError(code, msg, { cause: e })
}
