import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { StackerError } from '@stacker/core'
import { DOCKER_HUB } from './ref.js'

/** A user name and password for a registry, as `--username/--password` or an auth file give them. */
export interface Credentials {
  username: string
  password: string
}

/** Credentials with where they came from, so messages can name the source and never the secret. */
export interface CredentialsEntry {
  credentials: Credentials
  /** The auth file's path. */
  source: string
  /** The key of the entry that matched, e.g. `127.0.0.1:5000/team`. */
  key: string
}

/** Where credentials are looked for: an auth file searched first, and the environment that names
 *  the others (`REGISTRY_AUTH_FILE`, `XDG_RUNTIME_DIR`, `HOME`). */
export interface LookupAuthOptions {
  /** Searched first, in place of `$REGISTRY_AUTH_FILE` / `$XDG_RUNTIME_DIR/containers/auth.json`. */
  authFile?: string
  env?: NodeJS.ProcessEnv
}

/** The files searched, in order, as containers/image does: the first with a matching entry wins. */
export function authFilePaths(opts: LookupAuthOptions = {}): string[] {
  const env = opts.env ?? process.env
  const home = env.HOME || homedir()
  const paths: string[] = []
  const primary =
    opts.authFile ??
    (env.REGISTRY_AUTH_FILE || undefined) ??
    (env.XDG_RUNTIME_DIR ? join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json') : undefined)
  if (primary) paths.push(primary)
  paths.push(join(env.XDG_CONFIG_HOME || join(home, '.config'), 'containers', 'auth.json'))
  paths.push(join(home, '.docker', 'config.json'))
  return [...new Set(paths)]
}

/** Keys as containers/image reads them: a URL-style key (legacy Docker) names only its host. */
function normalizeKey(key: string): string {
  let k = key.replace(/^https?:\/\//, '')
  if (k !== key) k = k.split('/')[0] ?? k
  if (k === 'registry-1.docker.io' || k === 'index.docker.io') return DOCKER_HUB
  return k
}

/** `host/a/b/c`, `host/a/b`, `host/a`, `host`: the longest prefix, in path components, comes first. */
function candidateKeys(registry: string, repository: string): string[] {
  const parts = repository.split('/').filter((p) => p !== '')
  const keys: string[] = []
  for (let n = parts.length; n >= 0; n--) keys.push([registry, ...parts.slice(0, n)].join('/'))
  return keys
}

function decodeAuth(path: string, key: string, auth: string): Credentials {
  const text = Buffer.from(auth, 'base64').toString('utf8')
  const colon = text.indexOf(':')
  if (colon < 0) throw new StackerError('AUTH', `invalid auth entry for ${key} in ${path}: not base64 "user:password"`)
  return { username: text.slice(0, colon), password: text.slice(colon + 1) }
}

interface AuthFile {
  auths: Record<string, unknown>
  credHelpers: Record<string, string>
  credsStore: string | undefined
}

async function readAuthFile(path: string): Promise<AuthFile | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (e) {
    if ((e as { code?: unknown }).code === 'ENOENT' || (e as { code?: unknown }).code === 'ENOTDIR') return undefined
    throw new StackerError('AUTH', `reading ${path}: ${(e as Error).message}`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    // The parser's message quotes the text around the fault, which may be a secret.
    throw new StackerError('AUTH', `reading ${path}: invalid JSON`)
  }
  if (typeof parsed !== 'object' || parsed === null) throw new StackerError('AUTH', `reading ${path}: not an object`)
  const o = parsed as { auths?: unknown; credHelpers?: unknown; credsStore?: unknown }
  const objectField = (name: string, v: unknown): Record<string, unknown> => {
    if (v === undefined) return {}
    if (typeof v !== 'object' || v === null || Array.isArray(v))
      throw new StackerError('AUTH', `reading ${path}: "${name}" is not an object`)
    return v as Record<string, unknown>
  }
  const credHelpers: Record<string, string> = {}
  for (const [k, v] of Object.entries(objectField('credHelpers', o.credHelpers)))
    if (typeof v === 'string' && v !== '') credHelpers[normalizeKey(k)] = v
  if (o.credsStore !== undefined && typeof o.credsStore !== 'string')
    throw new StackerError('AUTH', `reading ${path}: "credsStore" is not a string`)
  return {
    auths: objectField('auths', o.auths),
    credHelpers,
    credsStore: o.credsStore === '' ? undefined : o.credsStore,
  }
}

/** Helper names become part of an executable's name: anything but a plain word is refused. */
function helperCommand(path: string, name: string): string {
  if (!/^[A-Za-z0-9._-]+$/.test(name))
    throw new StackerError('AUTH', `reading ${path}: invalid credential helper name ${JSON.stringify(name)}`)
  return `docker-credential-${name}`
}

/**
 * Asks a credential helper (`docker-credential-NAME get`, the server on stdin, JSON on stdout) for
 * the credentials of `server`. Undefined when it has none. Its output is never shown: only its
 * exit status and the first line of its error output (helpers print no secrets there).
 */
async function runCredentialHelper(
  command: string,
  server: string,
  env: NodeJS.ProcessEnv,
): Promise<Credentials | undefined> {
  const r = await new Promise<{ code: number | null; stdout: string; stderr: string; error?: Error }>((resolve) => {
    const child = execFile(
      command,
      ['get'],
      { env, timeout: 60_000, maxBuffer: 1 << 20, encoding: 'utf8' },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0
        resolve({ code, stdout, stderr, ...(error && typeof error.code !== 'number' ? { error } : {}) })
      },
    )
    child.stdin?.on('error', () => {})
    child.stdin?.end(server)
  })
  if (r.error) {
    const missing = (r.error as { code?: unknown }).code === 'ENOENT'
    throw new StackerError(
      'AUTH',
      missing ? `credential helper ${command} not found in $PATH` : `credential helper ${command} failed to run`,
    )
  }
  if (r.code !== 0) {
    // The protocol's "not found" answer (docker-credential-helpers' credentials.errCredentialsNotFound).
    if (/credentials not found/i.test(r.stdout) || /credentials not found/i.test(r.stderr)) return undefined
    const line = (r.stderr.trim() || r.stdout.trim()).split('\n')[0]?.slice(0, 200) ?? ''
    throw new StackerError('AUTH', `credential helper ${command} failed (exit ${r.code})${line ? `: ${line}` : ''}`)
  }
  let out: { Username?: unknown; Secret?: unknown }
  try {
    out = JSON.parse(r.stdout) as typeof out
  } catch {
    throw new StackerError('AUTH', `credential helper ${command} sent no valid JSON`)
  }
  if (typeof out.Username !== 'string' || typeof out.Secret !== 'string')
    throw new StackerError('AUTH', `credential helper ${command} sent no Username and Secret`)
  // An identity token (OAuth2 refresh token) is not a password: not supported, passed over.
  if (out.Username === '<token>' || out.Secret === '') return undefined
  return { username: out.Username, password: out.Secret }
}

/** Finds the credentials for `registry/repository` as containers/image does: in each auth file in
 *  turn (see authFilePaths), the registry's `credHelpers` entry, then `credsStore`, then the `auths`
 *  entry with the longest path-component prefix. Helpers are run as `docker-credential-NAME get`.
 *  `auths` entries without an `auth` field (identity tokens) are passed over. */
export async function lookupAuthEntry(
  registry: string,
  repository: string,
  opts: LookupAuthOptions = {},
): Promise<CredentialsEntry | undefined> {
  const host = normalizeKey(registry)
  const wanted = candidateKeys(host, repository)
  const env = opts.env ?? process.env
  for (const path of authFilePaths(opts)) {
    const file = await readAuthFile(path)
    if (!file) continue
    const helpers: Array<[string, string]> = []
    const named = file.credHelpers[host]
    if (named !== undefined) helpers.push(['credHelpers', named])
    else if (file.credsStore !== undefined) helpers.push(['credsStore', file.credsStore])
    for (const [field, name] of helpers) {
      const command = helperCommand(path, name)
      const credentials = await runCredentialHelper(command, host, env)
      if (credentials) return { credentials, source: `${command} (${field} of ${path})`, key: host }
    }
    const byKey = new Map<string, string>()
    for (const [rawKey, value] of Object.entries(file.auths)) {
      const auth = (value as { auth?: unknown } | null)?.auth
      if (typeof auth !== 'string' || auth === '') continue
      const k = normalizeKey(rawKey)
      // An exact key beats a legacy URL key normalised onto it.
      if (!byKey.has(k) || k === rawKey) byKey.set(k, auth)
    }
    for (const key of wanted) {
      const auth = byKey.get(key)
      if (auth !== undefined) return { credentials: decodeAuth(path, key, auth), source: path, key }
    }
  }
  return undefined
}

/** The credentials for `registry`/`repository`, found as lookupAuthEntry finds them, or undefined
 *  when no auth file, helper or store has any. */
export async function lookupAuth(
  registry: string,
  repository: string,
  opts: LookupAuthOptions = {},
): Promise<Credentials | undefined> {
  return (await lookupAuthEntry(registry, repository, opts))?.credentials
}
