import { type LogRecord, memoryLogger, StackerError } from '@stacker/core'
import { type ParsedStackerfile, parseStackerfileText } from '../src/index.js'

export const FILE = '/proj/stacker.yaml'

export function parse(text: string, opts: { requireHash?: boolean; records?: LogRecord[] } = {}): ParsedStackerfile {
  const logger = memoryLogger()
  try {
    return parseStackerfileText(text, {
      path: FILE,
      referenceDir: '/proj',
      requireHash: opts.requireHash ?? false,
      logger,
      os: 'linux',
      arch: 'amd64',
    })
  } finally {
    opts.records?.push(...logger.records)
  }
}

/** The StackerError parsing `text` throws, as `message @line:col`. */
export function parseError(text: string, opts: { requireHash?: boolean } = {}): string {
  try {
    parse(text, opts)
  } catch (e) {
    if (!(e instanceof StackerError)) throw e
    if (e.code !== 'STACKERFILE') throw new Error(`unexpected code ${e.code}: ${e.message}`)
    if (!e.pos) return `${e.message} @nopos`
    if (e.pos.file !== FILE) throw new Error(`unexpected file ${e.pos.file}`)
    return `${e.message} @${e.pos.line}:${e.pos.col}`
  }
  throw new Error('expected a StackerError')
}

export function layer(text: string, name: string) {
  const l = parse(text).layers.get(name)
  if (!l) throw new Error(`no layer ${name}`)
  return l
}
