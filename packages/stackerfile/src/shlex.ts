import { StackerError } from '@stacker/core'

const WHITESPACE = new Set([' ', '\t', '\n', '\r'])
// Inside double quotes a POSIX shell gives a backslash meaning only before these.
const DQUOTE_ESCAPABLE = new Set(['$', '`', '"', '\\', '\n'])

/**
 * Splits a string into words the way a POSIX shell would, without expansions: whitespace separates
 * words, single quotes keep everything literally, double quotes keep everything but `\$ \` \" \\` and
 * line continuations, a backslash outside quotes escapes the next character (backslash-newline
 * disappears). `''` is an empty word. An unterminated quote or a trailing backslash throws a
 * StackerError (STACKERFILE, no position: callers add it).
 */
export function splitShellWords(s: string): string[] {
  const words: string[] = []
  let word = ''
  let inWord = false
  let i = 0
  while (i < s.length) {
    const ch = s[i]!
    if (WHITESPACE.has(ch)) {
      if (inWord) words.push(word)
      word = ''
      inWord = false
      i++
      continue
    }
    if (ch === '\\') {
      if (i + 1 >= s.length) throw new StackerError('STACKERFILE', 'No escaped character')
      const next = s[i + 1]!
      if (next !== '\n') {
        word += next
        inWord = true
      }
      i += 2
      continue
    }
    if (ch === "'") {
      const end = s.indexOf("'", i + 1)
      if (end < 0) throw new StackerError('STACKERFILE', 'No closing quotation')
      word += s.slice(i + 1, end)
      inWord = true
      i = end + 1
      continue
    }
    if (ch === '"') {
      i++
      let closed = false
      while (i < s.length) {
        const c = s[i]!
        if (c === '"') {
          closed = true
          i++
          break
        }
        if (c === '\\' && i + 1 < s.length && DQUOTE_ESCAPABLE.has(s[i + 1]!)) {
          if (s[i + 1] !== '\n') word += s[i + 1]
          i += 2
          continue
        }
        word += c
        i++
      }
      if (!closed) throw new StackerError('STACKERFILE', 'No closing quotation')
      inWord = true
      continue
    }
    word += ch
    inWord = true
    i++
  }
  if (inWord) words.push(word)
  return words
}
