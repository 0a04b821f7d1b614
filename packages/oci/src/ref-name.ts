import { StackerError } from '@stacker/core'

const COMPONENT = '[A-Za-z0-9]+(([-._:@+]|--)[A-Za-z0-9]+)*'
/** umoci's rule for `org.opencontainers.image.ref.name` values. */
export const REF_NAME_RE: RegExp = new RegExp(`^(${COMPONENT})(/(${COMPONENT}))*$`)

/** Whether `name` may be a tag in a layout (REF_NAME_RE). */
export function isValidRefName(name: string): boolean {
  return REF_NAME_RE.test(name)
}

/** Throws OCI_LAYOUT with umoci's text when `name` can't be a tag in a layout. */
export function validateRefName(name: string): void {
  if (!isValidRefName(name))
    throw new StackerError('OCI_LAYOUT', `refusing to update invalid reference ${goQuote(name)}`)
}

const SIMPLE_ESCAPES: Readonly<Record<string, string>> = {
  '\x07': '\\a',
  '\b': '\\b',
  '\f': '\\f',
  '\n': '\\n',
  '\r': '\\r',
  '\t': '\\t',
  '\v': '\\v',
  '\\': '\\\\',
  '"': '\\"',
}

/** Go's `%q` for a string, so messages match upstream's byte for byte. */
export function goQuote(s: string): string {
  let out = '"'
  for (const ch of s) {
    const esc = SIMPLE_ESCAPES[ch]
    if (esc) {
      out += esc
      continue
    }
    const cp = ch.codePointAt(0)!
    if (cp < 0x20 || cp === 0x7f) out += `\\x${cp.toString(16).padStart(2, '0')}`
    else if (cp >= 0x80 && cp < 0xa0) out += `\\u${cp.toString(16).padStart(4, '0')}`
    else if (cp >= 0xd800 && cp <= 0xdfff) out += '\\ufffd'
    else out += ch
  }
  return `${out}"`
}
