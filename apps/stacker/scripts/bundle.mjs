#!/usr/bin/env node
// Bundles the compiled CLI (dist/main.js and the workspace packages and npm modules it imports)
// into dist/bundle/, so a command loads a few files instead of several hundred: module resolution
// and loading are most of the start-up time of an unbundled run. The builder stays a separate
// chunk, loaded only when a command runs. bin/stacker uses the bundle only while it is current:
// dist/bundle/inputs.json lists every input file with its size and mtime.
//
//   node apps/stacker/scripts/bundle.mjs        (after tsc -b)
import { statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { rm, writeFile } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const app = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = join(app, 'dist', 'bundle')
const { rolldown } = await import('rolldown')

// @napi-rs/xattr loads a native addon, so it stays out of the bundle. This CLI does not depend on it
// directly: the bundle requires it from the package that does, by a path relative to the bundle.
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
          `const x = createRequire(new URL(${JSON.stringify(relative(out, xattrOwner))}, import.meta.url))(${JSON.stringify(XATTR)})`,
          ...xattrNames.map((n) => `export const ${n} = x.${n}`),
        ].join('\n')
      : null,
}

await rm(out, { recursive: true, force: true })
const bundle = await rolldown({
  input: join(app, 'dist', 'main.js'),
  platform: 'node',
  external: [/^node:/],
  plugins: [xattrShim],
  logLevel: 'warn',
})
const { output } = await bundle.write({
  dir: out,
  format: 'esm',
  entryFileNames: '[name].js',
  chunkFileNames: '[name]-[hash].js',
})
await bundle.close()
const inputs = new Set()
for (const o of output) if (o.type === 'chunk') for (const id of o.moduleIds) if (!id.startsWith('\0')) inputs.add(id)
const files = [...inputs]
  .filter((id) => !id.includes('/node_modules/'))
  .sort()
  .map((id) => {
    const st = statSync(id)
    return [relative(app, id), st.size, Math.round(st.mtimeMs)]
  })
await writeFile(join(out, 'inputs.json'), `${JSON.stringify(files)}\n`)
process.stderr.write(
  `bundled ${inputs.size} modules (${files.length} of this workspace) into ${relative(process.cwd(), out)}\n`,
)
