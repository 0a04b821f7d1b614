import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, relative, resolve } from 'node:path'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const APP = resolve(import.meta.dirname, '..')

/** A copy of the app (bin/stacker, package.json, dist/launcher.js, dist/main.js by link) with its own bundle. */
let app: string
let bundle: string

async function run(args: string[]) {
  const r = await execa(process.execPath, [join(app, 'bin', 'stacker'), ...args], { cwd: app, reject: false })
  return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode ?? -1 }
}

const caches = async () => (await readdir(bundle)).filter((f) => f.endsWith('.v8cache'))

beforeAll(async () => {
  app = await mkdtemp(join(tmpdir(), 'stacker-bundle-'))
  bundle = join(app, 'dist', 'bundle')
  await mkdir(join(app, 'bin'), { recursive: true })
  await copyFile(join(APP, 'bin', 'stacker'), join(app, 'bin', 'stacker'))
  await copyFile(join(APP, 'package.json'), join(app, 'package.json'))
  await mkdir(join(app, 'dist'), { recursive: true })
  // A copy, not a link: the launcher finds the app from its own (real) location.
  await copyFile(join(APP, 'dist', 'launcher.js'), join(app, 'dist', 'launcher.js'))
  await symlink(join(APP, 'dist', 'main.js'), join(app, 'dist', 'main.js'))
  await execa(process.execPath, [join(APP, 'scripts', 'bundle.mjs'), bundle])
}, 120_000)
afterAll(async () => {
  await rm(app, { recursive: true, force: true })
})

describe('the CLI bundle', () => {
  it('holds the CLI, with execa apart and required only when a tool runs', async () => {
    expect((await readdir(bundle)).sort()).toEqual(['execa.cjs', 'inputs.json', 'stacker.cjs'])
    const source = await readFile(join(bundle, 'stacker.cjs'), 'utf8')
    expect(source).toContain('("./execa.cjs")')
    // node:vm gives the bundle no module loader: every import() had to become a require().
    expect(source).not.toMatch(/^\s*[^\s*/].*\bimport\(/m)
    // execa's own code (its option normalisation) is in execa.cjs only.
    expect(await readFile(join(bundle, 'execa.cjs'), 'utf8')).toContain('normalizeOptions')
    expect(source).not.toContain('const normalizeOptions = (filePath, rawArguments, rawOptions)')
    const inputs = JSON.parse(await readFile(join(bundle, 'inputs.json'), 'utf8')) as Array<[string, number, number]>
    expect(inputs.map(([f]) => f)).toContain(relative(app, join(APP, 'dist', 'main.js')))
  })

  it('runs commands as the compiled files do, and writes a code cache once', async () => {
    const expected = await execa(process.execPath, [
      '-e',
      `import(${JSON.stringify(join(APP, 'dist', 'main.js'))}).then((m) => m.main(['--help']))`,
    ])
    const first = await run(['--help'])
    expect(first.exitCode).toBe(0)
    expect(first.stdout).toBe(expected.stdout)
    const written = await caches()
    expect(written).toHaveLength(1)
    const second = await run(['--help'])
    expect(second.stdout).toBe(expected.stdout)
    expect(await caches()).toEqual(written)
    // A failing command leaves no cache of its kind.
    const bad = await run(['build', '-f', join(app, 'missing.yaml'), '--order-only'])
    expect(bad.exitCode).toBe(1)
    expect(await caches()).toEqual(written)
  })

  it('is still used when a file it was made from was rewritten with the same bytes', async () => {
    const file = join(bundle, 'inputs.json')
    const saved = await readFile(file, 'utf8')
    const inputs = JSON.parse(saved) as Array<[string, number, number, string]>
    for (const e of inputs) e[2] -= 1000
    await writeFile(file, JSON.stringify(inputs))
    for (const c of await caches()) await rm(join(bundle, c))
    const r = await run(['--help'])
    expect(r.exitCode).toBe(0)
    // Only the bundle writes a code cache.
    expect(await caches()).toHaveLength(1)
    await writeFile(file, saved)
  })

  it('is not used once a file it was made from has changed', async () => {
    const file = join(bundle, 'inputs.json')
    const inputs = JSON.parse(await readFile(file, 'utf8')) as Array<[string, number, number, string]>
    const [first] = inputs
    if (!first) throw new Error('empty inputs.json')
    first[2] -= 1000
    first[3] = '0'.repeat(40)
    await writeFile(file, JSON.stringify(inputs))
    // The bundle is gone too: only a run of the compiled files can succeed.
    await rm(join(bundle, 'stacker.cjs'))
    const r = await run(['--help'])
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toContain('COMMANDS')
  })
})
