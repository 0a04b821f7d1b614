import { lstat, mkdir, mkdtemp, readFile, readdir, realpath, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Logger } from '@stacker/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { unprivSetup } from '../src/index.js'
import { rootsDirRequirement } from '../src/unpriv.js'

const isRoot = process.getuid?.() === 0

function recordingLogger(lines: string[]): Logger {
  const log = (m: string) => {
    lines.push(m)
  }
  return { debug: () => {}, info: log, warn: log, error: log, progress: () => {} } as unknown as Logger
}

// Against subordinate id files of its own: /etc is left alone.
describe.runIf(isRoot)('unprivSetup (needs root: chown)', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'stacker-unpriv-'))
  })
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  const options = (lines: string[]) => ({
    uid: '4242',
    gid: '4343',
    username: 'builder',
    env: {},
    dirs: { stackerDir: join(dir, 'w', '.stacker'), rootsDir: join(dir, 'w', 'roots'), ociDir: join(dir, 'w', 'oci') },
    logger: recordingLogger(lines),
    subuidFile: join(dir, 'subuid'),
    subgidFile: join(dir, 'subgid'),
  })

  it('adds a range after the others, hands over the dirs (oci as an empty layout), then changes nothing', async () => {
    await writeFile(join(dir, 'subuid'), 'ann:100000:65536\nbob:165536:65536')
    const lines: string[] = []
    await unprivSetup(options(lines))
    expect(await readFile(join(dir, 'subuid'), 'utf8')).toBe(
      'ann:100000:65536\nbob:165536:65536\nbuilder:231072:65536\n',
    )
    expect(await readFile(join(dir, 'subgid'), 'utf8')).toBe('builder:100000:65536\n')
    expect(lines).toContain(`added builder:231072:65536 to ${join(dir, 'subuid')}`)
    for (const d of ['.stacker', 'roots', 'oci']) {
      const st = await lstat(join(dir, 'w', d))
      expect([st.uid, st.gid]).toEqual([4242, 4343])
    }
    expect((await readdir(join(dir, 'w', 'oci'))).sort()).toEqual(['blobs', 'index.json', 'oci-layout'])
    expect((await lstat(join(dir, 'w', 'oci', 'index.json'))).uid).toBe(4242)

    const again: string[] = []
    await unprivSetup(options(again))
    expect(await readFile(join(dir, 'subuid'), 'utf8')).toBe(
      'ann:100000:65536\nbob:165536:65536\nbuilder:231072:65536\n',
    )
    expect(await readFile(join(dir, 'subgid'), 'utf8')).toBe('builder:100000:65536\n')
    expect(again).toContain(`builder already has subordinate ids 231072-296607 in ${join(dir, 'subuid')}`)
    expect(again).toContain(`${join(dir, 'w', 'roots')} already belongs to builder`)
  })

  it('refuses a stacker dir a root build left, changing nothing', async () => {
    const o = options([])
    await mkdir(o.dirs.stackerDir, { recursive: true })
    await writeFile(join(o.dirs.stackerDir, 'storage.type'), 'overlay')
    await expect(unprivSetup(o)).rejects.toThrow(
      `previous run of stacker found with uid 0 in ${o.dirs.stackerDir}: as root, run \`stacker clean\` there`,
    )
    expect((await readdir(dir)).sort()).toEqual(['w'])
  })
})

describe('rootsDirRequirement', () => {
  let dir: string
  beforeEach(async () => {
    dir = await realpath(await mkdtemp(join(tmpdir(), 'stacker-roots-')))
  })
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('passes the real path of a local dir, and fails one named through a symlink, naming the real path', async () => {
    await mkdir(join(dir, 'real', 'roots'), { recursive: true })
    await symlink('real', join(dir, 'link'))
    expect(await rootsDirRequirement(join(dir, 'real', 'roots'))).toEqual({
      what: 'roots dir',
      detail: `${join(dir, 'real', 'roots')} (no symlinks, not NFS)`,
    })
    const linked = await rootsDirRequirement(join(dir, 'link', 'roots'))
    expect(linked.problem).toBe(
      `${join(dir, 'link', 'roots')}: roots dir (--roots-dir) path uses symbolic links, use "${join(dir, 'real', 'roots')}" instead`,
    )
  })
})
