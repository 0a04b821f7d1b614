import { createHash } from 'node:crypto'
import { StackerError } from '@stacker/core'

const CONTENT_ID = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/

/** Content ids name directories directly, so they must be one safe path component. */
export function validateContentId(id: string): void {
  if (!CONTENT_ID.test(id) || id.includes('..')) {
    throw new StackerError('INTERNAL', `invalid content id ${JSON.stringify(id)}`, {
      hint: 'content ids are 1-128 characters of [A-Za-z0-9._+-], starting with a letter or digit, without ".."',
    })
  }
}

// Layer names are arbitrary YAML strings (OCI refs may contain '/'), so they are escaped into one
// path component; names too long for a file name are hashed, with the name kept inside the record.
const HASHED_PREFIX = '~'
const MAX_ENCODED = 200

export function encodeLayerName(name: string): string {
  if (name === '') throw new StackerError('INTERNAL', 'empty layer name')
  const enc = encodeURIComponent(name).replace(/^\./, '%2E').replace(/\*/g, '%2A')
  if (enc.length <= MAX_ENCODED) return enc
  return HASHED_PREFIX + createHash('sha256').update(name).digest('hex')
}

/** The layer name for an encoded file stem, or undefined when it was hashed (read the record). */
export function decodeLayerName(stem: string): string | undefined {
  if (stem.startsWith(HASHED_PREFIX)) return undefined
  try {
    return decodeURIComponent(stem)
  } catch {
    return undefined
  }
}
