import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, relative, resolve } from 'node:path'
import { promisify } from 'node:util'
import ts from 'typescript'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// The packages as a new user gets them: packed with pnpm (workspace:^ becomes a caret range),
// installed with npm into an empty project, used from plain JavaScript and from strict TypeScript,
// and every ```ts block of their READMEs type-checked against the installed types.

const ROOT = resolve(import.meta.dirname, '../..')
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc')
/** The packages a user picks; their internal dependencies are packed and installed with them. */
const PICKED = ['stackerfile', 'oci', 'core']
/** Packages whose READMEs and API documentation are checked (installed with the picked ones). */
const DOCUMENTED = ['core', 'stackerfile', 'oci', 'layers', 'convert', 'overlay', 'runtime', 'registry', 'builder']
const run = promisify(execFile)

interface Manifest {
  name: string
  version: string
  license?: string
  engines?: Record<string, string>
  repository?: { type?: string; url?: string; directory?: string }
  exports?: Record<string, unknown>
  files?: string[]
  dependencies?: Record<string, string>
}

const readJson = async <T>(file: string): Promise<T> => JSON.parse(await readFile(file, 'utf8')) as T
const dirOf = (name: string) => name.replace(/^@stacker\//, '')

/** The picked packages and every @stacker/* package they depend on, recursively. */
async function closure(picked: readonly string[]): Promise<string[]> {
  const seen = new Set<string>()
  const visit = async (dir: string): Promise<void> => {
    if (seen.has(dir)) return
    seen.add(dir)
    const m = await readJson<Manifest>(join(ROOT, 'packages', dir, 'package.json'))
    for (const dep of Object.keys(m.dependencies ?? {})) if (dep.startsWith('@stacker/')) await visit(dirOf(dep))
  }
  for (const p of picked) await visit(p)
  return [...seen].sort()
}

/** The ```ts (or ```typescript) blocks of a markdown text, with the line each starts on. Blocks
 *  fenced otherwise (```ts api for signature summaries, ```sh, ...) are not code to compile. */
function tsBlocks(markdown: string): { line: number; code: string }[] {
  const blocks: { line: number; code: string }[] = []
  const lines = markdown.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,})\s*(ts|typescript)\s*$/.exec(lines[i] ?? '')
    if (!open) continue
    const fence = open[2] as string
    const start = i + 1
    let end = start
    while (end < lines.length && !(lines[end] ?? '').trim().startsWith(fence)) end++
    blocks.push({ line: start + 1, code: lines.slice(start, end).join('\n') })
    i = end
  }
  return blocks
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true }))
    if (e.isFile()) out.push(relative(dir, join(e.parentPath, e.name)))
  return out.sort()
}

const CONSUMER_MJS = `
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseStackerfile, isStackerError } from '@stacker/stackerfile'
import { MediaTypes, OciLayout } from '@stacker/oci'
import { sha256Digest } from '@stacker/core'

const text = 'app:\\n  from: {type: docker, url: "docker://localhost:5000/busybox:\${{TAG:latest}}"}\\n  run: echo hi\\n'
const parsed = parseStackerfile(text, { substitutions: { TAG: '1.36' } })

let bad
try {
  parseStackerfile('app:\\n  frm: {type: scratch}\\n', { path: '/src/stacker.yaml' })
} catch (e) {
  bad = isStackerError(e) ? { code: e.code, message: e.message } : String(e)
}

const dir = await mkdtemp(join(tmpdir(), 'consumer-'))
try {
  const layout = await OciLayout.open(join(dir, 'oci'), { create: true })
  const blob = await layout.putBlob('hello\\n')
  await layout.setTag('greeting', { mediaType: MediaTypes.layerTar, digest: blob.digest, size: blob.size })
  const desc = await layout.getTag('greeting')
  const back = desc ? (await layout.readBlob(desc.digest)).toString() : undefined
  console.log(
    JSON.stringify({
      url: parsed.layers[0]?.from?.url,
      order: parsed.buildOrder().map((l) => l.name),
      bad,
      digest: blob.digest,
      expected: sha256Digest('hello\\n'),
      back,
      tags: (await layout.listTags()).map((t) => t.name),
    }),
  )
} finally {
  await rm(dir, { recursive: true, force: true })
}
`

const CONSUMER_TS = `
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type Layer, type ParseStackerfileOptions, parseStackerfile, StackerError } from '@stacker/stackerfile'
import { type BlobInfo, type Descriptor, type Digest, type Logger, MediaTypes, OciLayout } from '@stacker/oci'
import { memoryLogger } from '@stacker/core'

const opts: ParseStackerfileOptions = { substitutions: ['TAG=1.36'], requireHash: false }
const layers: Layer[] = parseStackerfile('app:\\n  from: {type: scratch}\\n', opts).layers
const logger: Logger = memoryLogger()
const layout: OciLayout = await OciLayout.open(join(await mkdtemp(join(tmpdir(), 't-')), 'oci'), { create: true, logger })
const info: BlobInfo = await layout.putBlob(new TextEncoder().encode('x'))
const digest: Digest = info.digest
const desc: Descriptor = { mediaType: MediaTypes.layerTar, digest, size: info.size }
await layout.setTag(layers[0]?.name ?? 'app', desc)
const err: StackerError = new StackerError('USAGE', 'example')
console.log(err.code)
`

describe('packed packages in an empty project', () => {
  let work: string
  let project: string
  let packed: string[]
  const tarballs = new Map<string, string>()

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'stacker-pack-'))
    project = join(work, 'project')
    await mkdir(project)
    packed = await closure([...PICKED, ...DOCUMENTED])
    const dest = join(work, 'tarballs')
    await Promise.all(
      packed.map((p) => run('pnpm', ['pack', '--pack-destination', dest], { cwd: join(ROOT, 'packages', p) })),
    )
    for (const f of await readdir(dest)) {
      const m = /^stacker-(.+)-\d+\.\d+\.\d+\.tgz$/.exec(f)
      if (m?.[1]) tarballs.set(m[1], join(dest, f))
    }
    await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }))
    // One install of every tarball, as a user installs sibling tarballs; their npm dependencies
    // and the node types a TypeScript user has come from the npm registry.
    const devTypes = (await readJson<{ devDependencies: Record<string, string> }>(join(ROOT, 'package.json')))
      .devDependencies['@types/node']
    await run(
      'npm',
      ['install', '--no-audit', '--no-fund', '--loglevel=error', ...tarballs.values(), `@types/node@${devTypes}`],
      { cwd: project },
    )
  }, 300_000)

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('packs every package and its internal dependencies', () => {
    expect([...tarballs.keys()].sort()).toEqual(packed)
    expect(packed).toEqual(expect.arrayContaining(PICKED))
  })

  it('ships a manifest a registry and a TypeScript user can use', async () => {
    for (const p of packed) {
      const m = await readJson<Manifest>(join(project, 'node_modules/@stacker', p, 'package.json'))
      expect(m.license, p).toBe('Apache-2.0')
      expect(m.engines?.node, p).toBe('>=20')
      expect(m.repository?.directory, p).toBe(`packages/${p}`)
      expect(m.repository?.url, p).toMatch(/^git\+https:/)
      const dot = m.exports?.['.'] as { types?: string; default?: string } | undefined
      expect(dot?.types, p).toMatch(/\.d\.ts$/)
      expect(existsSync(join(project, 'node_modules/@stacker', p, dot?.types ?? '-')), p).toBe(true)
      expect(existsSync(join(project, 'node_modules/@stacker', p, dot?.default ?? '-')), p).toBe(true)
      // workspace:^ became the caret range of the sibling's version.
      for (const [dep, range] of Object.entries(m.dependencies ?? {}))
        if (dep.startsWith('@stacker/')) {
          const sibling = await readJson<Manifest>(join(ROOT, 'packages', dirOf(dep), 'package.json'))
          expect(range, `${p} -> ${dep}`).toBe(`^${sibling.version}`)
        }
    }
  })

  it('ships the Apache-2.0 license text, no build info and no source map pointing at a missing file', async () => {
    const license = await readFile(join(ROOT, 'LICENSE'), 'utf8')
    expect(license).toContain('Apache License\n                           Version 2.0, January 2004')
    for (const p of packed) {
      const dir = join(project, 'node_modules/@stacker', p)
      expect(await readFile(join(dir, 'LICENSE'), 'utf8'), p).toBe(license)
      const files = await listFiles(dir)
      expect(
        files.filter((f) => f.endsWith('.tsbuildinfo')),
        p,
      ).toEqual([])
      const maps = files.filter((f) => f.endsWith('.map'))
      expect(maps.length, p).toBeGreaterThan(0)
      for (const map of maps) {
        const { sources } = await readJson<{ sources: string[] }>(join(dir, map))
        for (const s of sources) {
          const target = relative(dir, resolve(dir, dirname(map), s))
          // A stale dist/ (a source renamed since the last build) fails here: rebuild it from clean.
          expect(files, `${p}/${map} -> ${s}`).toContain(target)
        }
      }
    }
  })

  it('runs a plain JavaScript consumer', async () => {
    await writeFile(join(project, 'consumer.mjs'), CONSUMER_MJS)
    const { stdout } = await run(process.execPath, ['consumer.mjs'], { cwd: project })
    const out = JSON.parse(stdout) as Record<string, unknown>
    expect(out.url).toBe('docker://localhost:5000/busybox:1.36')
    expect(out.order).toEqual(['app'])
    expect(out.bad).toEqual({
      code: 'STACKERFILE',
      message: expect.stringContaining('stackerfile: unknown directive frm') as unknown,
    })
    expect(out.digest).toBe(out.expected)
    expect(out.back).toBe('hello\n')
    expect(out.tags).toEqual(['greeting'])
  })

  it('type-checks a strict TypeScript consumer and every ```ts block of the READMEs', async () => {
    const src = join(project, 'src')
    await mkdir(src)
    await writeFile(join(src, 'consumer.ts'), CONSUMER_TS)
    const names: string[] = []
    for (const p of DOCUMENTED) {
      const readme = await readFile(join(ROOT, 'packages', p, 'README.md'), 'utf8')
      const blocks = tsBlocks(readme)
      expect(blocks.length, `${p}/README.md has no \`\`\`ts example`).toBeGreaterThan(0)
      for (const b of blocks) {
        // Named after the README line, so a diagnostic says which example broke. `export {}` makes
        // every block a module of its own (top-level await, no clashes between blocks).
        const name = `readme-${p}-L${b.line}.ts`
        names.push(name)
        await writeFile(join(src, name), `${b.code}\nexport {}\n`)
      }
    }
    await writeFile(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          lib: ['ES2023'],
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noUncheckedIndexedAccess: true,
          exactOptionalPropertyTypes: true,
          // The installed declarations are checked too: they must stand on their own.
          skipLibCheck: false,
          types: ['node'],
          noEmit: true,
        },
        include: ['src'],
      }),
    )
    const r = await run(process.execPath, [TSC, '-p', 'tsconfig.json'], { cwd: project }).then(
      (ok) => ({ code: 0, out: ok.stdout }),
      (e: { code?: number; stdout?: string }) => ({ code: e.code ?? 1, out: e.stdout ?? String(e) }),
    )
    expect(r.out, 'readme-<package>-L<line>.ts is the ```ts block starting at that line of its README').toBe('')
    expect(r.code).toBe(0)
    expect(names.length).toBeGreaterThan(DOCUMENTED.length)
  })

  it('documents every export, re-exports the types its API names, and shows every options type in a README example', async () => {
    const entry = (p: string) => join(project, 'node_modules/@stacker', p, 'dist/index.d.ts')
    const program = ts.createProgram({
      rootNames: DOCUMENTED.map(entry),
      options: {
        module: ts.ModuleKind.NodeNext,
        moduleResolution: ts.ModuleResolutionKind.NodeNext,
        target: ts.ScriptTarget.ES2022,
        types: ['node'],
        typeRoots: [join(project, 'node_modules/@types')],
        noEmit: true,
      },
    })
    const checker = program.getTypeChecker()
    const resolveAlias = (s: ts.Symbol) => (s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s)
    const packageOf = (s: ts.Symbol) =>
      /node_modules\/@stacker\/([^/]+)\//.exec(s.declarations?.[0]?.getSourceFile().fileName ?? '')?.[1]
    const problems: string[] = []
    for (const p of DOCUMENTED) {
      const file = program.getSourceFile(entry(p))
      const mod = file && checker.getSymbolAtLocation(file)
      expect(mod, p).toBeDefined()
      const exports = checker.getExportsOfModule(mod as ts.Symbol)
      const exported = new Set(exports.map(resolveAlias))
      const readme = tsBlocks(await readFile(join(ROOT, 'packages', p, 'README.md'), 'utf8'))
        .map((b) => b.code)
        .join('\n')
      for (const e of exports) {
        const target = resolveAlias(e)
        if (ts.displayPartsToString(target.getDocumentationComment(checker)).trim() === '')
          problems.push(`${p}: ${e.name} has no JSDoc comment`)
        if (/Options$/.test(e.name) && !new RegExp(`\\b${e.name}\\b`).test(readme))
          problems.push(`${p}: README has no \`\`\`ts example that names ${e.name}`)
      }
      // Every type of another @stacker package that an export's declaration names (directly or
      // through this package's own types) is exported too, so users need no second import.
      const seen = new Set<ts.Symbol>()
      const visit = (node: ts.Node): void => {
        if (ts.isTypeReferenceNode(node) || ts.isExpressionWithTypeArguments(node) || ts.isTypeQueryNode(node)) {
          const at = ts.isTypeReferenceNode(node)
            ? node.typeName
            : ts.isTypeQueryNode(node)
              ? node.exprName
              : node.expression
          const sym = checker.getSymbolAtLocation(at)
          if (sym) follow(resolveAlias(sym))
        }
        ts.forEachChild(node, visit)
      }
      const follow = (sym: ts.Symbol): void => {
        if (seen.has(sym)) return
        seen.add(sym)
        const owner = packageOf(sym)
        if (owner === undefined) return
        if (owner !== p) {
          if (!exported.has(sym))
            problems.push(`${p}: its API names ${sym.name} of @stacker/${owner} but does not re-export it`)
          return
        }
        for (const d of sym.declarations ?? []) visit(d)
      }
      for (const e of exports) follow(resolveAlias(e))
    }
    expect(problems).toEqual([])
  })
})

describe('tsBlocks', () => {
  it('takes ```ts and ```typescript blocks with their first line, and nothing else', () => {
    const md = ['# x', '```ts', 'const a = 1', '```', '```ts api', 'f(x): y', '```', '```typescript', 'b()', '```']
    expect(tsBlocks(md.join('\n'))).toEqual([
      { line: 3, code: 'const a = 1' },
      { line: 9, code: 'b()' },
    ])
  })
})
