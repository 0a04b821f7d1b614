import { StackerError } from '@stacker/core'
import { DockerfileParser, type Instruction } from 'dockerfile-ast'
import { ValidationCode, validate } from 'dockerfile-utils'
import { splitWords } from './words.js'

/** One instruction, with what every converter step needs from the parser. */
export interface Instr {
  readonly keyword: string
  /** 1-based line of the instruction's keyword. */
  readonly line: number
  readonly node: Instruction
}

export interface ParsedDockerfile {
  readonly escape: string
  readonly instructions: readonly Instr[]
}

/** Quote errors in words are found by the conversion's own expansion, which follows Docker's lexer;
 *  the validator's version of this check rejects valid words such as '"'. */
const OWN_CHECKS = new Set<number>([
  ValidationCode.SYNTAX_MISSING_SINGLE_QUOTE,
  ValidationCode.SYNTAX_MISSING_DOUBLE_QUOTE,
])

/** Docker's diagnostic levels as the validator numbers them (LSP's DiagnosticSeverity.Error). */
const SEVERITY_ERROR = 1

/**
 * Parses a Dockerfile with dockerfile-ast and rejects what Docker's builder rejects, as
 * dockerfile-utils' validator reports it: the first error becomes `<file>:<line>: <message>`.
 * The validator's style warnings (casing, deprecated MAINTAINER, ...) are not conversion problems.
 */
export function parseDockerfile(text: string, file: string): ParsedDockerfile {
  const errors = validate(text)
    .filter((d) => d.severity === SEVERITY_ERROR && !OWN_CHECKS.has(d.code as number))
    .sort((a, b) => a.range.start.line - b.range.start.line || a.range.start.character - b.range.start.character)
  const first = errors[0]
  if (first)
    throw dockerfileError(
      file,
      first.range.start.line + 1,
      typeof first.message === 'string' ? first.message : first.message.value,
    )
  const df = DockerfileParser.parse(text)
  const instructions = df.getInstructions().map((node) => ({
    keyword: node.getKeyword().toUpperCase(),
    line: node.getRange().start.line + 1,
    node,
  }))
  return { escape: df.getEscapeCharacter(), instructions }
}

/** The error for a problem in the Dockerfile: `<file>:<line>: <message>`, code DOCKERFILE. */
export function dockerfileError(file: string, line: number, message: string): StackerError {
  return new StackerError('DOCKERFILE', `${file}:${line}: ${message}`)
}

/**
 * The instruction's arguments as Docker's exec (JSON) form, or undefined for the shell form: Docker
 * takes the JSON form when the arguments parse as a JSON array of strings, and the shell form
 * otherwise (so `['a', 'b']` is a shell command).
 */
export function execForm(instr: Instr): string[] | undefined {
  const content = instr.node.getArgumentsContent()
  if (content === null || !content.trimStart().startsWith('[')) return undefined
  let v: unknown
  try {
    v = JSON.parse(content)
  } catch {
    return undefined
  }
  return Array.isArray(v) && v.every((x) => typeof x === 'string') ? (v as string[]) : undefined
}

/** The arguments as one text, line continuations and comment lines removed (flags excluded). */
export function argumentText(instr: Instr): string {
  return instr.node.getArgumentsContent() ?? ''
}

/** The `--name=value` flags of the instruction, in order. */
export function flagsOf(instr: Instr): Array<{ name: string; value: string | null }> {
  const node = instr.node as Instruction & { getFlags?: () => Array<{ getName(): string; getValue(): string | null }> }
  return (node.getFlags?.() ?? []).map((f) => ({ name: f.getName(), value: f.getValue() }))
}

/** The whitespace-separated argument words as written (quotes and escapes kept). */
export function argumentWords(instr: Instr): string[] {
  return instr.node.getArguments().map((a) => a.getValue())
}

/**
 * The `name=value` pairs of ENV or LABEL (or ARG), each still to be expanded, as Docker's parser cuts
 * them: `NAME value...` (no `=` in the first word) is one pair whose value is the rest of the line;
 * otherwise every word is a pair. Throws the message Docker gives for a word without `=`.
 */
export function pairs(instr: Instr, escapeChar: string): Array<{ name: string; raw: string }> {
  const text = argumentText(instr).trim()
  const words = splitWords(text, escapeChar)
  const first = words[0]
  if (first === undefined) return []
  if (!first.includes('=')) {
    const m = /^(\S+)\s+([\s\S]*)$/.exec(text)
    if (!m) throw new Error(`${instr.keyword} must have two arguments`)
    return [{ name: m[1] as string, raw: m[2] as string }]
  }
  return words.map((w) => {
    const eq = w.indexOf('=')
    if (eq < 0) throw new Error(`Syntax error - can't find = in ${JSON.stringify(w)}. Must be of the form: name=value`)
    return { name: w.slice(0, eq), raw: w.slice(eq + 1) }
  })
}

/** Whether the instruction uses here-documents. */
export function hasHeredocs(instr: Instr): boolean {
  const node = instr.node as Instruction & { getHeredocs?: () => unknown[] }
  return (node.getHeredocs?.() ?? []).length > 0
}
