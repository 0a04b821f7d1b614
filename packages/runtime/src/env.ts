import { StackerError } from '@stacker/core'

/** The PATH every build container starts with (upstream's LXC config sets the same). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** Host variables passed into a build when a layer sets no `build_env_passthrough`. */
export const DEFAULT_PASSTHROUGH: readonly string[] = Object.freeze([
  'ftp_proxy',
  'http_proxy',
  'https_proxy',
  'no_proxy',
  'FTP_PROXY',
  'HTTP_PROXY',
  'HTTPS_PROXY',
  'NO_PROXY',
  'TERM',
  'SOURCE_DATE_EPOCH',
])

/** What a layer's container environment is made of (see buildEnvironment): the host's variables to
 *  pass through, the stackerfile's `build_env` and the build's SOURCE_DATE_EPOCH. */
export interface BuildEnvironmentOptions {
  readonly hostEnv: NodeJS.ProcessEnv
  /** Regexes matched against host variable names, each anchored as `^re$` (upstream's literal
   *  anchoring, so `a|b` means `^a` or `b$`). Undefined means DEFAULT_PASSTHROUGH; an empty list
   *  passes nothing through. */
  readonly passthrough?: readonly string[] | undefined
  /** `build_env` in file order. */
  readonly buildEnv: ReadonlyArray<readonly [string, string]>
  readonly layerName: string
  /** The build's SOURCE_DATE_EPOCH; it wins over a passed-through host value. */
  readonly sourceDateEpoch?: number | undefined
}

/** The complete environment of a build container, as KEY=VALUE strings.
 *
 *  Order is deterministic: PATH first, then passed-through host variables in sorted name order,
 *  SOURCE_DATE_EPOCH, then `build_env` variables not seen before in file order, then
 *  STACKER_LAYER_NAME. A later source replaces an earlier value in place (so `build_env` and
 *  passthrough may override PATH). Variables whose final value is empty are dropped, which lets
 *  `build_env: {http_proxy: ""}` hide a passed-through variable, as upstream. */
export function buildEnvironment(opts: BuildEnvironmentOptions): string[] {
  const env = new Map<string, string>([['PATH', DEFAULT_PATH]])
  const patterns = compilePassthrough(opts.passthrough ?? DEFAULT_PASSTHROUGH)
  const hostNames = Object.keys(opts.hostEnv)
    .filter((k) => opts.hostEnv[k] !== undefined)
    .sort()
  for (const name of hostNames) {
    if (patterns.some((re) => re.test(name))) env.set(name, opts.hostEnv[name] as string)
  }
  if (opts.sourceDateEpoch !== undefined) env.set('SOURCE_DATE_EPOCH', String(opts.sourceDateEpoch))
  for (const [k, v] of opts.buildEnv) env.set(k, v)
  env.set('STACKER_LAYER_NAME', opts.layerName)
  const out: string[] = []
  for (const [k, v] of env) if (v !== '') out.push(`${k}=${v}`)
  return out
}

function compilePassthrough(list: readonly string[]): RegExp[] {
  return list.map((re) => {
    try {
      return new RegExp(`^${re}$`)
    } catch (e) {
      throw new StackerError(
        'STACKERFILE',
        `invalid build_env_passthrough regex ${JSON.stringify(re)}: ${errText(e)}`,
        {
          cause: e,
          hint: 'each build_env_passthrough entry is a regular expression matched against whole variable names',
        },
      )
    }
  })
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e)
}
