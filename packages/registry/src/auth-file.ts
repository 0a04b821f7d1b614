import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { StackerError } from '@stacker/core'
import { DOCKER_HUB } from './ref.js'

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

async function readAuthFile(path: string): Promise<Record<string, unknown> | undefined> {
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
  const auths = (parsed as { auths?: unknown }).auths
  if (auths === undefined) return {}
  if (typeof auths !== 'object' || auths === null)
    throw new StackerError('AUTH', `reading ${path}: "auths" is not an object`)
  return auths as Record<string, unknown>
}

/** Finds the credentials for `registry/repository` in the auth files (see authFilePaths), with the
 *  longest-prefix rule of containers/image. Entries without an `auth` field (credential helpers,
 *  identity tokens) are not supported and are passed over. */
export async function lookupAuthEntry(
  registry: string,
  repository: string,
  opts: LookupAuthOptions = {},
): Promise<CredentialsEntry | undefined> {
  const wanted = candidateKeys(normalizeKey(registry), repository)
  for (const path of authFilePaths(opts)) {
    const auths = await readAuthFile(path)
    if (!auths) continue
    const byKey = new Map<string, string>()
    for (const [rawKey, value] of Object.entries(auths)) {
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

export async function lookupAuth(
  registry: string,
  repository: string,
  opts: LookupAuthOptions = {},
): Promise<Credentials | undefined> {
  return (await lookupAuthEntry(registry, repository, opts))?.credentials
}
