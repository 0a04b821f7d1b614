import { DEFAULT_PATH, PLATFORM_ARGS, type Stage } from './model.js'
import type { ConvertState } from './state.js'
import { argsOf, expandWord, type Lookup, type Template, textOf, WordError } from './words.js'

/** How a word of `stage` (or of a FROM line, without a stage) finds variables: ENV, then ARG;
 *  FROM lines see the global ARGs and Docker's platform arguments. */
function lookup(st: ConvertState, stage: Stage | undefined): Lookup {
  return (name) => {
    if (stage) {
      const env = stage.env.findLast(([k]) => k === name)
      if (env) return env[1]
      const a = stage.args.get(name)
      return a ? [a] : undefined
    }
    const a = st.globalArgs.get(name)
    if (a) return [a]
    // FROM lines see Docker's platform arguments without an ARG.
    return PLATFORM_ARGS.includes(name) ? [platformArg(st, name, undefined)] : undefined
  }
}

/** Expands a word as Docker does for the instruction, warning about what the result cannot say. */
export function expand(st: ConvertState, word: string, stage: Stage | undefined, what: string): Template {
  let r: ReturnType<typeof expandWord>
  try {
    r = expandWord(word, lookup(st, stage), st.escape)
  } catch (e) {
    if (e instanceof WordError) st.fail(`failed to process ${JSON.stringify(word)}: ${e.message}`)
    throw e
  }
  for (const v of r.undefinedVars) {
    if (v === 'PATH' && stage) {
      st.warn(
        `${what}: $PATH is the base image's in Docker, which convert cannot see: the default PATH (${DEFAULT_PATH}) is used`,
      )
    } else {
      st.warn(
        `${what}: ${v} is not set by this Dockerfile and is taken as empty (Docker would take it from the base image's environment, if set there)`,
      )
    }
  }
  const fixed = r.fixedArgs.filter((a) => !PLATFORM_ARGS.includes(a))
  if (fixed.length)
    st.warn(
      `${what}: ${fixed.join(', ')} used with a modifier or pattern is replaced by its default; --substitute ${fixed[0]}=... will not change this value`,
    )
  if (r.undefinedVars.includes('PATH') && stage) {
    // The expansion above took PATH as empty; redo it with the default, as stacker's builds start.
    const withPath: Lookup = (n) => (n === 'PATH' ? [DEFAULT_PATH] : lookup(st, stage)(n))
    return expandWord(word, withPath, st.escape).value
  }
  return r.value
}

/** Expands a word that must be known now (a path to look at, an id): build arguments take their
 *  defaults, with a warning. */
export function expandText(st: ConvertState, word: string, stage: Stage | undefined, what: string): string {
  const t = expand(st, word, stage, what)
  const args = argsOf(t).filter((a) => !PLATFORM_ARGS.includes(a))
  if (args.length)
    st.warn(
      `${what}: ${args.join(', ')} is replaced by its default here; --substitute ${args[0]}=... will not change it`,
    )
  return textOf(t)
}

/** The value of one of Docker's platform arguments in `stage` (the conversion's platform without). */
export function platformArg(st: ConvertState, name: string, stage: Stage | undefined): string {
  const p = stage?.platform ?? st.platform
  const host = st.platform
  switch (name) {
    case 'TARGETPLATFORM':
      return `${p.os}/${p.arch}`
    case 'TARGETOS':
      return p.os
    case 'TARGETARCH':
      return p.arch
    case 'BUILDPLATFORM':
      return `${host.os}/${host.arch}`
    case 'BUILDOS':
      return host.os
    case 'BUILDARCH':
      return host.arch
    default:
      return ''
  }
}
