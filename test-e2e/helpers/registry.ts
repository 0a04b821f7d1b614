import { readFileSync } from 'node:fs'
import https from 'node:https'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execa } from 'execa'
import { answers, freePort, stopChild, trackChild, waitUntil } from './process.js'

/** A user for registries and http servers that need auth. The htpasswd line is bcrypt, made offline. */
export const TEST_USER = {
  user: 'iam',
  password: 'careful',
  htpasswd: 'iam:$2b$05$abcdefghijklmnopqrstuud6mw05NSBuM2pSNI1/.f8wl94ifKy/e',
} as const

export interface Registry {
  /** `127.0.0.1:PORT`, for `docker://<host>/repo:tag`. */
  host: string
  /** `http://127.0.0.1:PORT` (`https://` with `tls`). */
  url: string
  /** Storage and config live here; removed by stop(). */
  dir: string
  /** Kills the registry and removes its storage. Idempotent. */
  stop(): Promise<void>
}

export interface RegistryOptions {
  /** The content of an htpasswd file (bcrypt lines, e.g. TEST_USER.htpasswd); turns on basic auth. */
  htpasswd?: string
  /** PEM files of the server's certificate and key: the registry speaks HTTPS only. */
  tls?: { cert: string; key: string }
}

/**
 * Starts Debian's `docker-registry serve` (distribution 2.8) on 127.0.0.1 at a free port, plain HTTP
 * unless `tls` is given, with its own temp storage; resolves once `/v2/` answers.
 */
export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const dir = await mkdtemp(join(tmpdir(), 'stacker-e2e-registry-'))
  try {
    return await startIn(dir, opts)
  } catch (e) {
    await rm(dir, { recursive: true, force: true })
    throw e
  }
}

async function startIn(dir: string, opts: RegistryOptions): Promise<Registry> {
  // A port can be taken between freePort() and the bind; try a few.
  for (let attempt = 0; ; attempt++) {
    const port = await freePort()
    const host = `127.0.0.1:${port}`
    const auth =
      opts.htpasswd === undefined ? '' : `auth:\n  htpasswd:\n    realm: e2e\n    path: ${join(dir, 'htpasswd')}\n`
    if (opts.htpasswd !== undefined) await writeFile(join(dir, 'htpasswd'), `${opts.htpasswd.trim()}\n`)
    const tls = opts.tls ? `  tls:\n    certificate: ${opts.tls.cert}\n    key: ${opts.tls.key}\n` : ''
    const url = `${opts.tls ? 'https' : 'http'}://${host}`
    await writeFile(
      join(dir, 'config.yml'),
      `version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\n  delete:\n    enabled: true\nhttp:\n  addr: ${host}\n  secret: e2e\n${tls}${auth}`,
    )
    const logFile = join(dir, 'registry.log')
    const child = execa('docker-registry', ['serve', join(dir, 'config.yml')], {
      stdin: 'ignore',
      stdout: { file: logFile },
      stderr: { file: logFile },
      reject: false,
    })
    const untrack = trackChild(child)
    let exited = false
    void child.then(() => {
      exited = true
    })
    try {
      await waitUntil(() => (opts.tls ? answersTls(`${url}/v2/`) : answers(`${url}/v2/`)), {
        what: `docker-registry on ${host}`,
        gaveUp: () => (exited ? `exited: ${safeRead(logFile)}` : undefined),
      })
    } catch (e) {
      await stopChild(child)
      untrack()
      if (attempt < 3 && /address already in use/.test(await readFile(logFile, 'utf8').catch(() => ''))) continue
      throw e
    }
    let stopped = false
    return {
      host,
      url,
      dir,
      async stop() {
        if (stopped) return
        stopped = true
        await stopChild(child)
        untrack()
        await rm(dir, { recursive: true, force: true })
      },
    }
  }
}

/** answers() for an HTTPS server whose certificate this process need not trust. */
function answersTls(url: string): Promise<boolean> {
  return new Promise((resolveAnswer, reject) => {
    const req = https.get(url, { rejectUnauthorized: false, timeout: 2000 }, (res) => {
      res.resume()
      res.on('end', () => resolveAnswer(true))
    })
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', reject)
  })
}

function safeRead(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}

/**
 * Copies `<layout>:<tag>` to `docker://<host>/<repo>` (`:<tag>` appended when repo has no tag) with
 * skopeo, not verifying the registry's certificate (plain HTTP works too). Throws with skopeo's output on failure.
 */
export async function seedRegistry(
  layout: string,
  tag: string,
  host: string,
  repo: string,
  opts: { creds?: { user: string; password: string } } = {},
): Promise<string> {
  const dest = `docker://${host}/${repo.includes(':') ? repo : `${repo}:${tag}`}`
  const args = [
    'copy',
    '--insecure-policy',
    '--dest-tls-verify=false',
    ...(opts.creds ? ['--dest-creds', `${opts.creds.user}:${opts.creds.password}`] : []),
    `oci:${layout}:${tag}`,
    dest,
  ]
  const r = await execa('skopeo', args, { reject: false, all: true })
  if (r.exitCode !== 0) throw new Error(`skopeo copy to ${dest} failed:\n${r.all}`)
  return dest
}
