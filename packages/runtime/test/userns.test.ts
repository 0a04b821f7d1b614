import { chmod, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  allocateSubordinateRange,
  findIdMapper,
  parseSubordinateIds,
  pickRange,
  rangesOf,
  requireIdMapper,
  SUBORDINATE_RANGE_SIZE,
  userNamespaceCommand,
} from '../src/index.js'
import { buildSpec } from '../src/spec.js'
import { isRoot, removeDir, tempDir } from './helpers.js'

const user = { uid: 1001, gid: 1001, name: 'lee' }

describe('subordinate id files', () => {
  it('parses owner:start:count lines and skips comments, blanks and malformed lines', () => {
    const text =
      '# comment\n\nlee:100000:65536\n1001:300000:10\nbad line\nx:1:2:3\ny:-5:10\nz:5:0\n  ann:165536:65536  \n'
    expect(parseSubordinateIds(text)).toEqual([
      { owner: 'lee', start: 100000, count: 65536 },
      { owner: '1001', start: 300000, count: 10 },
      { owner: 'ann', start: 165536, count: 65536 },
    ])
  })

  it('finds a user by name or by uid, in file order', () => {
    const entries = parseSubordinateIds('ann:1:2\nlee:100000:65536\n1001:300000:70000\n')
    expect(rangesOf(entries, user)).toEqual([
      { start: 100000, count: 65536 },
      { start: 300000, count: 70000 },
    ])
    expect(rangesOf(entries, { uid: 1001, gid: 1001 })).toEqual([{ start: 300000, count: 70000 }])
    expect(rangesOf(entries, { uid: 7, gid: 7, name: 'nobody-here' })).toEqual([])
  })

  it('places a new range after every other, from 100000, never over the own id', () => {
    expect(allocateSubordinateRange([], 1000)).toEqual({ start: 100000, count: SUBORDINATE_RANGE_SIZE })
    const entries = parseSubordinateIds('a:100000:65536\nb:500000:10\nc:200000:65536\n')
    expect(allocateSubordinateRange(entries, 1000)).toEqual({ start: 500010, count: 65536 })
    expect(allocateSubordinateRange([], 120000)).toEqual({ start: 165536, count: 65536 })
  })

  it('maps the largest range, and says what to do when there is none or it is too small', () => {
    expect(
      pickRange(
        [
          { start: 5, count: 65535 },
          { start: 900000, count: 70000 },
        ],
        user,
        '/etc/subuid',
      ),
    ).toEqual({
      start: 900000,
      count: 70000,
    })
    expect(() => pickRange([], user, '/etc/subuid')).toThrow(
      'no idmap and not root: lee has no subordinate ids in /etc/subuid; run `stacker unpriv-setup --username lee` as root',
    )
    expect(() => pickRange([{ start: 5, count: 1000 }], user, '/etc/subgid')).toThrow(
      /largest range of lee in \/etc\/subgid has 1000 ids, 65535 are needed/,
    )
  })
})

describe('the namespace command', () => {
  it('maps the user to 0 and 65535 subordinate ids to 1..65535, dies with its parent, and runs argv', () => {
    const argv = userNamespaceCommand(
      { user, uids: { start: 100000, count: 65536 }, gids: { start: 200000, count: 65536 } },
      ['node', 'x', '--flag'],
    )
    expect(argv).toEqual([
      'setpriv',
      '--pdeathsig',
      'KILL',
      '--',
      'unshare',
      '--user',
      '--mount',
      '--propagation',
      'private',
      '--map-user=0',
      '--map-group=0',
      '--map-users=100000,1,65535',
      '--map-groups=200000,1,65535',
      '--',
      'node',
      'x',
      '--flag',
    ])
  })

  it('binds the host /sys read-only in a user namespace, where the kernel mounts no sysfs', () => {
    const spec = (inUserNamespace: boolean) =>
      buildSpec({
        rootfs: '/r',
        args: ['sh'],
        env: [],
        cwd: '/',
        hostname: 'h',
        terminal: false,
        user: { uid: 0, gid: 0 },
        nofile: { soft: 1, hard: 1 },
        extraMounts: [],
        capabilities: [],
        inUserNamespace,
      }) as { mounts: Array<{ destination: string; type: string; source: string; options: string[] }> }
    expect(spec(false).mounts.find((m) => m.destination === '/sys')).toEqual({
      destination: '/sys',
      type: 'sysfs',
      source: 'sysfs',
      options: ['nosuid', 'noexec', 'nodev', 'ro'],
    })
    expect(spec(true).mounts.find((m) => m.destination === '/sys')).toEqual({
      destination: '/sys',
      type: 'bind',
      source: '/sys',
      options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'],
    })
  })
})

describe('id mappers', () => {
  let dir: string
  const path = process.env.PATH
  beforeAll(async () => {
    dir = await tempDir()
  })
  afterAll(async () => {
    process.env.PATH = path
    await removeDir(dir)
  })

  it('are looked up in PATH, and one without setuid or capabilities is refused', async () => {
    await mkdir(join(dir, 'bin'))
    await writeFile(join(dir, 'bin', 'newuidmap'), '#!/bin/sh\n')
    await chmod(join(dir, 'bin', 'newuidmap'), 0o755)
    process.env.PATH = join(dir, 'bin')
    const plain = await findIdMapper('newuidmap')
    expect(plain).toEqual({ tool: 'newuidmap', path: join(dir, 'bin', 'newuidmap'), privilege: undefined })
    expect(() => requireIdMapper(plain)).toThrow(
      `${join(dir, 'bin', 'newuidmap')} does not have either setuid-root or security caps: reinstall the uidmap package`,
    )
    const missing = await findIdMapper('newgidmap')
    expect(missing).toEqual({ tool: 'newgidmap', path: undefined, privilege: undefined })
    expect(() => requireIdMapper(missing)).toThrow('newgidmap not found in path: install the uidmap package')
    process.env.PATH = path
  })

  // The bootstrap installs uidmap wherever the tests run as root.
  it.runIf(isRoot)("finds the system's setuid newuidmap and newgidmap", async () => {
    for (const tool of ['newuidmap', 'newgidmap'] as const)
      expect(await findIdMapper(tool)).toMatchObject({ tool, privilege: 'setuid-root' })
  })
})
