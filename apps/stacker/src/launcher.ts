// What bin/stacker runs: answers `--version` before anything loads, then runs the CLI from its bundle
// (dist/bundle/stacker.cjs, made by scripts/bundle.mjs at build time) while the bundle is current,
// else from the compiled files. Only node built-ins are imported here, and each on first use: this
// module is on the path of every command, and loading the CLI costs several times node's start-up.
import { createRequire } from 'node:module'
import type { Script } from 'node:vm'

type Builtins = {
  'node:crypto': typeof import('node:crypto')
  'node:fs': typeof import('node:fs')
  'node:path': typeof import('node:path')
  'node:tls': typeof import('node:tls')
  'node:url': typeof import('node:url')
  'node:vm': typeof import('node:vm')
}

// process.getBuiltinModule (node >= 20.16) skips building the ES module facade of each built-in.
function builtin<K extends keyof Builtins>(id: K): Builtins[K] {
  const get = (process as { getBuiltinModule?: (id: string) => unknown }).getBuiltinModule
  return (get?.(id) ?? createRequire(import.meta.url)(id)) as Builtins[K]
}

/**
 * bin/stacker's sh line moves NODE_EXTRA_CA_CERTS to STACKER_EXTRA_CA_CERTS: node would parse that
 * file (often the whole system CA bundle) before any script runs, more than the rest of a no-op
 * build's start-up. The certificates are trusted from the first TLS connection on instead (see
 * trustExtraCa). Children see the variable as the user set it.
 */
const extraCaFile = process.env.STACKER_EXTRA_CA_CERTS
let tlsHooked = extraCaFile === undefined
if (extraCaFile !== undefined) {
  process.env.NODE_EXTRA_CA_CERTS = extraCaFile
  delete process.env.STACKER_EXTRA_CA_CERTS
}

// What tls.createSecureContext reads: a caller who sets one of these gets its own context, so the
// extra certificates join it through `ca` rather than through the shared context.
const CONTEXT_OPTIONS = [
  'cert',
  'key',
  'pfx',
  'passphrase',
  'ciphers',
  'ecdhCurve',
  'dhparam',
  'minVersion',
  'maxVersion',
  'secureProtocol',
  'secureOptions',
  'sigalgs',
  'crl',
  'honorCipherOrder',
  'privateKeyEngine',
  'privateKeyIdentifier',
  'clientCertEngine',
  'sessionIdContext',
  'ticketKeys',
  'sessionTimeout',
]

/**
 * Makes every TLS client connection that names no `ca` (node:https, fetch, http2: all call
 * tls.connect on the module object at connect time) trust node's root certificates plus those of
 * the extra file, as NODE_EXTRA_CA_CERTS does. The file is read on the first connection, once; if it
 * cannot be used, node's warning is printed and the default roots stay. Idempotent.
 */
export function trustExtraCa(): void {
  if (tlsHooked || extraCaFile === undefined) return
  tlsHooked = true
  const file = extraCaFile
  const tls = builtin('node:tls')
  const connect = tls.connect
  let trust: { ca: string[]; secureContext: import('node:tls').SecureContext } | null | undefined
  const load = () => {
    try {
      const text = builtin('node:fs').readFileSync(file, 'utf8')
      const roots = tls.rootCertificates
      // A system bundle repeats node's roots: parsing each twice would double the cost.
      const key = (pem: string) => pem.replace(/\s+/g, '')
      const known = new Set(roots.map(key))
      const extra = (text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []).filter(
        (pem) => !known.has(key(pem)),
      )
      const ca = [...roots, ...extra]
      return { ca, secureContext: tls.createSecureContext({ ca }) }
    } catch (e) {
      process.stderr.write(`Warning: Ignoring extra certs from \`${file}\`, load failed: ${(e as Error).message}\n`)
      return null
    }
  }
  const patchedConnect = function connectTrustingExtraCa(this: unknown, ...a: unknown[]) {
    if (trust === undefined) trust = load()
    // tls.connect(options[, cb]), (port[, host][, options][, cb]) or (path[, options][, cb])
    const at = [0, 1, 2].find((i) => a[i] !== null && typeof a[i] === 'object')
    const options = (at === undefined ? {} : a[at]) as Record<string, unknown>
    if (trust && options.ca === undefined && options.secureContext === undefined) {
      const own = CONTEXT_OPTIONS.some((k) => options[k] !== undefined)
      const patched = { ...options, ...(own ? { ca: trust.ca } : { secureContext: trust.secureContext }) }
      if (at !== undefined) a[at] = patched
      else {
        const cb = a.findIndex((x) => typeof x === 'function')
        a.splice(cb < 0 ? a.length : cb, 0, patched)
      }
    }
    return (connect as (...args: unknown[]) => unknown).apply(this, a)
  }
  ;(tls as { connect: unknown }).connect = patchedConnect
}

const app = new URL('../', import.meta.url)

function bundlePath(): string {
  return builtin('node:url').fileURLToPath(new URL('dist/bundle/stacker.cjs', app))
}

function sha1Of(url: URL): string {
  return builtin('node:crypto').createHash('sha1').update(builtin('node:fs').readFileSync(url)).digest('hex')
}

/** Whether the bundle was made from the compiled files present now: after a bare `tsc -b` it is
 *  stale, and the compiled files are used as they are. */
export function bundleIsCurrent(): boolean {
  const fs = builtin('node:fs')
  try {
    const inputs = JSON.parse(fs.readFileSync(new URL('dist/bundle/inputs.json', app), 'utf8')) as Array<
      [string, number, number, string | undefined]
    >
    for (const [file, size, mtime, sha1] of inputs) {
      const st = fs.statSync(new URL(file, app))
      if (st.size !== size) return false
      // Same size, other mtime: the same bytes rewritten (a build cache restoring dist/) still count.
      if (Math.round(st.mtimeMs) !== mtime && (!sha1 || sha1Of(new URL(file, app)) !== sha1)) return false
    }
    return inputs.length > 0
  } catch {
    return false
  }
}

/** The bundle's require. With extra CAs to trust, the TLS hook goes in when the bundle first
 *  requires a module that can connect, or first calls fetch (no-op builds make no connection:
 *  loading node:tls up front would cost them a few ms). */
function bundleRequire(bundle: string): NodeJS.Require {
  const require = createRequire(bundle)
  if (tlsHooked) return require
  const fetch = globalThis.fetch
  globalThis.fetch = function fetchTrustingExtraCa(this: unknown, ...a: Parameters<typeof fetch>) {
    trustExtraCa()
    return fetch.apply(this, a)
  }
  const connects = new Set(['node:tls', 'node:https', 'node:http2', 'tls', 'https', 'http2'])
  return Object.assign((id: string) => {
    if (connects.has(id)) trustExtraCa()
    return require(id)
  }, require)
}

/**
 * Runs the bundle as CommonJS through node:vm with V8's code cache: compiling the CLI is a good part
 * of a short command's time, and the cache (written after the first successful run of a kind of
 * command, beside the bundle, which a rebuild deletes) skips it. A cache V8 rejects (another node)
 * is rewritten; one that cannot be written is done without. Returns the CLI's exports.
 */
function loadBundle(args: readonly string[]): { main(args: string[]): Promise<void> } {
  const fs = builtin('node:fs')
  const bundle = bundlePath()
  const source = fs.readFileSync(bundle, 'utf8')
  // Builds compile different code than --help: each kind gets its own cache.
  const kind = args.includes('build') || args.includes('recursive-build') ? 'build' : 'other'
  // V8 checks a cache against the source's length only: the bundle's mtime in the name keeps a cache
  // from outliving an edit of the bundle in place.
  const stamp = Math.round(fs.statSync(bundle).mtimeMs)
  const cacheFile = `${bundle}.${kind}.${stamp}.${process.version}-${process.arch}.v8cache`
  let cachedData: Buffer | undefined
  try {
    cachedData = fs.readFileSync(cacheFile)
  } catch {
    // First run: no cache yet.
  }
  // The wrapper stays on the first line, so positions in stack traces are the bundle's own.
  const script: Script = new (builtin('node:vm').Script)(
    `(function (exports, require, module, __filename, __dirname) {${source}\n})`,
    { filename: bundle, ...(cachedData ? { cachedData } : {}) },
  )
  if (!cachedData || script.cachedDataRejected) {
    process.once('exit', (code) => {
      if (code !== 0) return
      const tmp = `${cacheFile}.${process.pid}.tmp`
      try {
        fs.writeFileSync(tmp, script.createCachedData())
        fs.renameSync(tmp, cacheFile)
      } catch {
        // A read-only install: run without a cache.
        fs.rmSync(tmp, { force: true })
      }
    })
  }
  const module = { exports: {} as { main(args: string[]): Promise<void> } }
  const wrapper = script.runInThisContext() as (...a: unknown[]) => void
  wrapper(module.exports, bundleRequire(bundle), module, bundle, builtin('node:path').dirname(bundle))
  return module.exports
}

/** Runs the stacker command line `args` (argv without node and the script). */
export async function launch(args: string[]): Promise<void> {
  if (args.length === 1 && (args[0] === '--version' || args[0] === '-v')) {
    const pj = JSON.parse(builtin('node:fs').readFileSync(new URL('package.json', app), 'utf8')) as {
      version?: string
    }
    process.stdout.write(`stacker version ${pj.version ?? '0.0.0'}\n`)
    return
  }
  if (bundleIsCurrent()) {
    await loadBundle(args).main(args)
    return
  }
  trustExtraCa()
  const { main } = await import('./main.js')
  await main(args)
}
