import { chown, mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { checkStorageOwner, storageMarkers } from '../src/index.js'
import { isRoot, tempDir } from './helpers.js'

describe('checkStorageOwner', () => {
  let dir: string
  let dirs: { stackerDir: string; rootsDir: string }
  const me = process.geteuid?.() ?? 0

  beforeEach(async () => {
    dir = await tempDir()
    dirs = { stackerDir: join(dir, '.stacker'), rootsDir: join(dir, 'roots') }
  })
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  async function makeMarkers(): Promise<void> {
    await mkdir(dirs.stackerDir, { recursive: true })
    await writeFile(join(dirs.stackerDir, 'storage.type'), 'overlay')
    await mkdir(join(dirs.rootsDir, '.store'), { recursive: true })
  }

  it('accepts dirs without an earlier run, and dirs of an earlier run of the same user', async () => {
    await checkStorageOwner(dirs, me)
    await makeMarkers()
    expect(storageMarkers(dirs)).toEqual([join(dirs.stackerDir, 'storage.type'), join(dirs.rootsDir, '.store')])
    await checkStorageOwner(dirs, me)
  })

  it.runIf(isRoot)('refuses storage of another user, naming the dir and the fix, and removes nothing', async () => {
    await makeMarkers()
    // Root finds a user's storage.
    await chown(join(dirs.stackerDir, 'storage.type'), 1234, 1234)
    await expect(checkStorageOwner(dirs, 0)).rejects.toThrow(
      `previous run of stacker found with uid 1234 in ${dirs.stackerDir}: run \`stacker clean\` there (as root or as uid 1234) before building as root`,
    )
    // A user finds root's roots dir (its own stacker dir passes).
    await expect(checkStorageOwner(dirs, 1234, { userName: 'lee' })).rejects.toThrow(
      `previous run of stacker found with uid 0 in ${dirs.rootsDir}: as root, run \`stacker clean\` there, then \`stacker unpriv-setup --username lee\` to hand the dirs to that user`,
    )
    // Another ordinary user.
    await chown(join(dirs.rootsDir, '.store'), 1234, 1234)
    await expect(checkStorageOwner(dirs, 999)).rejects.toThrow(
      `previous run of stacker found with uid 1234 in ${dirs.stackerDir}: run \`stacker clean\` there as uid 1234, or as root`,
    )
    expect((await readdir(dirs.rootsDir)).sort()).toEqual(['.store'])
    expect((await readdir(dirs.stackerDir)).sort()).toEqual(['storage.type'])
  })
})
