import { StackerError } from '@stacker/core'

/** A host path mounted into the container. Always a recursive bind; read-write unless `readonly`. */
export interface BindMount {
  source: string
  dest: string
  readonly?: boolean
}

/** Parses one `binds` entry: `"/src"`, `"/src -> /dest"` or `{source, dest}` (dest defaults to source).
 *  The stackerfile package parses binds with source positions; this is for callers that hold raw
 *  values. Messages are upstream's. */
export function parseBind(spec: string | { source?: unknown; dest?: unknown }): BindMount {
  if (typeof spec === 'string') {
    const parts = spec.split(/\s+/).filter((p) => p !== '')
    if (parts.length === 1) return { source: parts[0]!, dest: parts[0]! }
    if (parts.length === 3 && parts[1] === '->') return { source: parts[0]!, dest: parts[2]! }
    throw new StackerError('STACKERFILE', `invalid Bind: ${spec}`)
  }
  const source = typeof spec.source === 'string' ? spec.source : ''
  const dest = typeof spec.dest === 'string' ? spec.dest : ''
  if (source === '') {
    throw new StackerError(
      'STACKERFILE',
      `unexpected 'bind': missing required field 'source': &types.bindType{Source:${JSON.stringify(source)}, Dest:${JSON.stringify(dest)}}`,
    )
  }
  return { source, dest: dest === '' ? source : dest }
}
