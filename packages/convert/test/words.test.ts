import { describe, expect, it } from 'vitest'
import { type ArgRef, expandWord, type Lookup, splitWords, textOf, WordError } from '../src/words.js'

const env: Record<string, string> = { A: 'a', EMPTY: '', PATHS: '/usr/bin:/bin', FILE: 'archive.tar.gz' }
const VERSION: ArgRef = { arg: 'VERSION', def: '1.0' }
const lookup: Lookup = (n) => (n === 'VERSION' ? [VERSION] : n in env ? [env[n] as string] : undefined)
const text = (w: string, escapeChar = '\\') => textOf(expandWord(w, lookup, escapeChar).value)

describe('expandWord follows Docker', () => {
  it.each([
    ['plain', 'plain'],
    ['$A-$A', 'a-a'],
    ['${A}b', 'ab'],
    ['"$A b"', 'a b'],
    ["'$A b'", '$A b'],
    ['a\\ b', 'a b'],
    ['\\$A', '$A'],
    ['"\\$A \\" \\x"', '$A " \\x'],
    ['$', '$'],
    ['$1x', 'x'],
    ['${UNSET:-dflt}', 'dflt'],
    ['${EMPTY:-dflt}', 'dflt'],
    ['${EMPTY-dflt}', ''],
    ['${A:+alt}', 'alt'],
    ['${UNSET:+alt}', ''],
    ['${FILE%.*}', 'archive.tar'],
    ['${FILE%%.*}', 'archive'],
    ['${FILE#*.}', 'tar.gz'],
    ['${FILE##*.}', 'gz'],
    ['${PATHS/bin/sbin}', '/usr/sbin:/bin'],
    ['${PATHS//bin/sbin}', '/usr/sbin:/sbin'],
  ])('%s -> %s', (w, want) => {
    expect(text(w)).toBe(want)
  })

  it('uses the escape directive character', () => {
    expect(text('a`$A`"', '`')).toBe('a$A"')
    expect(text('C:\\dir', '`')).toBe('C:\\dir')
  })

  it('keeps build arguments as references, and reports what it could not keep', () => {
    const r = expandWord('v$VERSION-${VERSION}', lookup)
    expect(r.value).toEqual(['v', VERSION, '-', VERSION])
    expect(r.fixedArgs).toEqual([])
    const m = expandWord('${VERSION%.*}', lookup)
    expect(m.value).toEqual(['1'])
    expect(m.fixedArgs).toEqual(['VERSION'])
    expect(expandWord('$NOPE${A}', lookup).undefinedVars).toEqual(['NOPE'])
  })

  it.each([
    ['"open', 'unexpected end of statement while looking for matching double-quote'],
    ["'open", 'unexpected end of statement while looking for matching single-quote'],
    ['${A', "syntax error: missing '}'"],
    ['${}', 'syntax error: bad substitution'],
    ['${A:?must be set}x', undefined],
    ['${UNSET:?must be set}', 'UNSET: must be set'],
    ['${A^^}', 'unsupported modifier (^) in substitution'],
  ])('%s', (w, message) => {
    if (message === undefined) {
      expect(() => expandWord(w, lookup)).not.toThrow()
      return
    }
    expect(() => expandWord(w, lookup)).toThrow(new WordError(message))
  })
})

describe('splitWords', () => {
  it('splits at unquoted whitespace and keeps quotes for expansion', () => {
    expect(splitWords(`A B="x y" C='1 2' D=a\\ b`)).toEqual(['A', 'B="x y"', "C='1 2'", 'D=a\\ b'])
  })
})
