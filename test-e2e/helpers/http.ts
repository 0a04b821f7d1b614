import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { execa } from 'execa'
import { answers, freePort, stopChild, trackChild, waitUntil } from './process.js'

export interface HttpServer {
  /** `http://127.0.0.1:PORT` (no trailing slash); a file `dir/a/b` is at `${url}/a/b`. */
  url: string
  port: number
  /** Kills the server. Idempotent. Files in the served dir are left alone. */
  stop(): Promise<void>
}

export interface HttpServerOptions {
  /** Basic auth for URL paths under `path` (busybox httpd.conf `path:user:password`). */
  auth?: { path: string; user: string; password: string }
}

/**
 * Serves dir with `busybox httpd -f` on 127.0.0.1 at a free port; resolves once it answers. busybox
 * httpd sends Content-Length and Last-Modified but no checksum headers.
 */
export async function startHttpServer(dir: string, opts: HttpServerOptions = {}): Promise<HttpServer> {
  const root = resolve(dir)
  let confDir: string | undefined
  const args: string[] = []
  if (opts.auth) {
    confDir = await mkdtemp(join(tmpdir(), 'stacker-e2e-httpd-'))
    const conf = join(confDir, 'httpd.conf')
    await writeFile(conf, `${opts.auth.path}:${opts.auth.user}:${opts.auth.password}\n`)
    args.push('-c', conf)
  }
  const cleanupConf = async (): Promise<void> => {
    if (confDir) await rm(confDir, { recursive: true, force: true })
  }
  try {
    for (let attempt = 0; ; attempt++) {
      const port = await freePort()
      const child = execa('busybox', ['httpd', '-f', '-p', `127.0.0.1:${port}`, '-h', root, ...args], {
        stdin: 'ignore',
        reject: false,
        all: true,
      })
      const untrack = trackChild(child)
      let exited = false
      void child.then(() => {
        exited = true
      })
      const url = `http://127.0.0.1:${port}`
      try {
        await waitUntil(() => answers(`${url}/`), {
          what: `busybox httpd on port ${port}`,
          gaveUp: () => (exited ? 'exited' : undefined),
        })
      } catch (e) {
        await stopChild(child)
        untrack()
        const out = String((await child).all ?? '')
        if (attempt < 3 && /in use/i.test(out)) continue
        throw new Error(`${(e as Error).message}\n${out}`)
      }
      let stopped = false
      return {
        url,
        port,
        async stop() {
          if (stopped) return
          stopped = true
          await stopChild(child)
          untrack()
          await cleanupConf()
        },
      }
    }
  } catch (e) {
    await cleanupConf()
    throw e
  }
}
