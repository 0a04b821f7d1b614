import { readFileSync } from 'node:fs'
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
  /** `http://127.0.0.1:PORT`. */
  url: string
  /** Storage and config live here; removed by stop(). */
  dir: string
  /** Kills the registry and removes its storage. Idempotent. */
  stop(): Promise<void>
}

/**
 * Starts Debian's `docker-registry serve` (distribution 2.8) on 127.0.0.1 at a free port, plain HTTP,
 * with its own temp storage; resolves once `/v2/` answers. `htpasswd` is the content of an htpasswd
 * file (bcrypt lines, e.g. TEST_USER.htpasswd) and turns on basic auth.
 */
export async function startRegistry(opts: { htpasswd?: string } = {}): Promise<Registry> {
  const dir = await mkdtemp(join(tmpdir(), 'stacker-e2e-registry-'))
  try {
    return await startIn(dir, opts)
  } catch (e) {
    await rm(dir, { recursive: true, force: true })
    throw e
  }
}

async function startIn(dir: string, opts: { htpasswd?: string }): Promise<Registry> {
  // A port can be taken between freePort() and the bind; try a few.
  for (let attempt = 0; ; attempt++) {
    const port = await freePort()
    const host = `127.0.0.1:${port}`
    const auth =
      opts.htpasswd === undefined ? '' : `auth:\n  htpasswd:\n    realm: e2e\n    path: ${join(dir, 'htpasswd')}\n`
    if (opts.htpasswd !== undefined) await writeFile(join(dir, 'htpasswd'), `${opts.htpasswd.trim()}\n`)
    await writeFile(
      join(dir, 'config.yml'),
      `version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\n  delete:\n    enabled: true\nhttp:\n  addr: ${host}\n  secret: e2e\n${auth}`,
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
      await waitUntil(() => answers(`http://${host}/v2/`), {
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
      url: `http://${host}`,
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

function safeRead(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}

/**
 * Copies `<layout>:<tag>` to `docker://<host>/<repo>` (`:<tag>` appended when repo has no tag) with
 * skopeo over plain HTTP. Throws with skopeo's output on failure.
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
