// Build order (`--order-only`, `recursive-build`, `config.prerequisites`;
// upstream's bats "dependency-order", "prerequisites" and "build-only"): unresolvable layers, layers
// written out of order, prerequisites (relative, nested, absolute), `--order-only` lines,
// recursive-build's file matching, build_only layers across files, duplicate names, cycles, and a
// `built` tag that only another, unrelated file defines.
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  expectOk,
  fixtures,
  indexTags,
  readManifest,
  projectsPerTest,
  type StackerResult,
  stacker,
  type TempProject,
  tempProject,
  umociUnpack,
} from './helpers/index.js'

const SDE = { SOURCE_DATE_EPOCH: '1700000000' }

function st(p: TempProject, args: string[]): Promise<StackerResult> {
  return stacker(args, { cwd: p.dir, env: SDE, timeoutMs: 180_000 })
}

/** A user-facing failure: exit 1, exactly one `error:` line holding `text`, no stack trace, no hang. */
function expectCleanError(r: StackerResult, text: string): void {
  expect(r.timedOut, 'timed out').toBe(false)
  expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(1)
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('error:'))
  expect(errors, r.stderr).toHaveLength(1)
  expect(errors[0]).toContain(text)
  expect(r.stderr).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m)
}

/** The `<i> build <path>: requires: [...]` lines of an `--order-only` run, in order. */
function orderLines(r: StackerResult): string[] {
  return `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => /^\d+ build /.test(l))
}

const project = projectsPerTest()

const bb = (): string => `from: {type: oci, url: "${fixtures().BUSYBOX_OCI}"}`

describe('layer dependencies within a file', () => {
  it("a built base that is no layer: couldn't find dependencies, then one error", async () => {
    const p = await project({ 'stacker.yaml': 'test:\n  from:\n    type: built\n    tag: notatag\n' })
    const r = await st(p, ['build'])
    expectCleanError(r, "couldn't resolve some dependencies")
    expect(r.stderr).toContain("couldn't find dependencies for test: base layer notatag")
    assertNoMountsUnder(p.dir)
  })

  it('stacker:// imports of unknown layers are listed in file order', async () => {
    const p = await project({
      'stacker.yaml': `test:\n  ${bb()}\n  imports:\n    - stacker://foo/bar\n    - stacker://baz/foo\n`,
    })
    const r = await st(p, ['build'])
    expectCleanError(r, "couldn't resolve some dependencies")
    expect(r.stderr).toContain("couldn't find dependencies for test: stacker://foo/bar, stacker://baz/foo")
    assertNoMountsUnder(p.dir)
  })

  it('built and stacker:// layers written out of order build', async () => {
    // Upstream's "stacker:// style nesting w/ type built works", on the ubuntu stand-in (it has /bin/bash).
    const p = await project({
      'stacker.yaml': `
minbase1:
  from: {type: oci, url: "${fixtures().UBUNTU_OCI}"}
  run: |
    echo pkgtool install cpio pigz

installer-initrd:
  build_only: true
  from: {type: built, tag: minbase1}
  run: |
    #!/bin/bash -ex
    mkdir /output
    echo base > /output/installer-initrd-base.cpio

installer-initrd-modules:
  from: {type: built, tag: installer-build-env}
  run: |
    #!/bin/bash -ex
    mkdir -p /output
    echo modules > /output/installer-initrd-modules.cpio

installer-build-env:
  from: {type: built, tag: minbase1}
  build_only: true

installer-iso-build:
  from: {type: built, tag: minbase1}
  build_only: true
  imports:
    - stacker://installer-initrd/output/installer-initrd-base.cpio
    - stacker://installer-initrd-modules/output/installer-initrd-modules.cpio
  run: |
    #!/bin/bash -ex
    mkdir /output
    ( cd /stacker/imports && tar -cf /output/installer-iso.tar *.cpio )

atomix-installer-iso:
  from:
    type: tar
    url: stacker://installer-iso-build/output/installer-iso.tar
`,
    })
    const r = expectOk(await st(p, ['build']))
    // Each layer starts only after what it needs.
    const at = (s: string): number => r.stderr.indexOf(s)
    expect(at('filesystem installer-build-env built successfully')).toBeLessThan(
      at('preparing image installer-initrd-modules...'),
    )
    expect(at('filesystem installer-initrd-modules built successfully')).toBeLessThan(
      at('preparing image installer-iso-build...'),
    )
    expect(at('filesystem installer-iso-build built successfully')).toBeLessThan(
      at('preparing image atomix-installer-iso...'),
    )
    expect((await indexTags(p.path('oci'))).sort()).toEqual(
      ['atomix-installer-iso', 'installer-initrd-modules', 'minbase1'].sort(),
    )
    expect((await readManifest(p.path('oci'), 'atomix-installer-iso')).layers).toHaveLength(1)
    // A tar base is the tarball's content: the two cpio files that came in by stacker:// imports.
    const root = await umociUnpack(p.path('oci'), 'atomix-installer-iso', p.path('u'))
    expect(await readFile(join(root, 'installer-initrd-base.cpio'), 'utf8')).toBe('base\n')
    expect(await readFile(join(root, 'installer-initrd-modules.cpio'), 'utf8')).toBe('modules\n')
    assertNoMountsUnder(p.dir)
  })
})

describe('prerequisites', () => {
  let p: TempProject
  let sub1: string
  let sub2: string
  let sub3: string
  beforeAll(async () => {
    p = await tempProject({
      'ocibuilds/sub1/import1': 'import1\n',
      'ocibuilds/sub1/stacker.yaml': `
layer1_1:
  ${bb()}
  build_only: true
  imports:
    - import1
  run: |
    mkdir -p /root
    cp /stacker/imports/import1 /root/import1
layer1_2:
  ${bb()}
  run: touch /root/import0
`,
      'ocibuilds/sub2/import2': 'import2\n',
      'ocibuilds/sub2/stacker.yaml': `
config:
  prerequisites:
    - ../sub1/stacker.yaml
layer2:
  from:
    type: built
    tag: layer1_1
  imports:
    - import2
  run: |
    cp /stacker/imports/import2 /root/import2
    cp /root/import1 /root/import1_copied
`,
      'ocibuilds/sub3/stacker.yaml': `
config:
  prerequisites:
    - ../sub1/stacker.yaml
    - ../sub2/stacker.yaml
layer3_1:
  from:
    type: built
    tag: layer2
  run: cp /root/import2 /root/import2_copied
layer3_2:
  from:
    type: built
    tag: layer1_2
  run: cp /root/import0 /root/import0_copied
`,
      // Not stackerfiles by the default pattern; both would fail to parse.
      'test_stacker.yaml': 'this is not valid yaml trolololololo - - - :\n',
      '.stacker.yaml.swp': 'this is not valid yaml trolololololo - - - :\n',
    })
    sub1 = p.path('ocibuilds/sub1/stacker.yaml')
    sub2 = p.path('ocibuilds/sub2/stacker.yaml')
    sub3 = p.path('ocibuilds/sub3/stacker.yaml')
  })
  afterAll(() => p?.cleanup())

  const three = (): string[] => [
    `0 build ${sub1}: requires: []`,
    `1 build ${sub2}: requires: [${sub1}]`,
    `2 build ${sub3}: requires: [${sub1} ${sub2}]`,
  ]

  it("--order-only prints the file order with each file's prerequisites, and builds nothing", async () => {
    const r = expectOk(await st(p, ['build', '-f', 'ocibuilds/sub3/stacker.yaml', '--order-only']))
    expect(r.stderr).toContain('stacker build order:')
    expect(orderLines(r)).toEqual(three())
    expect(existsSync(p.path('oci/index.json'))).toBe(false)
    expect(r.stderr).not.toContain('preparing image')
    assertNoMountsUnder(p.dir)
  })

  it('recursive-build --order-only: default search, -d, and -d with -p', async () => {
    expect(orderLines(expectOk(await st(p, ['recursive-build', '--order-only'])))).toEqual(three())
    expect(orderLines(expectOk(await st(p, ['recursive-build', '-d', 'ocibuilds', '--order-only'])))).toEqual(three())
    const only2 = expectOk(
      await st(p, ['recursive-build', '--search-dir', 'ocibuilds', '-p', 'sub2/stacker.yaml', '--order-only']),
    )
    expect(orderLines(only2)).toEqual(three().slice(0, 2))
    assertNoMountsUnder(p.dir)
  })

  it('build -f builds the prerequisites first; a build_only layer of a prerequisite feeds a dependent file', async () => {
    const r = expectOk(await st(p, ['build', '-f', 'ocibuilds/sub3/stacker.yaml']))
    expect(r.stderr.indexOf('filesystem layer1_1 built successfully')).toBeLessThan(
      r.stderr.indexOf('preparing image layer2...'),
    )
    expect((await indexTags(p.path('oci'))).sort()).toEqual(['layer1_2', 'layer2', 'layer3_1', 'layer3_2'])
    const l31 = await umociUnpack(p.path('oci'), 'layer3_1', p.path('u/layer3_1'))
    for (const f of ['import1', 'import1_copied', 'import2', 'import2_copied'])
      expect(await readFile(join(l31, 'root', f), 'utf8'), f).toBe(`${f.replace('_copied', '')}\n`)
    const l32 = await umociUnpack(p.path('oci'), 'layer3_2', p.path('u/layer3_2'))
    expect(existsSync(join(l32, 'root/import0'))).toBe(true)
    expect(existsSync(join(l32, 'root/import0_copied'))).toBe(true)
    expect(existsSync(join(l32, 'root/import1'))).toBe(false)
    // busybox + layer1_1 (build_only, carried by its child) + layer2 + layer3_1.
    expect((await readManifest(p.path('oci'), 'layer3_1')).layers).toHaveLength(4)
    assertNoMountsUnder(p.dir)
  })

  it('recursive-build finds the same files, ignores test_stacker.yaml and .stacker.yaml.swp', async () => {
    const r = expectOk(await st(p, ['recursive-build']))
    for (const l of ['layer1_2', 'layer2', 'layer3_1', 'layer3_2'])
      expect(r.stderr).toContain(`found cached layer ${l}`)
    expect(r.stderr).not.toContain('trolololo')
    expect((await indexTags(p.path('oci'))).sort()).toEqual(['layer1_2', 'layer2', 'layer3_1', 'layer3_2'])
    assertNoMountsUnder(p.dir)
  })
})

describe('prerequisite forms', () => {
  it('nested prerequisites make every transitive layer available', async () => {
    const p = await project({
      'stacker1.yaml': `one:\n  ${bb()}\n  run: touch /one\n`,
      'stacker2.yaml':
        'config:\n  prerequisites:\n    - stacker1.yaml\ntwo:\n  from: {type: built, tag: one}\n  run: touch /two\n',
      'stacker3.yaml': `config:
  prerequisites:
    - stacker2.yaml
three:
  from: {type: built, tag: two}
  run: touch /three
nested:
  from: {type: built, tag: one}
  run: touch /nested
`,
    })
    expectOk(await st(p, ['build', '-f', 'stacker3.yaml']))
    const t = await umociUnpack(p.path('oci'), 'three', p.path('u/three'))
    for (const f of ['one', 'two', 'three']) expect(existsSync(join(t, f)), f).toBe(true)
    const n = await umociUnpack(p.path('oci'), 'nested', p.path('u/nested'))
    expect(existsSync(join(n, 'one'))).toBe(true)
    expect(existsSync(join(n, 'nested'))).toBe(true)
    expect(existsSync(join(n, 'two'))).toBe(false)
    assertNoMountsUnder(p.dir)
  })

  it('absolute prerequisites work, and a change in the dependent file rebuilds it', async () => {
    const p = await project({
      'one/stacker.yaml': `one:\n  ${bb()}\n  run: touch /one\n`,
      'two/stacker.yaml': `config:\n  prerequisites:\n    - \${{PWD}}/one/stacker.yaml\ntwo:\n  from:\n    type: built\n    tag: one\n  run: touch /zomg\n`,
    })
    expectOk(await st(p, ['build', '-f', 'two/stacker.yaml', '--substitute', `PWD=${p.dir}`]))
    const a = await umociUnpack(p.path('oci'), 'two', p.path('u/a'))
    expect(existsSync(join(a, 'zomg'))).toBe(true)
    expect(existsSync(join(a, 'one'))).toBe(true)
    await p.write('two/stacker.yaml', (await readFile(p.path('two/stacker.yaml'), 'utf8')).replace('zomg', 'wtf'))
    const r = expectOk(await st(p, ['build', '-f', 'two/stacker.yaml', '--substitute', `PWD=${p.dir}`]))
    expect(r.stderr).toContain('found cached layer one')
    const b = await umociUnpack(p.path('oci'), 'two', p.path('u/b'))
    expect(existsSync(join(b, 'wtf'))).toBe(true)
    expect(existsSync(join(b, 'zomg'))).toBe(false)
    assertNoMountsUnder(p.dir)
  })
})

describe('invalid file sets', () => {
  it('a layer name defined in a prerequisite and again in the dependent file is a duplicate', async () => {
    const p = await project({
      'a.yaml': `same:\n  ${bb()}\n`,
      'b.yaml':
        'config:\n  prerequisites:\n    - ./a.yaml\ndifferent:\n  from: {type: built, tag: same}\nsame:\n  from: {type: built, tag: different}\n',
    })
    const r = await st(p, ['build', '-f', 'b.yaml'])
    expectCleanError(r, 'duplicate layer name')
    expect(r.stderr).toContain('same')
    expect(existsSync(p.path('oci/index.json')) ? await indexTags(p.path('oci')) : []).toEqual([])
    assertNoMountsUnder(p.dir)
  })

  it('cyclic prerequisites fail naming the cycle, without hanging', async () => {
    const p = await project({
      'a.yaml': 'config:\n  prerequisites:\n    - b.yaml\na:\n  from: {type: scratch}\n',
      'b.yaml': 'config:\n  prerequisites:\n    - c.yaml\nb:\n  from: {type: scratch}\n',
      'c.yaml': 'config:\n  prerequisites:\n    - ./a.yaml\nc:\n  from: {type: scratch}\n',
    })
    for (const args of [
      ['build', '-f', 'a.yaml'],
      ['build', '-f', 'c.yaml', '--order-only'],
      ['recursive-build', '-p', '\\.yaml$'],
    ]) {
      const r = await stacker(args, { cwd: p.dir, env: SDE, timeoutMs: 60_000 })
      expectCleanError(r, 'cycle')
      const line = r.stderr.split('\n').find((l) => l.startsWith('error:')) ?? ''
      for (const f of ['a.yaml', 'b.yaml', 'c.yaml']) expect(line, args.join(' ')).toContain(p.path(f))
    }
    assertNoMountsUnder(p.dir)
  })

  it('a built tag defined only in a file that is not a prerequisite does not resolve', async () => {
    const p = await project({
      'sub1/stacker.yaml': `base:\n  ${bb()}\n  run: touch /base\n`,
      'sub2/stacker.yaml': 'child:\n  from: {type: built, tag: base}\n  run: touch /child\n',
    })
    // Both files in one run: sub1 is built first, but sub2 did not declare it.
    const r = await st(p, ['recursive-build'])
    expectCleanError(r, "couldn't resolve some dependencies")
    expect(r.stderr).toContain("couldn't find dependencies for child: base layer base")
    expect(r.stderr).toContain('filesystem base built successfully')
    // Nor does an earlier build of that file into the same directories help.
    const alone = await st(p, ['build', '-f', 'sub2/stacker.yaml'])
    expectCleanError(alone, "couldn't resolve some dependencies")
    expect(alone.stderr).toContain("couldn't find dependencies for child: base layer base")
    expect(await indexTags(p.path('oci'))).toEqual(['base'])
    assertNoMountsUnder(p.dir)
  })
})
