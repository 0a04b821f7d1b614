import { describe, expect, it } from 'vitest'
import { goQuote, isValidRefName, validateRefName } from '../src/index.js'

describe('ref names', () => {
  it.each(['test', 'test-squashfs', 'busybox:0.1.1', 'a.b_c@d+e', 'a--b', 'org/repo/name', 'layer4_test1', 'A9'])(
    'accepts %s',
    (n) => {
      expect(isValidRefName(n)).toBe(true)
      expect(() => validateRefName(n)).not.toThrow()
    },
  )

  it.each(['', 'a b', '-a', 'a-', 'a//b', '/a', 'a/', 'a..b', 'a---b', 'é', 'a\nb'])('rejects %j', (n) => {
    expect(isValidRefName(n)).toBe(false)
    expect(() => validateRefName(n)).toThrow(
      expect.objectContaining({ code: 'OCI_LAYOUT', message: `refusing to update invalid reference ${goQuote(n)}` }),
    )
  })

  it('quotes like Go %q', () => {
    expect(goQuote('a b')).toBe('"a b"')
    expect(goQuote('/tmp/x"y\\z')).toBe('"/tmp/x\\"y\\\\z"')
    expect(goQuote('a\nb\tc\x07\x01\x7f')).toBe('"a\\nb\\tc\\a\\x01\\x7f"')
    expect(goQuote('héllo')).toBe('"héllo"')
  })
})
