// Unprivileged operation, run for real: a user made for the test gets its subordinate ids from
// `stacker unpriv-setup` and runs the CLI itself (through setpriv, as that user); root builds the same
// stackerfiles for comparison. The user and its ids are removed afterwards, failures included.
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { getAttribute, setAttribute } from '@napi-rs/xattr'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  blobPath,
  createTestUser,
  expectOk,
  fixtures,
  layerTarEntries,
  processesOf,
  projectsPerTest,
  type ProjectFile,
  readIndex,
  readManifest,
  type Registry,
  REF_NAME,
  SUBGID_FILE,
  SUBUID_FILE,
  stacker,
  stackerAs,
  startRegistry,
  startStackerAs,
  type TempProject,
  type TestUser,
  tagDigests,
  unsquashfsExtract,
  unsquashfsList,
  waitUntil,
  withErofsMount,
} from './helpers/index.js'

const isRoot = process.getuid?.() === 0
const SDE = '1700000000'

// The security.capability value of `setcap cap_net_raw+ep`: revision 2, effective, bit 13 permitted.
const NET_RAW_CAPS = Buffer.from('AQAAAgAgAAAAAAAAAAAAAAAAAAA=', 'base64')

// Several layers: a base with imports (one with dest), a build_only middle of a `built` chain, a top
// with an opaque dir, and a tar base whose files carry xattrs and a non-root owner. Paths are relative,
// so the text (kept in an annotation) is the same in every project.
const STACKER_YAML = `
base:
  from:
    type: oci
    url: busybox:latest
  imports:
    - imported.txt
    - path: dest-file.txt
      dest: /opt/dest/
  run: |
    cp /stacker/imports/imported.txt /imported.txt
    touch /root-file
    mkdir -p /home/u /opaque/old
    echo u > /home/u/file
    chown -R 1000:1000 /home/u
    echo s > /setuid
    chmod 4755 /setuid
    rm /etc/group
mid:
  build_only: true
  from:
    type: built
    tag: base
  run: |
    rm /root-file
    echo mid > /mid
top:
  from:
    type: built
    tag: mid
  run: |
    rm -rf /opaque
    mkdir /opaque
    echo new > /opaque/new
    echo top > /top
caps:
  from:
    type: tar
    url: caps.tar.gz
`

// A base read from a squashfs image with verity: the kernel mounts no squashfs in a user namespace.
const FROM_SQUASHFS_YAML = `
fromsq:
  from:
    type: oci
    url: oci:top-squashfs
  run: |
    [ -f /top ] && [ ! -e /root-file ] && [ -f /opaque/new ] && [ ! -e /opaque/old ] && [ ! -e /etc/group ]
    echo ok > /fromsq
`

// More builds on squashfs bases, each in a process of its own.
const LATER_YAML = `
later:
  from:
    type: oci
    url: oci:top-squashfs
  run: |
    [ -f /top ] && echo "later: top is here"
`

const BAD_YAML = `
bad:
  from:
    type: oci
    url: bad:caps-squashfs
`

// Builds on erofs bases with verity: the kernel mounts no erofs in a user namespace either. As tar
// and squashfs layers, the bases are converted from what was read of them, so the digests show
// whether that matches the kernel's mount (hardlinks of busybox, whiteouts, opaque dirs, owners,
// setuid, security.capability and user.* xattrs, times).
const FROM_EROFS_YAML = `
fromerofs:
  from:
    type: oci
    url: oci:top-erofs
  run: |
    [ -f /top ] && [ ! -e /root-file ] && [ -f /opaque/new ] && [ ! -e /opaque/old ] && [ ! -e /etc/group ]
    [ "$(stat -c %i /bin/ls)" = "$(stat -c %i /bin/cat)" ] && [ "$(stat -c %a:%u /setuid)" = 4755:0 ]
    echo ok > /fromerofs
fromcaps:
  from:
    type: oci
    url: oci:caps-erofs
`

const BAD_EROFS_YAML = `
bad:
  from:
    type: oci
    url: bad:caps-erofs
`

const SLOW_YAML = `
slow:
  from:
    type: oci
    url: busybox:latest
  binds:
    - marks -> /marks
  run: |
    touch /marks/started-\${{ROUND}}
    sleep \${{NAP}}
    echo \${{ROUND}} > /round
`

const LAYER_TYPES = ['--layer-type', 'tar', '--layer-type', 'squashfs', '--layer-type', 'erofs']

describe.skipIf(!isRoot)('unprivileged operation (needs root to create the user)', () => {
  let user: TestUser
  let capsTar: Buffer
  const project = projectsPerTest({ checkMounts: true })

  beforeAll(async () => {
    user = await createTestUser()
    capsTar = await makeCapsTar()
  })
  afterAll(async () => {
    await user?.remove()
  })

  /** Files of a build: the stackerfiles, a copy of the busybox base, imports and the xattr tarball. */
  function files(extra: Record<string, ProjectFile> = {}): Record<string, ProjectFile> {
    return {
      'stacker.yaml': STACKER_YAML,
      'from-squashfs.yaml': FROM_SQUASHFS_YAML,
      'imported.txt': 'imported\n',
      'dest-file.txt': 'dest\n',
      'caps.tar.gz': capsTar,
      'later.yaml': LATER_YAML,
      'bad.yaml': BAD_YAML,
      'from-erofs.yaml': FROM_EROFS_YAML,
      'bad-erofs.yaml': BAD_EROFS_YAML,
      ...extra,
    }
  }

  async function withBase(p: TempProject): Promise<TempProject> {
    await execa('cp', ['-a', fixtures().busyboxLayout, p.path('busybox')])
    return p
  }

  /** A project the user owns, set up as upstream documents it: unpriv-setup, run by root, there. */
  async function userProject(extra: Record<string, ProjectFile> = {}): Promise<TempProject> {
    const p = await withBase(await project(files(extra)))
    await execa('chown', ['-R', `${user.uid}:${user.gid}`, p.dir])
    expectOk(await stacker(['unpriv-setup', '--username', user.name], { cwd: p.dir }))
    return p
  }

  const asUser = (p: TempProject, args: string[], env: Record<string, string> = {}) =>
    stackerAs(user, args, { cwd: p.dir, env: { SOURCE_DATE_EPOCH: SDE, ...env } })

  /** Uids of the user and of its namespace's other ids (the subordinate range). */
  async function userIds(): Promise<(uid: number) => boolean> {
    const line = (await readFile(SUBUID_FILE, 'utf8')).split('\n').find((l) => l.startsWith(`${user.name}:`))
    const [, start, count] = (line ?? ':-1:0').split(':').map(Number)
    return (uid) => uid === user.uid || (uid >= (start as number) && uid < (start as number) + (count as number))
  }

  it('unpriv-setup gives the user 65536 subordinate ids and its dirs, says so, and changes nothing when run again', async () => {
    const p = await withBase(await project(files()))
    await execa('chown', [`${user.uid}:${user.gid}`, p.dir])
    const before = { uid: await readFile(SUBUID_FILE, 'utf8'), gid: await readFile(SUBGID_FILE, 'utf8') }
    const hadRange = before.uid.split('\n').some((l) => l.startsWith(`${user.name}:`))

    const r = expectOk(await stacker(['unpriv-setup', '--username', user.name], { cwd: p.dir }))
    const after = { uid: await readFile(SUBUID_FILE, 'utf8'), gid: await readFile(SUBGID_FILE, 'utf8') }
    for (const [kind, file] of [
      ['uid', SUBUID_FILE],
      ['gid', SUBGID_FILE],
    ] as const) {
      const mine = after[kind].split('\n').filter((l) => l.startsWith(`${user.name}:`))
      expect(mine).toHaveLength(1)
      const [, start, count] = (mine[0] as string).split(':').map(Number) as [number, number, number]
      expect(count).toBe(65536)
      expect(start).toBeGreaterThanOrEqual(100000)
      // Outside every other range.
      for (const l of after[kind].split('\n').filter((x) => x.includes(':') && !x.startsWith(`${user.name}:`))) {
        const [, s, c] = l.split(':').map(Number) as [string, number, number]
        expect(start + count <= s || s + c <= start, `${mine[0]} overlaps ${l}`).toBe(true)
      }
      if (!hadRange) expect(r.stderr).toContain(`added ${mine[0]} to ${file}`)
    }
    for (const d of ['.stacker', 'roots', 'oci']) {
      const st = await lstat(p.path(d))
      expect([st.isDirectory(), st.uid, st.gid], d).toEqual([true, user.uid, user.gid])
      expect(r.stderr).toContain(`created ${p.path(d)} to ${user.name}`)
    }

    const again = expectOk(await stacker(['unpriv-setup', '--username', user.name], { cwd: p.dir }))
    expect(await readFile(SUBUID_FILE, 'utf8')).toBe(after.uid)
    expect(await readFile(SUBGID_FILE, 'utf8')).toBe(after.gid)
    expect(again.stderr).toContain(`${user.name} already has subordinate ids`)
    expect(again.stderr).toContain(`${p.path('roots')} already belongs to ${user.name}`)
  })

  it('builds as the user, byte-identical to root, and rebuilds from cache', async () => {
    const mine = await userProject()
    const roots = await withBase(await project(files()))
    const build = ['build', ...LAYER_TYPES]
    const second = ['build', '-f', 'from-squashfs.yaml', '--layer-type', 'squashfs', '--layer-type', 'tar']

    expectOk(await stacker(build, { cwd: roots.dir, env: { SOURCE_DATE_EPOCH: SDE } }))
    expectOk(await stacker(second, { cwd: roots.dir, env: { SOURCE_DATE_EPOCH: SDE } }))
    expectOk(await asUser(mine, build))
    // With --debug, the squashfs base shows how it was opened: extracted, as no kernel mount is allowed.
    const sq = expectOk(await asUser(mine, ['--debug', ...second]))
    expect(sq.stderr).toMatch(/opened fsimg_[0-9a-f]+ by extract/)
    expect(sq.stderr).not.toMatch(/by kmount/)

    const rootTags = await tagDigests(roots.path('oci'))
    const userTags = await tagDigests(mine.path('oci'))
    expect(Object.keys(rootTags).sort()).toEqual(
      [
        'base',
        'base-squashfs',
        'base-erofs',
        'top',
        'top-squashfs',
        'top-erofs',
        'caps',
        'caps-squashfs',
        'caps-erofs',
        'fromsq',
        'fromsq-squashfs',
      ].sort(),
    )
    expect(userTags).toEqual(rootTags)

    // Everything the user's build wrote on the host belongs to the user or its subordinate ids.
    const ours = await userIds()
    const find = await execa('find', [mine.dir, '-printf', '%U %p\n'])
    const strangers = find.stdout.split('\n').filter((l) => l !== '' && !ours(Number(l.split(' ')[0])))
    expect(strangers).toEqual([])

    // A rebuild finds every layer cached and changes no tag.
    const again = expectOk(await asUser(mine, build))
    for (const name of ['base', 'top', 'caps']) expect(again.stderr).toContain(`found cached layer ${name}`)
    expect(await tagDigests(mine.path('oci'))).toEqual(userTags)

    // A later build on the same squashfs base, in a process of its own, finds the extracted
    // content still there (the end of the first process once emptied it).
    const later = expectOk(await asUser(mine, ['build', '-f', 'later.yaml']))
    expect(later.stdout).toContain('later: top is here')

    // A corrupt copy of a base blob is refused and leaves nothing behind that would fail later builds.
    await execa('cp', ['-a', mine.path('oci'), mine.path('bad')])
    const blob = blobPath(mine.path('bad'), await lastLayer(mine.path('bad'), 'caps-squashfs'))
    const bytes = await readFile(blob)
    bytes[100] = (bytes[100] as number) ^ 0xff
    await writeFile(blob, bytes)
    const bad = await asUser(mine, ['build', '-f', 'bad.yaml'])
    expect(bad.exitCode).toBe(1)
    expect(bad.stderr).toMatch(/^error: blob sha256:[0-9a-f]{64} is corrupt: .* has digest sha256:[0-9a-f]{64}$/m)
    await execa('rm', ['-rf', mine.path('bad')])
    await execa('cp', ['-a', mine.path('oci'), mine.path('bad')])
    expectOk(await asUser(mine, ['build', '-f', 'bad.yaml']))
  })

  it('keeps ownership, setuid bits, xattrs and whiteouts in tar, squashfs and erofs layers', async () => {
    const p = await userProject()
    expectOk(await asUser(p, ['build', ...LAYER_TYPES]))
    const oci = p.path('oci')

    const tar = new Map<string, Awaited<ReturnType<typeof layerTarEntries>>[number]>()
    for (const l of (await readManifest(oci, 'top')).layers.slice(1))
      for (const e of await layerTarEntries(oci, l.digest)) tar.set(e.name.replace(/^\.?\//, '').replace(/\/$/, ''), e)
    expect(tar.get('root-file')).toMatchObject({ uid: 0, gid: 0 })
    expect(tar.get('imported.txt')).toMatchObject({ uid: 0, gid: 0 })
    expect(tar.get('opt/dest/dest-file.txt')).toMatchObject({ uid: 0, gid: 0 })
    expect(tar.get('home/u/file')).toMatchObject({ uid: 1000, gid: 1000 })
    expect(tar.get('home/u')).toMatchObject({ uid: 1000, gid: 1000 })
    expect(tar.get('setuid')?.mode).toBe(0o4755)
    expect(tar.get('etc/.wh.group')).toBeDefined()
    expect(tar.get('.wh.root-file')).toBeDefined()
    expect(tar.get('opaque/.wh..wh..opq')).toBeDefined()

    const caps = new Map<string, Awaited<ReturnType<typeof layerTarEntries>>[number]>()
    for (const l of (await readManifest(oci, 'caps')).layers)
      for (const e of await layerTarEntries(oci, l.digest)) caps.set(e.name.replace(/^\.?\//, '').replace(/\/$/, ''), e)
    expect(caps.get('cap-bin')?.pax?.['SCHILY.xattr.user.note']).toBe('hello')
    expect(Buffer.from(caps.get('cap-bin')?.pax?.['SCHILY.xattr.security.capability'] ?? '', 'latin1')).toHaveLength(
      NET_RAW_CAPS.length,
    )
    expect(caps.get('data')?.pax?.['SCHILY.xattr.user.dirnote']).toBe('dir')
    expect(caps.get('data/owned')).toMatchObject({ uid: 1000, gid: 1000 })

    const sqLayers = await Promise.all(
      (await readManifest(oci, 'top-squashfs')).layers.map(
        async (l) => new Map((await unsquashfsList(blobPath(oci, l.digest))).map((e) => [e.path, e])),
      ),
    )
    const baseSq = sqLayers.find((m) => m.has('/setuid'))
    const midSq = sqLayers.find((m) => m.has('/mid'))
    expect(baseSq?.get('/root-file')).toMatchObject({ type: 'file', uid: 0, gid: 0 })
    expect(baseSq?.get('/home/u/file')).toMatchObject({ uid: 1000, gid: 1000 })
    expect(baseSq?.get('/setuid')?.mode).toBe(0o4755)
    // squashfs layers hold whiteouts as overlayfs does: 0:0 character devices.
    expect(baseSq?.get('/etc/group')).toMatchObject({ type: 'character-device', major: 0, minor: 0 })
    expect(midSq?.get('/root-file')).toMatchObject({ type: 'character-device', major: 0, minor: 0 })

    // The xattrs of the caps base, user.* and security.capability alike, in its squashfs and erofs
    // layers, read back through unsquashfs and a kernel mount.
    const xattrsOf = async (root: string) => ({
      note: (await getAttribute(join(root, 'cap-bin'), 'user.note'))?.toString(),
      caps: (await getAttribute(join(root, 'cap-bin'), 'security.capability'))?.toString('base64'),
      dirnote: (await getAttribute(join(root, 'data'), 'user.dirnote'))?.toString(),
    })
    const want = { note: 'hello', caps: NET_RAW_CAPS.toString('base64'), dirnote: 'dir' }
    const [capsSq] = (await readManifest(oci, 'caps-squashfs')).layers
    await unsquashfsExtract(blobPath(oci, capsSq?.digest as string), p.path('x-caps-sq'))
    expect(await xattrsOf(p.path('x-caps-sq'))).toEqual(want)
    const [capsErofs] = (await readManifest(oci, 'caps-erofs')).layers
    expect(await withErofsMount(blobPath(oci, capsErofs?.digest as string), p.path('x-caps-erofs'), xattrsOf)).toEqual(
      want,
    )

    // Verity still guards a squashfs base read without a kernel mount: a root hash that does not
    // match the image fails before anything is extracted.
    await execa('cp', ['-a', oci, p.path('bad')])
    await setVerityRootHash(p.path('bad'), 'caps-squashfs', 'ab'.repeat(32))
    const bad = await asUser(p, ['build', '-f', 'bad.yaml'])
    expect(bad.exitCode).toBe(1)
    expect(bad.stderr).toMatch(/^error: invalid root hash (ab){32} for .*: verification failed$/m)
  })

  it('builds on erofs bases as the user, byte-identical to root, with verity still checked', async () => {
    const mine = await userProject()
    const roots = await withBase(await project(files()))
    const bases = ['build', '--layer-type', 'tar', '--layer-type', 'erofs']
    const onErofs = ['build', '-f', 'from-erofs.yaml', '--layer-type', 'tar', '--layer-type', 'squashfs']
    expectOk(await stacker(bases, { cwd: roots.dir, env: { SOURCE_DATE_EPOCH: SDE } }))
    const asRoot = expectOk(await stacker(['--debug', ...onErofs], { cwd: roots.dir, env: { SOURCE_DATE_EPOCH: SDE } }))
    expect(asRoot.stderr).toMatch(/opened fsimg_[0-9a-f]+ by kmount/)
    expectOk(await asUser(mine, bases))
    // Read without the kernel, as it mounts no erofs in a user namespace.
    const er = expectOk(await asUser(mine, ['--debug', ...onErofs]))
    expect(er.stderr).toMatch(/opened fsimg_[0-9a-f]+ by extract/)
    expect(er.stderr).not.toMatch(/by kmount/)

    const rootTags = await tagDigests(roots.path('oci'))
    expect(Object.keys(rootTags).sort()).toEqual(
      [
        'base',
        'base-erofs',
        'top',
        'top-erofs',
        'caps',
        'caps-erofs',
        'fromerofs',
        'fromerofs-squashfs',
        'fromcaps',
        'fromcaps-squashfs',
      ].sort(),
    )
    expect(await tagDigests(mine.path('oci'))).toEqual(rootTags)
    // The conversion of caps-erofs kept its xattrs.
    const caps = new Map<string, Awaited<ReturnType<typeof layerTarEntries>>[number]>()
    for (const l of (await readManifest(mine.path('oci'), 'fromcaps')).layers)
      for (const e of await layerTarEntries(mine.path('oci'), l.digest)) caps.set(e.name.replace(/^\.?\//, ''), e)
    expect(caps.get('cap-bin')?.pax?.['SCHILY.xattr.user.note']).toBe('hello')
    expect(Buffer.from(caps.get('cap-bin')?.pax?.['SCHILY.xattr.security.capability'] ?? '', 'latin1')).toEqual(
      NET_RAW_CAPS,
    )

    // An erofs base whose verity root hash does not match fails before anything is extracted. In a
    // project of its own: the user's has the good image of that blob extracted already.
    const fresh = await userProject()
    await execa('cp', ['-a', mine.path('oci'), fresh.path('bad')])
    await setVerityRootHash(fresh.path('bad'), 'caps-erofs', 'ab'.repeat(32))
    const bad = await asUser(fresh, ['build', '-f', 'bad-erofs.yaml'])
    expect(bad.exitCode).toBe(1)
    expect(bad.stderr).toMatch(/^error: invalid root hash (ab){32} for .*: verification failed$/m)
  })

  it('recursive-builds, publishes, chroots, grabs, inspects and cleans as the user', async () => {
    const p = await userProject()
    expectOk(await asUser(p, ['build', '--layer-type', 'tar', '--layer-type', 'squashfs']))
    await p.write(
      'sub/stacker.yaml',
      `rec:\n  from:\n    type: oci\n    url: ${p.path('busybox')}:latest\n  run: echo "rec as $(id -u)" > /rec\n`,
    )
    await execa('chown', ['-R', `${user.uid}:${user.gid}`, p.path('sub')])
    const rec = expectOk(await asUser(p, ['recursive-build', '--search-dir', 'sub']))
    expect(rec.stderr).toContain('filesystem rec built successfully')
    const recFiles = new Map<string, string | undefined>()
    for (const l of (await readManifest(p.path('oci'), 'rec')).layers)
      for (const e of await layerTarEntries(p.path('oci'), l.digest, { withContent: true }))
        recFiles.set(e.name.replace(/^\.?\//, ''), e.content?.toString())
    expect(recFiles.get('rec')).toBe('rec as 0\n')
    let registry: Registry | undefined
    try {
      registry = await startRegistry()
      const url = `docker://${registry.host}/unpriv`
      expectOk(await asUser(p, ['publish', '--url', url, '--tag', 't1', '--skip-tls', '--layer-type', 'squashfs']))
      const local = await tagDigests(p.path('oci'))
      for (const name of ['base', 'top']) {
        const raw = await execa('skopeo', ['inspect', '--raw', '--tls-verify=false', `${url}/${name}:t1-squashfs`])
        const digest = `sha256:${createHash('sha256').update(raw.stdout).digest('hex')}`
        expect(digest, name).toBe(local[`${name}-squashfs`])
      }
    } finally {
      await registry?.stop()
    }

    const sh = await stackerAs(user, ['chroot', 'top'], {
      cwd: p.dir,
      input: '[ -f /top ] && echo "uid=$(id -u) owner=$(stat -c %u /home/u/file)"\n',
    })
    expectOk(sh)
    expect(sh.stderr).toContain('This chroot is temporary')
    expect(sh.stdout).toContain('uid=0 owner=1000')

    await mkdir(p.path('grabbed'))
    await chmod(p.path('grabbed'), 0o777)
    expectOk(await stackerAs(user, ['--work-dir', p.dir, 'grab', 'top:/home/u/file'], { cwd: p.path('grabbed') }))
    const grabbed = await lstat(p.path('grabbed/file'))
    expect([grabbed.uid, await readFile(p.path('grabbed/file'), 'utf8')]).toEqual([user.uid, 'u\n'])

    const inspect = expectOk(await asUser(p, ['inspect', 'top']))
    expect(inspect.stdout).toMatch(/^top\n\tlayer 0: /)

    expectOk(await asUser(p, ['clean']))
    for (const d of ['.stacker', 'roots', 'oci']) expect(existsSync(p.path(d)), d).toBe(false)
  })

  it('refuses dirs of the other privilege in one line, naming the dir and the fix, and deletes nothing', async () => {
    const p = await userProject()
    expectOk(await asUser(p, ['build']))
    const userTags = await tagDigests(p.path('oci'))
    const asRoot = await stacker(['build'], { cwd: p.dir })
    expect(asRoot.exitCode).toBe(1)
    expect(asRoot.stderr.trim().split('\n')).toEqual([
      `error: previous run of stacker found with uid ${user.uid} in ${p.path('.stacker')}: run \`stacker clean\` there (as root or as uid ${user.uid}) before building as root`,
    ])
    expect(await tagDigests(p.path('oci'))).toEqual(userTags)
    expect(await readdir(p.path('roots'))).toContain('.store')

    const r = await withBase(await project(files()))
    expectOk(await stacker(['build'], { cwd: r.dir }))
    await execa('chmod', ['-R', 'a+rwX', r.dir])
    const rootTags = await tagDigests(r.path('oci'))
    const asUserThere = await asUser(r, ['build'])
    expect(asUserThere.exitCode).toBe(1)
    expect(asUserThere.stderr.trim().split('\n')).toEqual([
      `error: previous run of stacker found with uid 0 in ${r.path('.stacker')}: as root, run \`stacker clean\` there, then \`stacker unpriv-setup --username ${user.name}\` to hand the dirs to that user`,
    ])
    expect(await tagDigests(r.path('oci'))).toEqual(rootTags)

    // Root may clean what the user built; then the dir is root's to build in.
    expectOk(await stacker(['clean'], { cwd: p.dir }))
    expectOk(await stacker(['build'], { cwd: p.dir }))
  })

  it('a base owned by ids the namespace does not map fails clearly', async () => {
    const p = await userProject({
      'stacker.yaml': 'far:\n  from:\n    type: tar\n    url: far.tar\n',
    })
    const tree = p.path('far-tree')
    await mkdir(join(tree, 'd'), { recursive: true })
    await writeFile(join(tree, 'd', 'f'), 'far\n')
    await execa('chown', ['-R', '70000:70000', tree])
    await execa('tar', ['--numeric-owner', '-cf', p.path('far.tar'), '-C', tree, '.'])
    await execa('chown', [`${user.uid}:${user.gid}`, p.path('far.tar')])
    const r = await asUser(p, ['build'])
    expect(r.exitCode).toBe(1)
    const errors = r.stderr.split('\n').filter((l) => l.startsWith('error:'))
    expect(errors).toHaveLength(1)
    expect(errors[0]).toContain('owner 70000:70000 is outside the ids this user namespace maps')
  })

  /** A project whose build naps in its step after leaving a mark; args(round, nap) builds it. */
  async function slowProject(): Promise<{ p: TempProject; args: (round: number, nap: number) => string[] }> {
    const p = await userProject({ 'slow.yaml': SLOW_YAML })
    await mkdir(p.path('marks'))
    await execa('chown', [`${user.uid}:${user.gid}`, p.path('marks')])
    const args = (round: number, nap: number) => [
      'build',
      '-f',
      'slow.yaml',
      '--substitute',
      `ROUND=${round}`,
      '--substitute',
      `NAP=${nap}`,
    ]
    return { p, args }
  }

  async function startAndWait(p: TempProject, args: string[], round: number) {
    const running = startStackerAs(user, args, { cwd: p.dir })
    await waitUntil(async () => existsSync(p.path(`marks/started-${round}`)), {
      what: 'the step of the build to stop',
      timeoutMs: 120_000,
      gaveUp: () => (running.exitCode === null ? undefined : `stacker exited ${running.exitCode}`),
    })
    // Wrapped: an async function would wait for the (thenable) process itself.
    return { running }
  }

  it('survives SIGKILL mid-build: the next build succeeds and nothing of the killed one stays', async () => {
    const { p, args } = await slowProject()
    const { running: killed } = await startAndWait(p, args(1, 53), 1)
    killed.kill('SIGKILL')
    const k = await killed
    expect(k.signal).toBe('SIGKILL')

    expectOk(await asUser(p, args(2, 0)))
    expect(await readIndex(p.path('oci')).then((i) => i.manifests.map((m) => m.annotations?.[REF_NAME]))).toEqual([
      'slow',
    ])
    const ours = await userIds()
    // The killed build's container is stopped by the next build; its runc then exits.
    await waitUntil(async () => (await processesOf(ours)).length === 0, {
      what: `processes of ${user.name} after the next build: ${(await processesOf(ours)).join('; ')}`,
      timeoutMs: 30_000,
    })
    assertNoMountsUnder(p.dir)
  })

  it('passes SIGTERM on to the namespace, which stops the build, cleans up and reports once', async () => {
    const { p, args } = await slowProject()
    const { running: stopped } = await startAndWait(p, args(1, 59), 1)
    stopped.kill('SIGTERM')
    const r = await stopped
    expect(r.exitCode).toBe(143)
    expect(
      String(r.stderr)
        .split('\n')
        .filter((l) => l.startsWith('error:')),
    ).toEqual(['error: interrupted by SIGTERM'])
    // It exits only once the namespace's process has unwound: nothing of the build is left.
    expect(await processesOf(await userIds())).toEqual([])
    expectOk(await asUser(p, args(2, 0)))
  })

  it('without subordinate ids or newuidmap, says what to do; check reports each requirement', async () => {
    const other = await createTestUser()
    try {
      const p = await withBase(await project(files()))
      await execa('chown', ['-R', `${other.uid}:${other.gid}`, p.dir])
      const noRange = await stackerAs(other, ['build'], { cwd: p.dir })
      expect(noRange.exitCode).toBe(1)
      expect(noRange.stderr.trim()).toBe(
        `error: no idmap and not root: ${other.name} has no subordinate ids in /etc/subuid; run \`stacker unpriv-setup --username ${other.name}\` as root`,
      )
      const noTool = await stackerAs(other, ['build'], { cwd: p.dir, env: { PATH: '/nonexistent' } })
      expect(noTool.exitCode).toBe(1)
      expect(noTool.stderr.trim()).toBe('error: newuidmap not found in path: install the uidmap package')

      const bad = await stackerAs(other, ['check'], { cwd: p.dir })
      expect(bad.exitCode).toBe(1)
      const badLines = bad.stderr.trim().split('\n')
      expect(badLines).toContain(
        `subuid: no idmap and not root: ${other.name} has no subordinate ids in /etc/subuid; run \`stacker unpriv-setup --username ${other.name}\` as root`,
      )
      expect(badLines).toContain('newuidmap: ok (/usr/bin/newuidmap, setuid-root)')
      expect(badLines.at(-1)).toMatch(/^error: no idmap and not root: .*subordinate ids in \/etc\/subuid/)

      // With ids but in a dir it may not write, the user is told to run unpriv-setup there.
      const q = await withBase(await project(files()))
      await chmod(q.dir, 0o755)
      const notMine = await stackerAs(user, ['build'], { cwd: q.dir })
      expect(notMine.exitCode).toBe(1)
      expect(notMine.stderr.trim()).toBe(
        `error: ${q.dir} is not writable by ${user.name}, so ${q.path('.stacker')} cannot be used: as root, run \`stacker unpriv-setup --username ${user.name}\` there (or choose dirs ${user.name} owns)`,
      )

      expectOk(await stacker(['unpriv-setup', '--username', other.name], { cwd: p.dir }))
      const good = expectOk(await stackerAs(other, ['check'], { cwd: p.dir }))
      const lines = good.stderr.trim().split('\n')
      for (const what of [
        'roots dir',
        'newuidmap',
        'newgidmap',
        'subuid',
        'subgid',
        'user namespaces',
        'overlay in a user namespace',
        'runc',
      ])
        expect(
          lines.some((l) => l.startsWith(`${what}: ok`)),
          `${what} in\n${good.stderr}`,
        ).toBe(true)
      expect(lines.some((l) => l.startsWith('fuse for squashfs bases: '))).toBe(true)
    } finally {
      await other.remove()
    }
  })
})

/** The digest of the top layer of `tag`. */
async function lastLayer(layout: string, tag: string): Promise<string> {
  const layers = (await readManifest(layout, tag)).layers
  return (layers[layers.length - 1] as { digest: string }).digest
}

const VERITY_ANNOTATION = 'io.stackeroci.stacker.atomfs_verity_root_hash'

/** Rewrites `tag` in `layout` (as root, keeping owners) so that its top layer claims `hash` as its
 *  verity root hash: a new manifest blob, and the index pointing at it. */
async function setVerityRootHash(layout: string, tag: string, hash: string): Promise<void> {
  const index = await readIndex(layout)
  const entry = index.manifests.find((m) => m.annotations?.[REF_NAME] === tag)
  if (!entry) throw new Error(`no ${tag} in ${layout}`)
  const manifest = JSON.parse(await readFile(blobPath(layout, entry.digest), 'utf8')) as {
    layers: Array<{ annotations?: Record<string, string> }>
  }
  const top = manifest.layers[manifest.layers.length - 1] as { annotations?: Record<string, string> }
  if (!top.annotations?.[VERITY_ANNOTATION]) throw new Error(`${tag} has no verity annotation`)
  top.annotations[VERITY_ANNOTATION] = hash
  const body = Buffer.from(JSON.stringify(manifest))
  const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`
  const owner = await lstat(blobPath(layout, entry.digest))
  await writeFile(blobPath(layout, digest), body)
  await execa('chown', [`${owner.uid}:${owner.gid}`, blobPath(layout, digest)])
  Object.assign(entry, { digest, size: body.length })
  await writeFile(join(layout, 'index.json'), JSON.stringify(index))
}

/** A gzip tarball (GNU tar, root-owned, sorted, fixed times) whose files carry xattrs: a file with
 *  user.note and security.capability, a dir with user.dirnote, and a file owned by 1000. */
async function makeCapsTar(): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'stacker-e2e-caps-'))
  try {
    const tree = join(dir, 'tree')
    await mkdir(join(tree, 'data'), { recursive: true })
    await writeFile(join(tree, 'cap-bin'), 'not really a program\n')
    await writeFile(join(tree, 'data', 'owned'), 'owned\n')
    await execa('chown', ['1000:1000', join(tree, 'data', 'owned')])
    await setAttribute(join(tree, 'cap-bin'), 'user.note', 'hello')
    await setAttribute(join(tree, 'cap-bin'), 'security.capability', NET_RAW_CAPS)
    await setAttribute(join(tree, 'data'), 'user.dirnote', 'dir')
    const out = join(dir, 'caps.tar.gz')
    await execa('tar', [
      '--xattrs',
      '--xattrs-include=*',
      '--sort=name',
      '--mtime=@1600000000',
      '--numeric-owner',
      '-czf',
      out,
      '-C',
      tree,
      '.',
    ])
    return await readFile(out)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
