#!/usr/bin/env node
// Fails on an import cycle between workspace packages or an import that points up the layering of
// docs/architecture.md, on any import of another package's internals (only its index is public), and
// on an import cycle between the source files of one package (type-only imports aside: they leave
// nothing at run time).
import { readdirSync, readFileSync, statSync, existsSync } from 'node:fs'
import { join, resolve } from 'node:path'

// Lower rank may not import higher rank; equal ranks may not import each other.
const RANK = {
  core: 0,
  stackerfile: 1,
  oci: 1,
  convert: 2,
  layers: 2,
  overlay: 3,
  runtime: 3,
  registry: 3,
  builder: 4,
  cli: 5,
}
// The workspace root is the first argument (default: the cwd).
const root = resolve(process.argv[2] ?? '.')
const dirs = {
  cli: join(root, 'apps/stacker'),
  ...Object.fromEntries(
    Object.keys(RANK)
      .filter((k) => k !== 'cli')
      .map((k) => [k, join(root, `packages/${k}`)]),
  ),
}

const problems = []
const edges = new Map()
for (const [name, dir] of Object.entries(dirs)) {
  const pj = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
  const declared = new Set(Object.keys(pj.dependencies ?? {}).filter((d) => d.startsWith('@stacker/')))
  const used = new Set()
  const walk = (d) => {
    if (!existsSync(d)) return
    for (const e of readdirSync(d)) {
      const p = join(d, e)
      if (statSync(p).isDirectory()) walk(p)
      else if (/\.(ts|mts|js|mjs)$/.test(e)) {
        const src = readFileSync(p, 'utf8')
        for (const m of src.matchAll(/(?:from|import)\s*\(?\s*['"](@stacker\/[^'"]+)['"]/g)) {
          const spec = m[1]
          const [, pkg, ...rest] = spec.split('/')
          if (rest.length) problems.push(`${p}: imports internals ${spec}; import from @stacker/${pkg} only`)
          used.add(pkg)
          if (!declared.has(`@stacker/${pkg}`) && `@stacker/${pkg}` !== pj.name)
            problems.push(`${p}: imports @stacker/${pkg} which ${dir}/package.json does not declare`)
        }
      }
    }
  }
  walk(join(dir, 'src'))
  fileCycles(join(dir, 'src'))
  const deps = [...declared].map((d) => d.slice('@stacker/'.length))
  edges.set(name, deps)
  for (const dep of deps) {
    const target = dep === 'cli' ? 'cli' : dep
    if (!(target in RANK)) continue
    if (RANK[target] >= RANK[name]) problems.push(`${dir}: depends on @stacker/${dep}, which is not below it`)
  }
}
/** Reports import cycles among the .ts files under `src` (relative imports, static or dynamic). */
function fileCycles(src) {
  const files = []
  const collect = (d) => {
    if (!existsSync(d)) return
    for (const e of readdirSync(d)) {
      const p = join(d, e)
      if (statSync(p).isDirectory()) collect(p)
      else if (e.endsWith('.ts') && !e.endsWith('.d.ts')) files.push(p)
    }
  }
  collect(src)
  const imports = new Map()
  for (const f of files) {
    const text = readFileSync(f, 'utf8')
    const out = new Set()
    const re =
      /(?:^|\n)\s*(import|export)\s+(type\s+)?[^'";]*?from\s*['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g
    for (const m of text.matchAll(re)) {
      if (m[2]) continue
      const spec = m[3] ?? m[4]
      const target = resolve(join(f, '..'), spec.replace(/\.js$/, '.ts'))
      if (files.includes(target)) out.add(target)
    }
    imports.set(f, out)
  }
  const seen = new Map()
  const visitFile = (f, path) => {
    if (seen.get(f) === 1) {
      const cycle = [...path.slice(path.indexOf(f)), f].map((x) => x.slice(src.length + 1))
      problems.push(`${src}: import cycle ${cycle.join(' -> ')}`)
    }
    if (seen.get(f)) return
    seen.set(f, 1)
    for (const t of imports.get(f) ?? []) visitFile(t, [...path, f])
    seen.set(f, 2)
  }
  for (const f of files) visitFile(f, [])
}

// Cycle detection over declared dependencies.
const state = new Map()
const visit = (n, path) => {
  if (state.get(n) === 1) problems.push(`dependency cycle: ${[...path, n].join(' -> ')}`)
  if (state.get(n)) return
  state.set(n, 1)
  for (const d of edges.get(n) ?? []) visit(d, [...path, n])
  state.set(n, 2)
}
for (const n of edges.keys()) visit(n, [])
if (problems.length) {
  for (const p of problems) console.error(`error: ${p}`)
  process.exit(1)
}
console.log(`package graph ok (${edges.size} packages)`)
