/**
 * Docker's word processing (quotes, escapes and `$VAR` / `${VAR...}` expansion, as its builder does
 * for ENV, ARG, LABEL, FROM, COPY, ADD, WORKDIR, USER, VOLUME, EXPOSE and STOPSIGNAL), done
 * symbolically: a build argument the user may override at build time stays a reference, so the
 * result is a template that becomes a `${{NAME}}` placeholder in stacker.yaml.
 */

/** A reference to a build argument (ARG) whose value is chosen at build time. `def` is the default
 *  of the declaration in scope, already reduced to text (undefined: declared without one). */
export interface ArgRef {
  readonly arg: string
  readonly def: string | undefined
}

export type Part = string | ArgRef

/** Text with build-argument references in it. Adjacent strings are always merged. */
export type Template = readonly Part[]

/** What a variable resolves to during expansion: undefined when the Dockerfile does not define it. */
export type Lookup = (name: string) => Template | undefined

export interface Expanded {
  readonly value: Template
  /** Variables referenced but not defined by the Dockerfile (Docker takes them from the base image's
   *  environment, or as empty). */
  readonly undefinedVars: readonly string[]
  /** Build arguments that a modifier (`${A:-x}`, `${A#p}`, ...) needed as text: their defaults were
   *  used, so overriding them at build time does not change this value. */
  readonly fixedArgs: readonly string[]
}

/** A malformed word: Docker's builder rejects the instruction with this message. */
export class WordError extends Error {
  override readonly name = 'WordError'
}

/** Appends parts to a template, merging adjacent strings. */
export function concat(...parts: ReadonlyArray<Part | Template>): Template {
  const out: Part[] = []
  const push = (p: Part) => {
    if (typeof p === 'string') {
      if (p === '') return
      const last = out[out.length - 1]
      if (typeof last === 'string') out[out.length - 1] = last + p
      else out.push(p)
    } else out.push(p)
  }
  for (const p of parts) {
    if (Array.isArray(p)) for (const q of p as Template) push(q)
    else push(p as Part)
  }
  return out
}

/** The template as text, with each build argument replaced by its default (empty without one). */
export function textOf(t: Template): string {
  return t.map((p) => (typeof p === 'string' ? p : (p.def ?? ''))).join('')
}

/** True when the template has no build-argument reference. */
export function isLiteral(t: Template): boolean {
  return t.every((p) => typeof p === 'string')
}

/** The build arguments a template refers to, in order of first use. */
export function argsOf(t: Template): string[] {
  const out: string[] = []
  for (const p of t) if (typeof p !== 'string' && !out.includes(p.arg)) out.push(p.arg)
  return out
}

const EOF = ''

class Scanner {
  #i = 0
  constructor(readonly text: string) {}
  peek(): string {
    return this.#i < this.text.length ? (this.text[this.#i] as string) : EOF
  }
  next(): string {
    const c = this.peek()
    if (c !== EOF) this.#i++
    return c
  }
}

/**
 * Expands one word the way Docker's builder does (its shell lexer with the escape character of the
 * Dockerfile): single quotes are literal, double quotes allow `$` expansion and escape `"`, `$` and the
 * escape character, the escape character outside quotes makes the next character literal. Quotes and
 * escapes are removed. Throws WordError for what Docker rejects (unterminated quotes, bad `${}`).
 */
export function expandWord(word: string, lookup: Lookup, escapeChar = '\\'): Expanded {
  const undefinedVars: string[] = []
  const fixedArgs: string[] = []
  const s = new Scanner(word)

  const get = (name: string): Template | undefined => {
    const v = lookup(name)
    if (v === undefined && !undefinedVars.includes(name)) undefinedVars.push(name)
    return v
  }
  const asText = (t: Template): string => {
    for (const a of argsOf(t)) if (!fixedArgs.includes(a)) fixedArgs.push(a)
    return textOf(t)
  }

  const processName = (): string => {
    let name = ''
    for (let c = s.peek(); c !== EOF; c = s.peek()) {
      if (name === '' && /[0-9]/.test(c)) {
        while (/[0-9]/.test(s.peek()) && s.peek() !== EOF) name += s.next()
        return name
      }
      if (name === '' && '@*#?-$!0'.includes(c)) return s.next()
      if (!/[\p{L}\p{N}_]/u.test(c)) break
      name += s.next()
    }
    return name
  }

  // Reads up to `stop` (consumed); `raw` keeps escape characters, as Docker does in patterns.
  const stopOn = (stop: string, raw: boolean): Template => {
    let out: Template = []
    for (;;) {
      const c = s.peek()
      if (c === EOF) throw new WordError(`unexpected end of statement while looking for matching ${stop}`)
      if (c === stop) {
        s.next()
        return out
      }
      if (c === '$') out = concat(out, dollar())
      else if (c === "'") out = concat(out, singleQuote())
      else if (c === '"') out = concat(out, doubleQuote())
      else {
        s.next()
        if (c === escapeChar) {
          if (raw) out = concat(out, c)
          const n = s.next()
          if (n === EOF) continue
          out = concat(out, n)
        } else out = concat(out, c)
      }
    }
  }

  const singleQuote = (): Template => {
    s.next()
    let out = ''
    for (;;) {
      const c = s.next()
      if (c === EOF) throw new WordError('unexpected end of statement while looking for matching single-quote')
      if (c === "'") return [out]
      out += c
    }
  }

  const doubleQuote = (): Template => {
    s.next()
    let out: Template = []
    for (;;) {
      const c = s.peek()
      if (c === EOF) throw new WordError('unexpected end of statement while looking for matching double-quote')
      if (c === '"') {
        s.next()
        return out
      }
      if (c === '$') {
        out = concat(out, dollar())
        continue
      }
      s.next()
      if (c === escapeChar) {
        const n = s.peek()
        if (n === EOF) continue
        if (n === '"' || n === '$' || n === escapeChar) {
          out = concat(out, s.next())
          continue
        }
      }
      out = concat(out, c)
    }
  }

  const dollar = (): Template => {
    s.next()
    if (s.peek() !== '{') {
      const name = processName()
      if (name === '') return ['$']
      return get(name) ?? []
    }
    s.next()
    const first = s.peek()
    if (first === EOF) throw new WordError("syntax error: missing '}'")
    if (first === '{' || first === '}' || first === ':') throw new WordError('syntax error: bad substitution')
    const name = processName()
    let ch = s.next()
    let mod = ch
    let nullIsUnset = false
    if (ch === EOF) throw new WordError("syntax error: missing '}'")
    if (ch === '}') return get(name) ?? []
    if (ch === ':') {
      nullIsUnset = true
      ch = s.next()
      mod += ch
    }
    if ('+-?#%'.includes(ch) && ch !== EOF) {
      let word: Template
      try {
        word = stopOn('}', ch === '#' || ch === '%')
      } catch (e) {
        if (s.peek() === EOF) throw new WordError("syntax error: missing '}'")
        throw e
      }
      const value = get(name)
      const set = value !== undefined
      // Whether a variable is set is known here; whether it is empty is known only for text.
      const empty = () => (value === undefined ? true : asText(value) === '')
      switch (ch) {
        case '-':
          return !set || (nullIsUnset && empty()) ? word : (value ?? [])
        case '+':
          return !set || (nullIsUnset && empty()) ? [] : word
        case '?': {
          const w = textOf(word)
          if (!set) throw new WordError(`${name}: ${w || 'is not allowed to be unset'}`)
          if (nullIsUnset && empty()) throw new WordError(`${name}: ${w || 'is not allowed to be empty'}`)
          return value ?? []
        }
        default: {
          let pattern = asText(word)
          let greedy = false
          if (pattern.startsWith(ch)) {
            greedy = true
            pattern = pattern.slice(1)
          }
          const v = value === undefined ? '' : asText(value)
          return [ch === '%' ? trimSuffix(pattern, v, greedy) : trimPrefix(pattern, v, greedy)]
        }
      }
    }
    if (ch === '/' && !nullIsUnset) {
      const all = s.peek() === '/'
      if (all) s.next()
      let pattern: string
      let replacement: string
      try {
        pattern = asText(stopOn('/', true))
      } catch (e) {
        if (s.peek() === EOF) throw new WordError("syntax error: missing '/' in ${}")
        throw e
      }
      try {
        replacement = asText(stopOn('}', true))
      } catch (e) {
        if (s.peek() === EOF) throw new WordError("syntax error: missing '}'")
        throw e
      }
      const value = get(name)
      const v = value === undefined ? '' : asText(value)
      const re = patternRegex(pattern, true, false, all)
      return [all ? v.replace(re, () => replacement) : v.replace(re, () => replacement)]
    }
    throw new WordError(`unsupported modifier (${mod}) in substitution`)
  }

  let out: Template = []
  while (s.peek() !== EOF) {
    const c = s.peek()
    if (c === '$') out = concat(out, dollar())
    else if (c === "'") out = concat(out, singleQuote())
    else if (c === '"') out = concat(out, doubleQuote())
    else {
      s.next()
      if (c === escapeChar) {
        const n = s.next()
        if (n === EOF) break
        out = concat(out, n)
      } else out = concat(out, c)
    }
  }
  return { value: out, undefinedVars, fixedArgs }
}

/** Docker's shell pattern (`*`, `?`, escapes; no brackets) as a regular expression. */
function patternRegex(pattern: string, greedy: boolean, anchored: boolean, global = false): RegExp {
  let out = anchored ? '^' : ''
  const star = greedy ? '.*' : '.*?'
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string
    if (c === '*') out += star
    else if (c === '?') out += '.'
    else if (c === '\\') {
      const n = pattern[i + 1]
      if (n === '}' || n === '/') continue
      if (n !== '*' && n !== '?' && n !== '\\') throw new WordError(`invalid pattern (${pattern}) in substitution`)
      out += `\\${n}`
      i++
    } else out += c.replace(/[[\]{}.+()|^$]/, '\\$&')
  }
  return new RegExp(out, `${global ? 'g' : ''}su`)
}

function trimPrefix(pattern: string, value: string, greedy: boolean): string {
  const re = wholeMatch(pattern)
  const cuts = [...Array(value.length + 1).keys()]
  const cut = (greedy ? cuts.reverse() : cuts).find((i) => re.test(value.slice(0, i)))
  return cut === undefined ? value : value.slice(cut)
}

function trimSuffix(pattern: string, value: string, greedy: boolean): string {
  const re = wholeMatch(pattern)
  const cuts = [...Array(value.length + 1).keys()]
  const cut = (greedy ? cuts : cuts.reverse()).find((i) => re.test(value.slice(i)))
  return cut === undefined ? value : value.slice(0, cut)
}

function wholeMatch(pattern: string): RegExp {
  const re = patternRegex(pattern, true, true)
  return new RegExp(`${re.source}$`, re.flags)
}

/**
 * Splits an instruction's arguments into words at unquoted whitespace, keeping quotes and escapes
 * (as Docker's parser does for ARG and other name[=value] lists); each word is expanded afterwards.
 */
export function splitWords(text: string, escapeChar = '\\'): string[] {
  const words: string[] = []
  let word = ''
  let quote = ''
  let inWord = false
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string
    if (quote === '' && /\s/.test(c)) {
      if (inWord) words.push(word)
      word = ''
      inWord = false
      continue
    }
    inWord = true
    word += c
    if (c === escapeChar && quote !== "'" && i + 1 < text.length) {
      word += text[++i]
      continue
    }
    if (quote === '' && (c === '"' || c === "'")) quote = c
    else if (c === quote) quote = ''
  }
  if (inWord) words.push(word)
  return words
}
