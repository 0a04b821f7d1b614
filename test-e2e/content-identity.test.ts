// A layer's stored filesystem is identified by what its build produced (docs/architecture.md): every
// cache path is checked on the content of the result after the rebuild, not on log lines alone.
import { existsSync } from 'node:fs'
import { mkdir, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { execa } from 'execa'
import { describe, expect, it } from 'vitest'
import {
  blobPath,
  expectOk,
  fixtures,
  layerTarEntries,
  projectsPerTest,
  readManifest,
  STACKER_BIN,
  stacker,
  type StackerResult,
  type TempProject,
  unsquashfsExtract,
} from './helpers/index.js'

const project = projectsPerTest({ checkMounts: true })

function build(p: TempProject, extra: string[] = [], subs: string[] = []): Promise<StackerResult> {
  const f = fixtures()
  const s = [`BUSYBOX_OCI=${f.BUSYBOX_OCI}`, `UBUNTU_OCI=${f.UBUNTU_OCI}`, `DIR=${p.dir}`, ...subs]
  return stacker(['build', ...s.flatMap((x) => ['--substitute', x]), ...extra], { cwd: p.dir })
}

/** A file of the tar image `tag`, from the topmost layer that has it (undefined if none has). */
async function imageFile(p: TempProject, tag: string, path: string): Promise<string | undefined> {
  const layers = (await readManifest(p.path('oci'), tag)).layers
  for (const l of [...layers].reverse()) {
    const e = (await layerTarEntries(p.path('oci'), l.digest, { withContent: true })).find(
      (x) => x.name.replace(/^\.?\//, '') === path,
    )
    if (e) return e.content?.toString('utf8')
  }
  return undefined
}

/** The same for a squashfs image, read with unsquashfs. */
async function squashfsImageFile(p: TempProject, tag: string, path: string): Promise<string | undefined> {
  const layers = (await readManifest(p.path('oci'), tag)).layers
  for (const [i, l] of [...layers].reverse().entries()) {
    const dest = p.path(`sq-${tag}-${i}`)
    await rm(dest, { recursive: true, force: true })
    await unsquashfsExtract(blobPath(p.path('oci'), l.digest), dest)
    if (existsSync(join(dest, path))) return readFile(join(dest, path), 'utf8')
  }
  return undefined
}

async function grab(p: TempProject, spec: string): Promise<string> {
  const out = p.path('grabbed')
  await rm(out, { recursive: true, force: true })
  await mkdir(out)
  const dirs = ['--roots-dir', p.path('roots'), '--stacker-dir', p.path('.stacker'), '--oci-dir', p.path('oci')]
  expectOk(await stacker([...dirs, 'grab', spec], { cwd: out }))
  const [name] = await readdir(out)
  return readFile(join(out, name as string), 'utf8')
}

const hit = (r: StackerResult, layer: string) =>
  expect(r.stderr).toMatch(new RegExp(`found cached layer ${layer}$`, 'm'))
const built = (r: StackerResult, layer: string) => expect(r.stderr).toContain(`filesystem ${layer} built successfully`)

const UUID_CHAIN = `
parent:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  run: cat /proc/sys/kernel/random/uuid > /u
child:
  from: {type: built, tag: parent}
  run: cp /u /copy
`

describe('rebuilt layers replace their stored content', () => {
  it('--no-cache gives a step that is not a function of its inputs new content, and children follow', async () => {
    const p = await project({ 'stacker.yaml': UUID_CHAIN })
    expectOk(await build(p))
    const u1 = await imageFile(p, 'parent', 'u')
    expect(u1).toMatch(/^[0-9a-f-]{36}\n$/)
    expect(await imageFile(p, 'child', 'copy')).toBe(u1)

    const again = expectOk(await build(p))
    hit(again, 'parent')
    hit(again, 'child')
    expect(await imageFile(p, 'child', 'copy')).toBe(u1)

    expectOk(await build(p, ['--no-cache']))
    const u2 = await imageFile(p, 'parent', 'u')
    expect(u2).toMatch(/^[0-9a-f-]{36}\n$/)
    expect(u2).not.toBe(u1)
    expect(await imageFile(p, 'child', 'copy')).toBe(u2)
    expect(await grab(p, 'child:/copy')).toBe(u2)
    expect(await grab(p, 'parent:/u')).toBe(u2)

    // The cache now answers with what --no-cache built.
    const third = expectOk(await build(p))
    hit(third, 'child')
    expect(await imageFile(p, 'child', 'copy')).toBe(u2)
    expect(await grab(p, 'child:/u')).toBe(u2)
  })

  it('a parent rebuilt with the same content keeps its children cached; other content rebuilds them', async () => {
    const p = await project({
      'src/f': 'v1\n',
      'stacker.yaml': `
parent:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  binds:
    - \${{DIR}}/src -> /src
  run: cp /src/f /f
child:
  from: {type: built, tag: parent}
  run: |
    echo RAN-child
    cp /f /copy
`,
    })
    // With an epoch, a copy made again now has the same (clamped) mtime: the same content.
    const b = () =>
      stacker(['build', '--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`, '--substitute', `DIR=${p.dir}`], {
        cwd: p.dir,
        env: { SOURCE_DATE_EPOCH: '1700000000' },
      })
    expectOk(await b())
    expect(await imageFile(p, 'child', 'copy')).toBe('v1\n')
    const same = expectOk(await b())
    expect(same.stderr).toContain('rebuilding cached layer due to use of binds in stacker file')
    built(same, 'parent')
    hit(same, 'child')
    expect(same.stdout).not.toContain('RAN-child')

    await writeFile(p.path('src/f'), 'v2\n')
    const changed = expectOk(await b())
    expect(changed.stdout).toContain('RAN-child')
    expect(await imageFile(p, 'child', 'copy')).toBe('v2\n')
    expect(await grab(p, 'child:/copy')).toBe('v2\n')
  })

  for (const [form, bind] of [
    ['a path', '${{DIR}}/src'],
    ['src -> dest', '${{DIR}}/src -> /src'],
    ['a map with a default dest', '{source: "${{DIR}}/src"}'],
  ] as const) {
    it(`binds given as ${form}: a rebuild takes the new file and so does the child`, async () => {
      const p = await project({
        'src/f': 'v1\n',
        'stacker.yaml': `
withbind:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  binds:
    - ${bind}
  run: cp "${form === 'src -> dest' ? '/src' : '${{DIR}}/src'}/f" /copy
child:
  from: {type: built, tag: withbind}
  run: cp /copy /copy2
`,
      })
      expectOk(await build(p))
      expect(await imageFile(p, 'child', 'copy2')).toBe('v1\n')
      await writeFile(p.path('src/f'), 'v2\n')
      const r = expectOk(await build(p))
      expect(r.stderr).toContain('rebuilding cached layer due to use of binds in stacker file')
      expect(await imageFile(p, 'withbind', 'copy')).toBe('v2\n')
      expect(await imageFile(p, 'child', 'copy2')).toBe('v2\n')
      expect(await grab(p, 'child:/copy2')).toBe('v2\n')
    })
  }

  it('a changed import, with and without dest, reaches the layer and its child; unchanged ones hit', async () => {
    const p = await project({
      'f.txt': 'one\n',
      'd.txt': 'dest one\n',
      'stacker.yaml': `
imp:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  imports:
    - f.txt
    - {path: d.txt, dest: /d.txt}
  run: cp /stacker/imports/f.txt /f.txt
child:
  from: {type: built, tag: imp}
  run: cat /f.txt /d.txt > /both
`,
    })
    expectOk(await build(p))
    expect(await imageFile(p, 'child', 'both')).toBe('one\ndest one\n')
    hit(expectOk(await build(p)), 'child')
    await writeFile(p.path('f.txt'), 'two\n')
    expectOk(await build(p))
    expect(await imageFile(p, 'imp', 'f.txt')).toBe('two\n')
    expect(await imageFile(p, 'child', 'both')).toBe('two\ndest one\n')
    await writeFile(p.path('d.txt'), 'dest two\n')
    expectOk(await build(p))
    expect(await imageFile(p, 'imp', 'd.txt')).toBe('dest two\n')
    expect(await imageFile(p, 'child', 'both')).toBe('two\ndest two\n')
  })

  it('a changed base (same layout path and ref, other image) rebuilds the chain on it', async () => {
    const p = await project({
      'stacker.yaml': `
top:
  from: {type: oci, url: "\${{DIR}}/base:latest"}
  run: cat /etc/issue > /issue-copy 2>/dev/null || echo none > /issue-copy
child:
  from: {type: built, tag: top}
  run: cp /issue-copy /issue-copy2
`,
    })
    const layoutOf = (ref: string) => ref.slice(0, ref.lastIndexOf(':'))
    await execa('cp', ['-a', layoutOf(fixtures().BUSYBOX_OCI), p.path('base')])
    expectOk(await build(p))
    expect(await imageFile(p, 'child', 'issue-copy2')).toBe('none\n')
    await rm(p.path('base'), { recursive: true })
    await execa('cp', ['-a', layoutOf(fixtures().UBUNTU_OCI), p.path('base')])
    const r = expectOk(await build(p))
    expect(r.stderr).toContain('cache miss because base layer was changed')
    expect(await imageFile(p, 'child', 'issue-copy2')).toMatch(/Ubuntu/)
  })

  it('a changed overlay_dir reaches the image and the run step', async () => {
    const p = await project({
      'od/file': 'one\n',
      'stacker.yaml': `
ovl:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  overlay_dirs:
    - {source: od, dest: /opt}
  run: cp /opt/file /seen
`,
    })
    expectOk(await build(p))
    expect(await imageFile(p, 'ovl', 'seen')).toBe('one\n')
    await writeFile(p.path('od/file'), 'two\n')
    const r = expectOk(await build(p))
    expect(r.stderr).toContain('cache miss because content of 1 overlay dirs changed:')
    expect(r.stderr).toContain(p.path('od/file'))
    expect(await imageFile(p, 'ovl', 'opt/file')).toBe('two\n')
    expect(await imageFile(p, 'ovl', 'seen')).toBe('two\n')
    await rm(p.path('roots'), { recursive: true })
    const missing = expectOk(await build(p))
    expect(missing.stderr).toContain(`cache miss because overlay_dir was missing: ${p.path('od')}`)
    expect(await imageFile(p, 'ovl', 'seen')).toBe('two\n')
  })

  it('build_only parents: a changed input reaches every child, across --layer-type switches', async () => {
    const p = await project({
      'f.txt': 'one\n',
      'stacker.yaml': `
bo:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  build_only: true
  imports: [f.txt]
  run: cp /stacker/imports/f.txt /from-bo
a:
  from: {type: built, tag: bo}
  run: cp /from-bo /a
b:
  from: {type: built, tag: bo}
  run: cp /from-bo /b
`,
    })
    expectOk(await build(p, ['--layer-type', 'squashfs']))
    expect(await squashfsImageFile(p, 'a-squashfs', 'from-bo')).toBe('one\n')
    await writeFile(p.path('f.txt'), 'two\n')
    expectOk(await build(p, ['--layer-type', 'tar']))
    for (const l of ['a', 'b']) {
      expect(await imageFile(p, l, 'from-bo')).toBe('two\n')
      expect(await imageFile(p, l, l)).toBe('two\n')
    }
    expectOk(await build(p, ['--layer-type', 'tar', '--layer-type', 'squashfs']))
    expect(await squashfsImageFile(p, 'b-squashfs', 'b')).toBe('two\n')
    expect(await squashfsImageFile(p, 'b-squashfs', 'from-bo')).toBe('two\n')
    expect(await grab(p, 'bo:/from-bo')).toBe('two\n')
  })

  it('--jobs 2 --no-cache: independent chains each get their own new content', async () => {
    const p = await project({
      'stacker.yaml': `${UUID_CHAIN}
other:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  run: cat /proc/sys/kernel/random/uuid > /u
otherchild:
  from: {type: built, tag: other}
  run: cp /u /copy
`,
    })
    expectOk(await build(p, ['--jobs', '2']))
    const before = [await imageFile(p, 'parent', 'u'), await imageFile(p, 'other', 'u')]
    expectOk(await build(p, ['--jobs', '2', '--no-cache']))
    const after = [await imageFile(p, 'parent', 'u'), await imageFile(p, 'other', 'u')]
    expect(after[0]).not.toBe(before[0])
    expect(after[1]).not.toBe(before[1])
    expect(after[0]).not.toBe(after[1])
    expect(await imageFile(p, 'child', 'copy')).toBe(after[0])
    expect(await imageFile(p, 'otherchild', 'copy')).toBe(after[1])
  })
})

describe('what a build leaves on disk', () => {
  it('roots/<layer>/overlay is the layer own content and follows rebuilds; clean removes it', async () => {
    const p = await project({ 'stacker.yaml': UUID_CHAIN })
    expectOk(await build(p))
    const u1 = await readFile(p.path('roots/parent/overlay/u'), 'utf8')
    expect(await imageFile(p, 'parent', 'u')).toBe(u1)
    expect(existsSync(p.path('roots/parent/rootfs'))).toBe(true)
    expect(await readdir(p.path('roots/parent/rootfs'))).toEqual([])
    expect(await readFile(p.path('roots/child/overlay/copy'), 'utf8')).toBe(u1)
    expect(existsSync(p.path('roots/child/overlay/u'))).toBe(false)
    // Every generated layer blob has its content at sha256_<digest>/overlay.
    for (const l of (await readManifest(p.path('oci'), 'child')).layers)
      expect(existsSync(p.path(`roots/sha256_${l.digest.slice(7)}/overlay`))).toBe(true)
    expectOk(await build(p, ['--no-cache']))
    const u2 = await readFile(p.path('roots/parent/overlay/u'), 'utf8')
    expect(u2).not.toBe(u1)
    expect(await readFile(p.path('roots/child/overlay/copy'), 'utf8')).toBe(u2)
    expect(await readlink(p.path('roots/parent/overlay'))).toMatch(/^\.\.\/\.store\/content\/d_/)
    expectOk(await stacker(['clean'], { cwd: p.dir }))
    expect(existsSync(p.path('roots'))).toBe(false)
  })

  it('stages imports under .stacker/imports/<layer>/ for a layer without run', async () => {
    const p = await project({
      'a.txt': 'a\n',
      'stacker.yaml': `
norun:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  imports: [a.txt]
`,
    })
    expectOk(await build(p))
    expect(await readFile(p.path('.stacker/imports/norun/a.txt'), 'utf8')).toBe('a\n')
  })

  it('a directory renamed into place gets no opaque marker unless it hides a lower one', async () => {
    const p = await project({
      'stacker.yaml': `
ren:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  run: |
    mkdir /etc/foo.new
    touch /etc/foo.new/x
    mv /etc/foo.new /etc/foo
    mkdir /hide
    touch /hide/old
replace:
  from: {type: built, tag: ren}
  run: |
    mkdir /hide.new
    touch /hide.new/new
    rm -rf /hide
    mv /hide.new /hide
`,
    })
    expectOk(await build(p))
    const listing = async (tag: string) => {
      const m = await readManifest(p.path('oci'), tag)
      const top = m.layers.at(-1)?.digest as string
      const r = await execa('tar', ['-tvf', blobPath(p.path('oci'), top)])
      return r.stdout
    }
    const ren = await listing('ren')
    expect(ren).toMatch(/etc\/foo\/x$/m)
    expect(ren).not.toContain('.wh.')
    const replace = await listing('replace')
    // /hide existed below: the new one must hide the old content.
    expect(replace).toMatch(/hide\/\.wh\.\.wh\.\.opq$/m)
    expect(replace).toMatch(/hide\/new$/m)
  })
})

describe('destinations through symlinked dirs', () => {
  it('overlay_dirs and dest imports write through /lib -> usr/lib, which stays a symlink', async () => {
    const p = await project({
      'od/ovl-file': 'ovl\n',
      'imp.txt': 'imp\n',
      'stacker.yaml': `
merged:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  run: |
    mkdir -p /usr/lib
    ln -s usr/lib /lib
    ln -s ../../../../../../../../tmp/stacker-escape-\${{TAG}} /escape
    ln -s /tmp/stacker-abs-escape-\${{TAG}} /abs
usr:
  from: {type: built, tag: merged}
  overlay_dirs:
    - {source: od, dest: /lib/foo}
    - {source: od, dest: /escape}
    - {source: od, dest: /abs}
  imports:
    - {path: imp.txt, dest: /lib/bar/imp.txt}
    - {path: imp.txt, dest: /escape/sub/imp.txt}
    - {path: imp.txt, dest: /abs/sub/imp.txt}
  run: |
    [ -L /lib ]
    cat /lib/foo/ovl-file /usr/lib/bar/imp.txt > /seen
`,
    })
    const tag = `${process.pid}-${Date.now()}`
    const r = expectOk(await build(p, [], [`TAG=${tag}`]))
    expect(r.stderr).toContain('overlay dest /lib/foo is a symlink, patching to /usr/lib/foo')
    // Symlinks that point out of the rootfs, relative or absolute, resolve inside it.
    expect(existsSync(`/tmp/stacker-escape-${tag}`)).toBe(false)
    expect(existsSync(`/tmp/stacker-abs-escape-${tag}`)).toBe(false)
    for (const d of [`tmp/stacker-escape-${tag}`, `tmp/stacker-abs-escape-${tag}`]) {
      expect(await imageFile(p, 'usr', `${d}/ovl-file`)).toBe('ovl\n')
      expect(await imageFile(p, 'usr', `${d}/sub/imp.txt`)).toBe('imp\n')
    }
    expect(await imageFile(p, 'usr', 'seen')).toBe('ovl\nimp\n')
    expect(await imageFile(p, 'usr', 'usr/lib/foo/ovl-file')).toBe('ovl\n')
    expect(await imageFile(p, 'usr', 'usr/lib/bar/imp.txt')).toBe('imp\n')
    // No layer of the child replaces the symlink with a directory.
    const m = await readManifest(p.path('oci'), 'usr')
    for (const l of m.layers.slice(-7)) {
      const names = (await layerTarEntries(p.path('oci'), l.digest)).map((e) => e.name.replace(/^\.?\//, ''))
      expect(names.filter((n) => n === 'lib/' || n === 'lib' || n.startsWith('lib/'))).toEqual([])
    }
    const out = p.path('unpacked')
    await execa('umoci', ['unpack', '--image', `${p.path('oci')}:usr`, out])
    expect(await readlink(join(out, 'rootfs/lib'))).toBe('usr/lib')
  })
})

describe('parallel builds keep layers coupled through the host in file order', () => {
  for (const jobs of [undefined, '4']) {
    it(`a build_only layer writing a bound dir, then overlay_dirs reading it (--jobs ${jobs ?? 'default'})`, async () => {
      const p = await project({
        'shared/.keep': '',
        'stacker.yaml': `
writer:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  build_only: true
  binds:
    - \${{DIR}}/shared -> /shared
  run: |
    sleep 1
    echo made-by-writer > /shared/made
reader:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  overlay_dirs:
    - {source: shared, dest: /shared}
  run: cat /shared/made
`,
      })
      const r = expectOk(await build(p, jobs ? ['--jobs', jobs] : []))
      expect(r.stdout).toContain('made-by-writer')
      expect(await imageFile(p, 'reader', 'shared/made')).toBe('made-by-writer\n')
    })
  }
})

it('a kill -9 after the content is stored and before the cache record leaves a state the next build is right from', async () => {
  const p = await project({
    'stacker.yaml': `
big:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  run: |
    cat /proc/sys/kernel/random/uuid > /u
    head -c 200000000 /dev/urandom > /big
child:
  from: {type: built, tag: big}
  run: cp /u /copy
`,
  })
  expectOk(await build(p))
  const u1 = await imageFile(p, 'child', 'copy')
  const f = fixtures()
  const child = execa(
    process.execPath,
    [STACKER_BIN, 'build', '--no-cache', '--substitute', `BUSYBOX_OCI=${f.BUSYBOX_OCI}`],
    { cwd: p.dir, reject: false, all: true },
  )
  // The layer's content is stored before its blobs are written: kill while the big blob is written.
  const contentDir = p.path('roots/.store/content')
  const before = new Set(await readdir(contentDir))
  let stored = false
  for (let i = 0; i < 1200 && !stored; i++) {
    await new Promise((r) => setTimeout(r, 50))
    const now = (await readdir(contentDir)).filter((id) => !before.has(id) && id.startsWith('d_'))
    const writing = (await readdir(p.path('oci/.tmp')).catch(() => [] as string[])).length > 0
    stored = now.length > 0 && writing
  }
  expect(stored).toBe(true)
  child.kill('SIGKILL')
  await child
  // The killed build's new content is there, its cache record is not: the next build is consistent.
  expectOk(await build(p))
  const u = await imageFile(p, 'big', 'u')
  expect(await imageFile(p, 'child', 'copy')).toBe(u)
  expect(await grab(p, 'child:/copy')).toBe(u)
  expect([u1]).toContain(u)
  const fresh = expectOk(await build(p, ['--no-cache']))
  built(fresh, 'child')
  const u3 = await imageFile(p, 'big', 'u')
  expect(u3).not.toBe(u1)
  expect(await imageFile(p, 'child', 'copy')).toBe(u3)
  expect(await grab(p, 'child:/copy')).toBe(u3)
})

describe('messages that scripts grep', () => {
  it('a rebuild with binds ends its output with the success line; Copying blob only with --progress', async () => {
    const p = await project({
      'src/f': 'x\n',
      'stacker.yaml': `
bind-test:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  binds:
    - \${{DIR}}/src -> /src
  run: cp /src/f /f
`,
    })
    expectOk(await build(p))
    for (const flags of [[], ['--debug']]) {
      const f = fixtures()
      const r = expectOk(
        await stacker(
          [...flags, 'build', '--substitute', `BUSYBOX_OCI=${f.BUSYBOX_OCI}`, '--substitute', `DIR=${p.dir}`],
          {
            cwd: p.dir,
          },
        ),
      )
      expect(r.stderr).toContain('rebuilding cached layer due to use of binds in stacker file')
      expect(r.stderr.trimEnd().split('\n').at(-1)).toBe('filesystem bind-test built successfully')
      expect(r.stderr).not.toContain('Copying blob')
    }
    const progress = expectOk(
      await stacker(
        [
          '--progress',
          'build',
          '--substitute',
          `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`,
          '--substitute',
          `DIR=${p.dir}`,
        ],
        {
          cwd: p.dir,
        },
      ),
    )
    expect(progress.stderr).toMatch(/^Copying blob sha256:[0-9a-f]{12}/m)
  })
})
