import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { StackerError } from '@stacker/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { findStackerfiles } from '../src/index.js'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stackerfile-find-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('findStackerfiles', () => {
  it('walks everything, hidden dirs included, without following symlinks', async () => {
    for (const d of ['b', 'a/deep', '.hidden', 'roots', 'outside']) await mkdir(join(dir, d), { recursive: true })
    for (const f of [
      'b/stacker.yaml',
      'a/deep/stacker.yaml',
      '.hidden/stacker.yaml',
      'roots/stacker.yaml',
      'stacker.yaml',
    ]) {
      await writeFile(join(dir, f), 'x: {}\n')
    }
    await writeFile(join(dir, 'a/notstacker.yml'), '')
    await writeFile(join(dir, 'a/my-stacker.yaml'), '')
    await writeFile(join(dir, 'outside/stacker.yaml'), '')
    await symlink(join(dir, 'outside'), join(dir, 'a/link'))
    const found = await findStackerfiles(dir)
    expect(found.map((f) => f.slice(dir.length))).toEqual([
      '/.hidden/stacker.yaml',
      '/a/deep/stacker.yaml',
      '/b/stacker.yaml',
      '/outside/stacker.yaml',
      '/roots/stacker.yaml',
      '/stacker.yaml',
    ])
  })

  it('uses the given pattern against the whole path', async () => {
    await mkdir(join(dir, 'x'), { recursive: true })
    await writeFile(join(dir, 'x/one.stacker.yaml'), '')
    await writeFile(join(dir, 'x/stacker.yaml'), '')
    expect((await findStackerfiles(dir, '\\.stacker\\.yaml$')).map((f) => f.slice(dir.length))).toEqual([
      '/x/one.stacker.yaml',
    ])
    expect(await findStackerfiles(dir, 'x/')).toHaveLength(2)
  })

  it('the search dir must exist and the pattern must compile', async () => {
    const missing = join(dir, 'missing')
    const e1 = await findStackerfiles(missing).catch((x: unknown) => x)
    expect(e1).toBeInstanceOf(StackerError)
    expect((e1 as StackerError).message).toBe(`lstat ${missing}: no such file or directory`)
    const e2 = await findStackerfiles(dir, '(unclosed').catch((x: unknown) => x)
    expect(e2).toBeInstanceOf(StackerError)
    expect((e2 as StackerError).message).toMatch(/^error parsing regexp: /)
  })
})
