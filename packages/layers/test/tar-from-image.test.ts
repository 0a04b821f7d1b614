import { execFileSync } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { writeTarLayer } from '../src/tar/index.js'
import { fileSink, isRoot, listTar, removeDir, tempDir } from './tar-helpers.js'

// A squashfs base is read through a kernel mount; images made without xattrs answer listxattr with
// ENOTSUP, which must read as "no xattrs", not fail the layer.
describe.runIf(isRoot)('writeTarLayer over a mounted squashfs image', () => {
  let work: string
  let mnt: string
  beforeEach(async () => {
    work = await tempDir()
    mnt = join(work, 'mnt')
  })
  afterEach(async () => {
    try {
      execFileSync('umount', [mnt], { stdio: 'ignore' })
    } catch {}
    await removeDir(work)
  })

  it('treats a filesystem without xattr support as having none', async () => {
    const src = join(work, 'src')
    await mkdir(join(src, 'd'), { recursive: true })
    await writeFile(join(src, 'd', 'f'), 'hello')
    execFileSync('mksquashfs', [src, join(work, 'img.sq'), '-no-xattrs', '-noappend', '-no-progress', '-quiet'])
    await mkdir(mnt)
    execFileSync('mount', ['-t', 'squashfs', '-o', 'loop,ro', join(work, 'img.sq'), mnt])
    const sink = fileSink(join(work, 'blob'))
    const r = await writeTarLayer(mnt, sink, { compression: 'none' })
    expect(r).toBeDefined()
    const { readFile } = await import('node:fs/promises')
    const names = (await listTar(await readFile(join(work, 'blob')))).map((e) => e.name)
    expect(names).toEqual(['d/', 'd/f'])
  })
})
