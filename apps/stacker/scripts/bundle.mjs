#!/usr/bin/env node
// Bundles the compiled CLI (dist/main.js and the workspace packages and npm modules it imports) into
// one CommonJS file, dist/bundle/stacker.cjs, so a command loads one file instead of several hundred:
// module resolution and loading are most of the start-up time of an unbundled run. CommonJS because
// the launcher (src/launcher.ts) compiles it with node:vm, which can reuse V8's code cache (ES modules cannot on Node 20).
// execa (a third of the code, and slow to evaluate) goes into its own file, execa.cjs, that the
// bundle requires on the first call, so a run that starts no tool through it (a no-op build) never
// loads it. The launcher (src/launcher.ts) uses the bundle only while it is current: dist/bundle/inputs.json lists
// every workspace input file with its size and mtime, and for the npm modules the lockfile and
// pnpm's record of the last install.
//
//   node apps/stacker/scripts/bundle.mjs [out]  (after tsc -b; the package's build script runs it)
//
// `out` (default dist/bundle) must be <app>/dist/bundle of a copy of bin/stacker: inputs.json names
// the inputs relative to that app dir.
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { readFile, rename, rm, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const app = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = resolve(process.argv[2] ?? join(app, 'dist', 'bundle'))
const outApp = join(out, '..', '..')
const { rolldown } = await import('rolldown')

// @napi-rs/xattr loads a native addon, so it stays out of the bundle. This CLI does not depend on it
// directly: the bundle requires it from the package that does, by a path relative to the bundle, and
// only on first use (most commands never touch an extended attribute).
const XATTR = '@napi-rs/xattr'
const xattrOwner = join(app, '..', '..', 'packages', 'layers', 'package.json')
const xattrNames = Object.keys(createRequire(xattrOwner)(XATTR))
const xattrShim = {
  name: 'xattr-from-layers',
  resolveId: (id) => (id === XATTR ? '\0xattr' : null),
  load: (id) =>
    id === '\0xattr'
      ? [
          "import { createRequire } from 'node:module'",
          'let x',
          `const load = () => (x ??= createRequire(new URL(${JSON.stringify(relative(out, xattrOwner))}, import.meta.url))(${JSON.stringify(XATTR)}))`,
          ...xattrNames.map((n) => `export const ${n} = (...a) => load().${n}(...a)`),
        ].join('\n')
      : null,
}

// Only plain functions are forwarded: a class (ExecaError) or `$` (with its properties) would not
// survive the wrapper, so importing one of those fails the bundle rather than the run.
const EXECA = 'execa'
const EXECA_FILE = 'execa.cjs'
const execaEntry = createRequire(join(app, '..', '..', 'packages', 'builder', 'package.json')).resolve(EXECA)
const execaNames = Object.entries(await import(execaEntry))
  .filter(([n, v]) => typeof v === 'function' && n !== '$' && !/^class\b/.test(Function.prototype.toString.call(v)))
  .map(([n]) => n)
const execaShim = {
  name: 'execa-on-first-call',
  resolveId: (id) => (id === EXECA ? '\0execa' : null),
  load: (id) =>
    id === '\0execa'
      ? [
          "import { createRequire } from 'node:module'",
          'let x',
          `const load = () => (x ??= createRequire(import.meta.url)(${JSON.stringify(`./${EXECA_FILE}`)}))`,
          ...execaNames.map((n) => `export const ${n} = (...a) => load().${n}(...a)`),
        ].join('\n')
      : null,
}

// Node built-ins that only some commands use (HTTP for registries, zlib for layers) are required on
// first use: loading node:http and node:https alone costs a no-op build several milliseconds. The
// bundle reaches a built-in only through the properties of the variable it is required into, so a
// proxy that requires it on the first property read is indistinguishable from the module.
const LAZY_BUILTINS = new Set(['node:http', 'node:https', 'node:zlib', 'node:stream/promises'])
const lazyBuiltins = {
  name: 'lazy-builtins',
  renderChunk(code) {
    let n = 0
    const lazy = code.replace(/^let (node_\w+) = require\("(node:[\w/]+)"\);$/gm, (line, v, id) => {
      if (!LAZY_BUILTINS.has(id)) return line
      n++
      return `let ${v} = __lazyBuiltin(${JSON.stringify(id)});`
    })
    if (n === 0) return null
    return `${lazy}\nfunction __lazyBuiltin(id) {\n\tlet m;\n\treturn new Proxy({}, { get: (_, k) => (m ??= require(id))[k] });\n}\n`
  },
}

// Written beside `out` and swapped in: a running stacker never reads a half-written bundle.
const staging = `${out}.tmp-${process.pid}`
await rm(staging, { recursive: true, force: true })
const execaBundle = await rolldown({ input: execaEntry, platform: 'node', external: [/^node:/], logLevel: 'warn' })
const execaOut = await execaBundle.write({ file: join(staging, EXECA_FILE), format: 'cjs' })
await execaBundle.close()

const bundle = await rolldown({
  input: join(app, 'dist', 'main.js'),
  platform: 'node',
  external: [/^node:/],
  plugins: [xattrShim, execaShim, lazyBuiltins],
  logLevel: 'warn',
})
const { output } = await bundle.write({
  file: join(staging, 'stacker.cjs'),
  format: 'cjs',
  codeSplitting: false,
  // import() of a built-in becomes a require(): node:vm runs the bundle, and a dynamic import there
  // would need an experimental loader hook (and fails with a code cache).
  dynamicImportInCjs: false,
})
await bundle.close()
// The launcher runs the bundle through node:vm, where import() has no loader: none may be left.
const code = await readFile(join(staging, 'stacker.cjs'), 'utf8')
const dynamic = code.split('\n').filter((l) => /\bimport\(/.test(l) && !/^\s*(\*|\/\/|\/\*)/.test(l))
if (dynamic.length > 0) throw new Error(`the bundle still has dynamic imports:\n${dynamic.join('\n')}`)
const inputs = new Set()
for (const o of [...output, ...execaOut.output])
  if (o.type === 'chunk') for (const id of o.moduleIds) if (!id.startsWith('\0')) inputs.add(id)
// An npm module changes only by an install, and then to another path: what tells is the install.
const root = join(app, '..', '..')
const npmState = [join(root, 'pnpm-lock.yaml'), join(root, 'node_modules', '.modules.yaml')].filter((f) =>
  existsSync(f),
)
const files = [...[...inputs].filter((id) => !id.includes('/node_modules/')).sort(), ...npmState].map((id) => {
  const st = statSync(id)
  // The content hash settles a changed mtime with the same bytes (a cache restoring dist/, a rebuild
  // that writes what was there).
  const sha1 = createHash('sha1').update(readFileSync(id)).digest('hex')
  return [relative(outApp, id), st.size, Math.round(st.mtimeMs), sha1]
})
await writeFile(join(staging, 'inputs.json'), `${JSON.stringify(files)}\n`)
const old = `${out}.old-${process.pid}`
await rename(out, old).catch((e) => {
  if (e.code !== 'ENOENT') throw e
})
await rename(staging, out)
await rm(old, { recursive: true, force: true })
process.stderr.write(`bundle: ${inputs.size} modules in ${relative(process.cwd(), out) || '.'}\n`)
