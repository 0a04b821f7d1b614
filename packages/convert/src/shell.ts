import type { ArgRef, Template } from './words.js'

/** `s` as one POSIX shell word. */
export function shQuote(s: string): string {
  if (s !== '' && /^[A-Za-z0-9_./=:@%+,-]+$/.test(s)) return s
  return `'${s.replaceAll("'", `'\\''`)}'`
}

/**
 * A template as one shell word for a generated run script: text is single-quoted and each build
 * argument is read from the environment, where the layer's `build_env` puts it. The `${NAME-}` form
 * reads the same variable as `$NAME` without spelling `$NAME`, which stacker refuses to see next to a
 * substitution of that name.
 */
export function shWord(t: Template): string {
  if (t.length === 0) return "''"
  return t.map((p) => (typeof p === 'string' ? shQuote(p) : `"\${${p.arg}-}"`)).join('')
}

/** The variables and identity one step runs with, as Docker gives them to a RUN. */
export interface StepContext {
  /** ENV of the stage so far (and of the stages it is built on), in definition order. */
  readonly env: ReadonlyArray<readonly [string, Template]>
  /** Names that must not be visible: build arguments of the layer that are not in scope here. */
  readonly unset: readonly string[]
  readonly cwd: Template
  /** USER (undefined or root: the step runs as root). */
  readonly user: Template | undefined
}

/** A RUN of the Dockerfile, or a step the conversion adds (a WORKDIR's directory, an archive's
 *  extraction). */
export interface Step {
  /** A comment line naming the Dockerfile line. */
  readonly note: string
  /** The command (for the shell form: SHELL followed by the command line). */
  readonly argv: readonly string[]
  /** Instead of argv: a script with a `#!` line (a RUN that is one here-document), run as a file. */
  readonly script?: string
  readonly ctx: StepContext
  /** Creating the WORKDIR as root and handing it to the USER, rather than running as the USER. */
  readonly mkdirAs?: Template
}

/**
 * One step of a run script. Each runs in its own subshell, as each RUN is its own process in Docker:
 * a `cd` or a variable set by one does not leak into the next. Exports are one command so that every
 * value is expanded before any is assigned (a value reads build arguments, never a sibling ENV).
 */
export function renderStep(step: Step): string {
  const c = step.ctx
  const lines = [`# ${step.note}`]
  const parts: string[] = []
  if (step.mkdirAs !== undefined) {
    const dir = shWord(c.cwd)
    lines.push(
      c.user === undefined
        ? `mkdir -p ${dir}`
        : `[ -d ${dir} ] || { mkdir -p ${dir} && stacker_user_chown ${shWord(c.user)} ${dir}; }`,
    )
    return lines.join('\n')
  }
  parts.push(`cd ${shWord(c.cwd)}`)
  if (c.env.length) parts.push(`export ${c.env.map(([k, v]) => `${k}=${shWord(v)}`).join(' ')}`)
  const unset = c.unset.filter((n) => !c.env.some(([k]) => k === n))
  if (unset.length) parts.push(`unset ${unset.join(' ')}`)
  const run = (argv: string) => (c.user === undefined ? `exec ${argv}` : `stacker_user_exec ${shWord(c.user)} ${argv}`)
  if (step.script !== undefined) {
    // Docker runs such a script from a file; it is written outside the layer's directories in use
    // and removed afterwards, whatever the script's exit status.
    parts.push(
      `_script=$(mktemp)`,
      `printf '%s' ${shQuote(step.script)} > "$_script"`,
      `chmod 755 "$_script"`,
      `{ _rc=0; (${run('"$_script"')}) || _rc=$?; rm -f "$_script"; exit $_rc; }`,
    )
  } else parts.push(run(step.argv.map(shQuote).join(' ')))
  lines.push(`(${parts.join(' && ')})`)
  return lines.join('\n')
}

/** The build arguments a step's context reads from `build_env` (as they were referenced). */
export function stepArgs(step: Step): ArgRef[] {
  const out: ArgRef[] = []
  const add = (t: Template | undefined) => {
    for (const p of t ?? []) if (typeof p !== 'string' && !out.some((o) => o.arg === p.arg)) out.push(p)
  }
  for (const [, v] of step.ctx.env) add(v)
  add(step.ctx.cwd)
  add(step.ctx.user)
  return out
}

/**
 * Shell functions for USER, put at the top of a run script that needs them. Docker resolves USER
 * against the image's /etc/passwd and /etc/group (a name or a number; a number without an entry runs
 * with group 0) and runs the step with those ids. The script switches with util-linux's setpriv where
 * the image has it, else with su, which needs a named user. xtrace is off inside: the trace would be
 * the lookup, not the build.
 */
export const USER_FUNCTIONS = `stacker_user_resolve() {
  _spec=$1 _user=\${1%%:*} _group= _name= _uid= _gid=
  case $_spec in *:*) _group=\${_spec#*:} ;; esac
  if [ -r /etc/passwd ]; then
    while IFS=: read -r _n _p _i _g _rest; do
      if [ "$_n" = "$_user" ] || [ "$_i" = "$_user" ]; then _name=$_n _uid=$_i _gid=$_g; break; fi
    done < /etc/passwd
  fi
  if [ -z "$_uid" ]; then
    case $_user in
      '' | *[!0-9]*) echo "unable to find user $_user: no matching entries in passwd file" >&2; return 1 ;;
    esac
    _uid=$_user _gid=0
  fi
  if [ -n "$_group" ]; then
    _gid=
    if [ -r /etc/group ]; then
      while IFS=: read -r _n _p _i _rest; do
        if [ "$_n" = "$_group" ] || [ "$_i" = "$_group" ]; then _gid=$_i; break; fi
      done < /etc/group
    fi
    if [ -z "$_gid" ]; then
      case $_group in
        '' | *[!0-9]*) echo "unable to find group $_group: no matching entries in group file" >&2; return 1 ;;
      esac
      _gid=$_group
    fi
  fi
}
stacker_user_chown() {
  { set +x; } 2>/dev/null
  stacker_user_resolve "$1" && chown "$_uid:$_gid" "$2"
}
stacker_user_exec() {
  { set +x; } 2>/dev/null
  stacker_user_resolve "$1" || exit 1
  shift
  if setpriv --help 2>&1 | grep -q -e --reuid; then
    if [ -n "$_name" ] && [ -z "$_group" ]; then
      exec setpriv --reuid="$_uid" --regid="$_gid" --init-groups "$@"
    fi
    exec setpriv --reuid="$_uid" --regid="$_gid" --clear-groups "$@"
  fi
  if [ -n "$_name" ] && [ -z "$_group" ]; then
    exec su -p -s /bin/sh -c 'exec "$@"' "$_name" -- sh "$@"
  fi
  echo "USER $_spec: this image has no setpriv with --reuid, and su needs a user name without a group" >&2
  exit 1
}`
