import { readFile } from 'node:fs/promises'
import { type Logger, silentLogger, type SourcePos, StackerError } from '@stacker/core'
import { isMap, isScalar } from 'yaml'
import { goQuote } from './go-format.js'
import { lineCol, parseYaml } from './yaml-doc.js'
import { goIoError, scalarString } from './util.js'

/** The storage directories, as the CLI resolved them. */
export interface Dirs {
  /** `--roots-dir`: STACKER_ROOTFS_DIR. */
  rootsDir: string
  /** `--stacker-dir`: STACKER_STACKER_DIR. */
  stackerDir: string
  /** `--oci-dir`: STACKER_OCI_DIR. */
  ociDir: string
  /** `--work-dir`: STACKER_WORK_DIR. */
  workDir: string
}

/** Options of buildSubstitutions: the CLI's substitution flags. */
export interface BuildSubstitutionsOptions {
  /** `--substitute` values, `KEY=VALUE`, in command-line order. */
  substitute: readonly string[]
  /** `--substitute-file`: a YAML map of scalars. */
  substituteFile?: string
  /** Adds the STACKER_*_DIR entries when given. */
  dirs?: Dirs
}

/**
 * The ordered substitution list upstream builds: `--substitute` values in CLI order, then the
 * `--substitute-file` entries whose keys were not given on the CLI (file order), then
 * STACKER_ROOTFS_DIR, STACKER_STACKER_DIR, STACKER_OCI_DIR and STACKER_WORK_DIR.
 * Reads the substitute file; throws SUBSTITUTION when it can't be read or isn't a map of scalars.
 */
export async function buildSubstitutions(opts: BuildSubstitutionsOptions): Promise<string[]> {
  const out = [...opts.substitute]
  if (opts.substituteFile !== undefined && opts.substituteFile !== '') {
    const file = opts.substituteFile
    let raw: string
    try {
      raw = await readFile(file, 'utf8')
    } catch (e) {
      throw new StackerError(
        'SUBSTITUTION',
        `unable to read substitute-file:${file}, err:${goIoError(e, 'open', file)}`,
        {
          cause: e,
        },
      )
    }
    const given = new Set(out.map((s) => keyOf(s)))
    const fromFile = parseSubstituteFile(raw, file)
    for (const [k, v] of fromFile) if (!given.has(k)) out.push(`${k}=${v}`)
  }
  if (opts.dirs)
    out.push(
      `STACKER_ROOTFS_DIR=${opts.dirs.rootsDir}`,
      `STACKER_STACKER_DIR=${opts.dirs.stackerDir}`,
      `STACKER_OCI_DIR=${opts.dirs.ociDir}`,
      `STACKER_WORK_DIR=${opts.dirs.workDir}`,
    )
  return out
}

function keyOf(sub: string): string {
  const i = sub.indexOf('=')
  return i < 0 ? sub : sub.slice(0, i)
}

function parseSubstituteFile(raw: string, file: string): Map<string, string> {
  const fail = (msg: string, offset: number): never => {
    const { line, col } = lineCol(raw, offset)
    throw new StackerError('SUBSTITUTION', `unable to unmarshal substitute-file:${file}, err:${msg}`, {
      pos: { file, line, col },
    })
  }
  const { doc, error } = parseYaml(raw)
  if (error) fail(error.message, error.offset)
  const out = new Map<string, string>()
  const root = doc.contents
  if (root === null || (isScalar(root) && root.value === null)) return out
  if (!isMap(root)) return fail('the substitute file must be a map of KEY: value', root.range?.[0] ?? 0)
  for (const pair of root.items) {
    const key = pair.key
    const value = pair.value
    if (!isScalar(key)) return fail('keys must be scalars', rangeStart(key))
    if (value !== null && !isScalar(value))
      return fail(`value of ${scalarString(key)} must be a scalar`, rangeStart(value))
    out.set(scalarString(key), value === null ? '' : scalarString(value))
  }
  return out
}

function rangeStart(n: unknown): number {
  const r = (n as { range?: [number, number, number] } | null)?.range
  return r ? r[0] : 0
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&')
}

/**
 * Replaces `${{KEY}}` and `${{KEY:default}}` in `text`, substitution by substitution in list order
 * (each entry is `KEY=VALUE`, split on the first `=`), then fills the remaining placeholders with
 * their defaults. Before each key it looks for the unsupported forms `$KEY`, `${KEY}` and
 * `${KEY:...}`; each hit is logged at error level and the whole call fails afterwards.
 * Keys are regex-escaped and values inserted literally. `opts.file` puts positions on errors.
 * Throws SUBSTITUTION.
 */
export function substitute(
  text: string,
  subs: readonly string[],
  logger: Logger = silentLogger,
  opts: { file?: string } = {},
): string {
  const posOf = (needle: string, fallback: number): SourcePos | undefined => {
    if (opts.file === undefined) return undefined
    const at = text.indexOf(needle)
    const { line, col } = lineCol(text, at >= 0 ? at : Math.min(fallback, text.length))
    return { file: opts.file, line, col }
  }
  const errOpts = (pos: SourcePos | undefined) => (pos ? { pos } : {})

  let content = text
  const unsupported: Array<{ key: string; found: string; msg: string; pos: SourcePos | undefined }> = []
  const usage: number[] = []
  for (const sub of subs) {
    const eq = sub.indexOf('=')
    if (eq < 0) throw new StackerError('SUBSTITUTION', `invalid substition ${sub}`)
    const key = sub.slice(0, eq)
    const to = sub.slice(eq + 1)

    for (const placeholder of [`$${key}`, `\${${key}}`]) {
      const at = content.indexOf(placeholder)
      if (at >= 0) {
        unsupported.push({
          key,
          found: placeholder,
          msg: unsupportedMessage(sub, placeholder, `"\${{${key}}}"`),
          pos: posOf(placeholder, at),
        })
      }
    }
    const bad = new RegExp(`\\$\\{${escapeRegExp(key)}(:[^}]*)?\\}`, 'g')
    for (const m of content.matchAll(bad)) {
      unsupported.push({
        key,
        found: m[0],
        msg: unsupportedMessage(sub, m[0], `"\${{${m[0].slice(2)}}"`),
        pos: posOf(m[0], m.index ?? 0),
      })
    }

    let used = 0
    const re = new RegExp(`\\$\\{\\{${escapeRegExp(key)}(:[^}]*)?\\}\\}`, 'g')
    content = content.replace(re, () => {
      used++
      return to
    })
    usage.push(used)
  }
  usage.forEach((n, i) => {
    const q = goQuote(subs[i]!)
    logger.debug(n > 0 ? `substitution: ${q} was used ${n} times` : `substitution: ${q} was NOT used`)
  })

  if (unsupported.length > 0) {
    for (const u of unsupported) logger.error(u.msg)
    const found = [...new Set(unsupported.map((u) => u.found))]
    throw new StackerError(
      'SUBSTITUTION',
      `${unsupported.length} instances of unsupported placeholders found: ${found.join(', ')} (write \${{NAME}} to use a substitution)`,
      {
        ...errOpts(unsupported[0]!.pos),
        detail: { reason: 'unsupported-placeholder', variables: [...new Set(unsupported.map((u) => u.key))] },
      },
    )
  }

  const leftover = /\$\{\{[^}]*\}\}/
  for (let m = leftover.exec(content); m !== null; m = leftover.exec(content)) {
    const variable = m[0].slice(3, -2)
    const colon = variable.indexOf(':')
    if (colon < 0) {
      throw new StackerError('SUBSTITUTION', `no value for substitution ${variable}`, {
        ...errOpts(posOf(m[0], m.index)),
        detail: { reason: 'no-value', variables: [variable] },
      })
    }
    content = content.slice(0, m.index) + variable.slice(colon + 1) + content.slice(m.index + m[0].length)
  }
  return content
}

function unsupportedMessage(sub: string, found: string, replacement: string): string {
  // Upstream ends this message with "\n"; a Logger line has no trailing newline.
  return `${goQuote(sub)} was provided as a substitution and unsupported placeholder ${goQuote(found)} was found. Replace ${goQuote(found)} with ${replacement} to use the substitution.`
}
