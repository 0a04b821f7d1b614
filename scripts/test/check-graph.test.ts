import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { spawnSync } from 'node:child_process'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

const ROOT = resolve(import.meta.dirname, '../..')
const SCRIPT = join(ROOT, 'scripts/check-graph.mjs')
let copy: string

// A copy of the workspace's package manifests and sources, so the check can be run on a broken graph.
beforeEach(async () => {
  copy = await mkdtemp(join(tmpdir(), 'graph-'))
  for (const d of [
    'apps/stacker',
    ...['core', 'stackerfile', 'oci', 'convert', 'layers', 'overlay', 'runtime', 'registry', 'builder'].map(
      (p) => `packages/${p}`,
    ),
  ]) {
    await cp(join(ROOT, d, 'package.json'), join(copy, d, 'package.json'), { recursive: true })
    await cp(join(ROOT, d, 'src'), join(copy, d, 'src'), { recursive: true })
  }
})
afterEach(async () => {
  await rm(copy, { recursive: true, force: true })
})

const check = async () => {
  const r = spawnSync(process.execPath, [SCRIPT, copy], { encoding: 'utf8' })
  return { exitCode: r.status, stdout: r.stdout, stderr: r.stderr }
}

describe('scripts/check-graph.mjs', () => {
  it('passes on the real workspace', async () => {
    const r = await check()
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toContain('package graph ok')
  })

  it('fails on an upward import (core importing the builder)', async () => {
    const pj = join(copy, 'packages/core/package.json')
    const m = JSON.parse(await readFile(pj, 'utf8'))
    m.dependencies = { ...(m.dependencies ?? {}), '@stacker/builder': 'workspace:*' }
    await writeFile(pj, JSON.stringify(m))
    await writeFile(join(copy, 'packages/core/src/up.ts'), "export { build } from '@stacker/builder'\n")
    const r = await check()
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toContain('depends on @stacker/builder, which is not below it')
    expect(r.stderr).toContain('dependency cycle')
  })

  it('fails on an undeclared import and on an import of internals', async () => {
    await writeFile(
      join(copy, 'packages/oci/src/bad.ts'),
      "import { x } from '@stacker/layers/src/tar/index.js'\nexport { x }\n",
    )
    const r = await check()
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toContain('imports internals @stacker/layers/src/tar/index.js')
    expect(r.stderr).toContain('which')
  })

  it('fails on an import cycle between files of one package, not on type-only imports', async () => {
    const dir = join(copy, 'packages/core/src')
    await writeFile(join(dir, 'cyc-a.ts'), "import { b } from './cyc-b.js'\nexport const a = () => b\n")
    await writeFile(join(dir, 'cyc-b.ts'), "import type { T } from './cyc-c.js'\nexport const b = 1 as T\n")
    await writeFile(
      join(dir, 'cyc-c.ts'),
      "import { a } from './cyc-a.js'\nexport type T = number\nexport const c = a\n",
    )
    expect((await check()).exitCode).toBe(0)
    await writeFile(join(dir, 'cyc-b.ts'), "import { c } from './cyc-c.js'\nexport const b = () => c\n")
    const r = await check()
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toContain('import cycle cyc-a.ts -> cyc-b.ts -> cyc-c.ts -> cyc-a.ts')
  })
})
