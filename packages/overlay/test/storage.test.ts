import { mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { OverlayStore, checkOverlay, initStorage } from '../src/index.js'
import { cleanDir, isRoot, tempDir } from './helpers.js'

describe('initStorage', () => {
  let dir: string
  beforeEach(async () => {
    dir = await tempDir('stacker-init-')
  })
  afterEach(async () => cleanDir(dir))

  it('creates the roots dir and records the storage type, idempotently', async () => {
    const opts = { stackerDir: join(dir, '.stacker'), rootsDir: join(dir, 'roots') }
    await initStorage(opts)
    await initStorage(opts)
    expect(await readFile(join(dir, '.stacker', 'storage.type'), 'utf8')).toBe('overlay')
    expect((await readdir(dir)).sort()).toEqual(['.stacker', 'roots'])
  })

  it('refuses a stacker dir of another storage type', async () => {
    await mkdir(join(dir, '.stacker'))
    await writeFile(join(dir, '.stacker', 'storage.type'), 'btrfs')
    await expect(initStorage({ stackerDir: join(dir, '.stacker'), rootsDir: join(dir, 'roots') })).rejects.toThrow(
      'previous storage type btrfs not compatible with requested storage overlay',
    )
  })

  it("refuses ':' in the roots dir as the user gave it", async () => {
    await expect(
      initStorage({ stackerDir: join(dir, '.stacker'), rootsDir: join(dir, 'a:b'), rootsDirArg: 'a:b' }),
    ).rejects.toMatchObject({
      code: 'USAGE',
      message: "using ':' in the name of --roots-dir (a:b) is forbidden due to overlay constraints",
    })
    expect(await readdir(dir)).toEqual([])
  })
})

describe.runIf(isRoot)('checkOverlay', () => {
  let dir: string
  beforeEach(async () => {
    dir = await tempDir('stacker-check-')
  })
  afterEach(async () => cleanDir(dir))

  it('passes here and leaves nothing behind', async () => {
    await checkOverlay(join(dir, 'roots'))
    expect(await readdir(join(dir, 'roots'))).toEqual([])
  })

  it('records a pass in the cache file and reuses it while nothing it depends on changed', async () => {
    const roots = join(dir, 'roots')
    const cacheFile = join(dir, '.stacker', 'overlay-check.json')
    await checkOverlay(roots, { cacheFile })
    const key = JSON.parse(await readFile(cacheFile, 'utf8'))
    expect(key).toMatchObject({ rootsDir: roots, uid: 0, bootId: expect.stringMatching(/\S/) })
    const first = await stat(cacheFile)
    await checkOverlay(roots, { cacheFile })
    // Reused: not rewritten (a rewrite replaces the file, so the inode changes).
    expect((await stat(cacheFile)).ino).toBe(first.ino)
    expect(await readdir(roots)).toEqual([])

    // A record for another filesystem (here: another inode) is not trusted: checked again, rewritten.
    await writeFile(cacheFile, `${JSON.stringify({ ...key, ino: '1' })}\n`)
    await checkOverlay(roots, { cacheFile })
    expect(JSON.parse(await readFile(cacheFile, 'utf8'))).toEqual(key)
  })

  it('records nothing for a roots dir that fails the check', async () => {
    const store = await OverlayStore.open(join(dir, 'outer'))
    const snap = await store.snapshot([])
    try {
      const inner = join(snap.target, 'roots')
      const cacheFile = join(dir, 'overlay-check.json')
      await expect(checkOverlay(inner, { cacheFile })).rejects.toMatchObject({ code: 'MOUNT' })
      await expect(readFile(cacheFile, 'utf8')).rejects.toMatchObject({ code: 'ENOENT' })
    } finally {
      await snap.release()
    }
  })

  it('refuses a roots dir on overlayfs', async () => {
    const store = await OverlayStore.open(join(dir, 'outer'))
    const snap = await store.snapshot([])
    try {
      const inner = join(snap.target, 'roots')
      await expect(checkOverlay(inner)).rejects.toMatchObject({
        code: 'MOUNT',
        message: `can't create overlay whiteout on underlying overlayfs in ${inner}`,
      })
      expect(await readdir(inner)).toEqual([])
    } finally {
      await snap.release()
    }
  })
})
