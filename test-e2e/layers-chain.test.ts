// Layer chains: whiteouts and opaque dirs across l1..l4, build_only chains and their layer counts,
// empty diffs, stacker:// and grab from build_only layers, a 200-layer chain, overlay_dirs, broken
// symlinks in imports and globs in run (upstream's bats "basic (9)",
// "build-only", "built-type", "dir-whiteout", "empty-layers", "whiteout", "overlay-dirs",
// "broken-link" and "asterisk"; docs/compatibility.md, deep chains).
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { lstat, readFile, readdir, readlink, symlink } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  expectOk,
  fixtures,
  indexTags,
  layerTarEntries,
  readConfig,
  readManifest,
  type StackerResult,
  stacker,
  type TarEntry,
  type TempProject,
  tempProject,
  umociUnpack,
} from './helpers/index.js'

const BUSYBOX = `from: {type: oci, url: "\${{BUSYBOX_OCI}}"}`
const SDE = { SOURCE_DATE_EPOCH: '1700000000' }

function build(p: TempProject, extra: string[] = []): Promise<StackerResult> {
  return stacker(['build', '--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`, ...extra], {
    cwd: p.dir,
    env: SDE,
  })
}

const norm = (n: string): string => n.replace(/^\.?\//, '').replace(/\/$/, '')

/** Every path under root: `d` for dirs, `f:<content>` for files, `l:<target>` for symlinks. */
async function tree(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  const walk = async (rel: string): Promise<void> => {
    for (const name of await readdir(join(root, rel))) {
      const r = rel ? `${rel}/${name}` : name
      const st = await lstat(join(root, r))
      if (st.isDirectory()) {
        out.set(r, 'd')
        await walk(r)
      } else if (st.isSymbolicLink()) out.set(r, `l:${await readlink(join(root, r))}`)
      else if (st.isFile()) out.set(r, st.size < 4096 ? `f:${await readFile(join(root, r), 'utf8')}` : 'f')
      else out.set(r, 'other')
    }
  }
  await walk('')
  return out
}

/** What `image` has that `base` does not, and what it lacks of `base` (changed entries show in both). */
function delta(base: Map<string, string>, image: Map<string, string>): { added: string[]; removed: string[] } {
  const added = [...image].filter(([k, v]) => base.get(k) !== v).map(([k, v]) => `${k}=${v}`)
  const removed = [...base].filter(([k, v]) => image.get(k) !== v).map(([k]) => k)
  return { added: added.sort(), removed: removed.sort() }
}

async function topLayerEntries(layout: string, tag: string, opts: { withContent?: boolean } = {}): Promise<TarEntry[]> {
  const layers = (await readManifest(layout, tag)).layers
  return layerTarEntries(layout, layers[layers.length - 1]!.digest, opts)
}

const unpacked = new Map<string, Promise<string>>()
/** `umoci unpack` of layout:tag into the project, once per layout, tag and manifest. */
async function unpack(p: TempProject, tag: string): Promise<string> {
  const m = await readManifest(p.path('oci'), tag)
  const key = `${p.dir}|${tag}|${m.config.digest}|${m.layers.map((l) => l.digest).join(',')}`
  let r = unpacked.get(key)
  if (!r) {
    r = umociUnpack(p.path('oci'), tag, p.path(`unpacked-${unpacked.size}`))
    unpacked.set(key, r)
  }
  return r
}

let baseTree: Map<string, string>
let baseDir: TempProject
beforeAll(async () => {
  baseDir = await tempProject()
  baseTree = await tree(await umociUnpack(fixtures().busyboxLayout, 'latest', baseDir.path('u')))
})
afterAll(() => baseDir?.cleanup())

describe('whiteouts and opaque dirs across l1..l4', () => {
  let p: TempProject
  const oci = (): string => p.path('oci')
  const trees = new Map<string, Map<string, string>>()
  beforeAll(async () => {
    p = await tempProject({
      'stacker.yaml': `
l1:
  ${BUSYBOX}
  run: |
    mkdir -p /d1/sub /d2 /d3/deep /d4 /keep
    echo a > /d1/a
    echo b > /d1/sub/b
    echo c > /d2/c
    echo x > /d3/x
    echo deep > /d3/deep/z
    echo inside > /d4/inside
    echo f1 > /f1
    echo f2 > /f2
    echo f3 > /f3
    echo k > /keep/k
l2:
  from: {type: built, tag: l1}
  run: |
    rm /f1
    rm -rf /d1
    rm /d2/c
    echo new > /d2/new
    rm -rf /d4
    echo now-a-file > /d4
    rm /f3
    mkdir /f3
    echo in-f3 > /f3/child
l3:
  from: {type: built, tag: l2}
  run: |
    echo f1again > /f1
    mkdir /d1
    echo fresh > /d1/fresh
    rm -rf /d3
    mkdir -p /d3/deep
    echo y > /d3/y
l4:
  from: {type: built, tag: l3}
  run: |
    rm /f2
    rm -rf /d2
    echo l4 > /keep/l4
`,
    })
    expectOk(await build(p))
    for (const t of ['l1', 'l2', 'l3', 'l4']) trees.set(t, await tree(await unpack(p, t)))
  })
  afterAll(() => p?.cleanup())

  it('each image has one layer more than its parent', async () => {
    for (const [i, t] of ['l1', 'l2', 'l3', 'l4'].entries())
      expect((await readManifest(oci(), t)).layers, t).toHaveLength(2 + i)
    expect(await indexTags(oci())).toEqual(['l1', 'l2', 'l3', 'l4'])
    assertNoMountsUnder(p.dir)
  })

  it('l2 deletes with .wh. entries and replaces a dir by a file and a file by a dir', async () => {
    const entries = await topLayerEntries(oci(), 'l2')
    const names = entries.map((e) => norm(e.name))
    expect(names).toEqual(expect.arrayContaining(['.wh.d1', '.wh.f1', 'd2/.wh.c', 'd2/new', 'd4', 'f3', 'f3/child']))
    // A whole deleted dir is one whiteout: nothing below it is listed.
    expect(names.filter((n) => n.startsWith('d1/'))).toEqual([])
    expect(entries.find((e) => norm(e.name) === 'd4')?.type).toBe('file')
    expect(entries.find((e) => norm(e.name) === 'f3')?.type).toBe('directory')
    // d2 was changed, not replaced: it must not hide what it still holds from below.
    expect(names).not.toContain('d2/.wh..wh..opq')
    assertNoMountsUnder(p.dir)
  })

  it('l3 marks a dir replaced by a new one as opaque', async () => {
    const names = (await topLayerEntries(oci(), 'l3')).map((e) => norm(e.name))
    expect(names).toEqual(expect.arrayContaining(['d3', 'd3/.wh..wh..opq', 'd3/y', 'd3/deep', 'd1/fresh', 'f1']))
    expect(names).not.toContain('d3/x')
    expect(names.filter((n) => n.startsWith('.wh.'))).toEqual([])
    assertNoMountsUnder(p.dir)
  })

  it('l4 whites out a file and a dir that earlier layers created and changed', async () => {
    const names = (await topLayerEntries(oci(), 'l4')).map((e) => norm(e.name))
    expect(names.sort()).toEqual(['.wh.d2', '.wh.f2', 'keep', 'keep/l4'])
    assertNoMountsUnder(p.dir)
  })

  it('every image unpacks (umoci) to exactly the expected rootfs', () => {
    const l1 = [
      'd1=d',
      'd1/a=f:a\n',
      'd1/sub=d',
      'd1/sub/b=f:b\n',
      'd2=d',
      'd2/c=f:c\n',
      'd3=d',
      'd3/deep=d',
      'd3/deep/z=f:deep\n',
      'd3/x=f:x\n',
      'd4=d',
      'd4/inside=f:inside\n',
      'f1=f:f1\n',
      'f2=f:f2\n',
      'f3=f:f3\n',
      'keep=d',
      'keep/k=f:k\n',
    ]
    const l2 = [
      'd2=d',
      'd2/new=f:new\n',
      'd3=d',
      'd3/deep=d',
      'd3/deep/z=f:deep\n',
      'd3/x=f:x\n',
      'd4=f:now-a-file\n',
      'f2=f:f2\n',
      'f3=d',
      'f3/child=f:in-f3\n',
      'keep=d',
      'keep/k=f:k\n',
    ]
    const l3 = [
      'd1=d',
      'd1/fresh=f:fresh\n',
      'd2=d',
      'd2/new=f:new\n',
      'd3=d',
      'd3/deep=d',
      'd3/y=f:y\n',
      'd4=f:now-a-file\n',
      'f1=f:f1again\n',
      'f2=f:f2\n',
      'f3=d',
      'f3/child=f:in-f3\n',
      'keep=d',
      'keep/k=f:k\n',
    ]
    const l4 = l3.filter((e) => !/^(d2|f2)[=/]/.test(e)).concat('keep/l4=f:l4\n')
    for (const [tag, want] of [
      ['l1', l1],
      ['l2', l2],
      ['l3', l3],
      ['l4', l4],
    ] as const) {
      const d = delta(baseTree, trees.get(tag)!)
      expect(d.removed, tag).toEqual([])
      expect(d.added, tag).toEqual([...want].sort())
    }
    assertNoMountsUnder(p.dir)
  })
})

describe('build_only chains', () => {
  let p: TempProject
  let r: StackerResult
  const oci = (): string => p.path('oci')
  beforeAll(async () => {
    p = await tempProject({
      'linkdir/real.txt': 'real\n',
      'stacker.yaml': `
one:
  ${BUSYBOX}
  run: |
    echo one > /one
    mkdir -p /gone/sub
    echo g > /gone/sub/g
two:
  from: {type: built, tag: one}
  build_only: true
  run: echo two > /two
three:
  from: {type: built, tag: two}
  build_only: true
  run: |
    echo three > /three
    rm -rf /gone
four:
  from: {type: built, tag: three}
  run: echo four > /four
nochange:
  from: {type: built, tag: one}
  run: |
    true
    cat /one > /dev/null
imp:
  ${BUSYBOX}
  imports:
    - stacker://three/three
    - linkdir
  run: |
    cp /stacker/imports/three /three-copy
    cp -a /stacker/imports/linkdir /linkdir
glob:
  ${BUSYBOX}
  run: |
    mkdir /mybin
    cp -s /bin/* /mybin
`,
    })
    await symlink('/nonexistent/target', p.path('linkdir/dangling'))
    await symlink('real.txt', p.path('linkdir/rel'))
    r = await build(p)
    expectOk(r)
  })
  afterAll(() => p?.cleanup())

  it('gives 2 layers to one and 5 to four, and tags only the layers that are not build_only', async () => {
    expect((await readManifest(oci(), 'one')).layers).toHaveLength(2)
    const four = await readManifest(oci(), 'four')
    expect(four.layers).toHaveLength(5)
    expect((await readConfig(oci(), 'four')).rootfs.diff_ids).toHaveLength(5)
    expect((await indexTags(oci())).sort()).toEqual(['four', 'glob', 'imp', 'nochange', 'one'])
    // four extends one: its first two layers are one's.
    expect(four.layers.slice(0, 2)).toEqual((await readManifest(oci(), 'one')).layers)
    assertNoMountsUnder(p.dir)
  })

  it('four holds the content of both build_only ancestors; a dir removed in one is absent', async () => {
    const root = await unpack(p, 'four')
    const d = delta(baseTree, await tree(root))
    expect(d.removed).toEqual([])
    expect(d.added).toEqual(['four=f:four\n', 'one=f:one\n', 'three=f:three\n', 'two=f:two\n'])
    // The build_only layer that removed /gone carries the whiteout.
    const four = await readManifest(oci(), 'four')
    const threeDiff = (await layerTarEntries(oci(), four.layers[3]!.digest)).map((e) => norm(e.name))
    expect(threeDiff.sort()).toEqual(['.wh.gone', 'three'])
    assertNoMountsUnder(p.dir)
  })

  it('a run that changes nothing adds no layer', async () => {
    const one = await readManifest(oci(), 'one')
    const nochange = await readManifest(oci(), 'nochange')
    expect(nochange.layers).toEqual(one.layers)
    expect(r.stderr).toContain('filesystem nochange built successfully')
    assertNoMountsUnder(p.dir)
  })

  it('imports a file from a build_only layer with stacker://', async () => {
    const root = await unpack(p, 'imp')
    expect(await readFile(join(root, 'three-copy'), 'utf8')).toBe('three\n')
    expect(existsSync(join(root, 'three'))).toBe(false)
    assertNoMountsUnder(p.dir)
  })

  it('an imported dir keeps a broken symlink as a symlink', async () => {
    const root = await unpack(p, 'imp')
    const st = await lstat(join(root, 'linkdir/dangling'))
    expect(st.isSymbolicLink()).toBe(true)
    expect(await readlink(join(root, 'linkdir/dangling'))).toBe('/nonexistent/target')
    expect(await readlink(join(root, 'linkdir/rel'))).toBe('real.txt')
    expect(await readFile(join(root, 'linkdir/real.txt'), 'utf8')).toBe('real\n')
    const entries = await topLayerEntries(oci(), 'imp')
    const e = entries.find((x) => norm(x.name) === 'linkdir/dangling')
    expect([e?.type, e?.linkname]).toEqual(['symlink', '/nonexistent/target'])
    assertNoMountsUnder(p.dir)
  })

  it('a glob in run reaches every /bin entry', async () => {
    // `cp -s` (symlinks) rather than upstream's plain `cp`: the same glob, without ~400 copies of the
    // busybox binary (one per applet hardlink) in the layer.
    const root = await unpack(p, 'glob')
    const bin = (await readdir(join(root, 'bin'))).sort()
    expect(bin.length).toBeGreaterThan(50)
    expect((await readdir(join(root, 'mybin'))).sort()).toEqual(bin)
    for (const b of bin) expect(await readlink(join(root, 'mybin', b))).toBe(`/bin/${b}`)
    assertNoMountsUnder(p.dir)
  })

  it('grabs a file from a build_only layer', async () => {
    const g = await stacker(['grab', 'three:/three'], { cwd: p.dir, env: SDE })
    expectOk(g)
    expect(await readFile(p.path('three'), 'utf8')).toBe('three\n')
    assertNoMountsUnder(p.dir)
  })
})

describe('build_only layer whose run fails', () => {
  it('fails the build, and once fixed the child gets its content', async () => {
    const p = await tempProject()
    try {
      const yaml = (script: string): string => `
base:
  ${BUSYBOX}
  build_only: true
  run: |
    ${script}
top:
  from: {type: built, tag: base}
  run: echo top > /top
`
      await p.write('stacker.yaml', yaml('echo before > /before\n    exit 3'))
      const bad = await build(p)
      expect(bad.exitCode, bad.stderr).toBe(1)
      expect(bad.stderr).toContain('run commands failed')
      expect(bad.stderr).toContain('exit status 3')
      expect(bad.stderr).not.toContain('filesystem top built successfully')
      expect(existsSync(p.path('oci/index.json')) ? await indexTags(p.path('oci')) : []).toEqual([])

      await p.write('stacker.yaml', yaml('echo fixed > /fixed'))
      const good = expectOk(await build(p))
      expect(good.stderr).toContain('filesystem base built successfully')
      expect(await indexTags(p.path('oci'))).toEqual(['top'])
      const root = await unpack(p, 'top')
      expect(await readFile(join(root, 'fixed'), 'utf8')).toBe('fixed\n')
      expect(existsSync(join(root, 'before'))).toBe(false)
      expect((await readManifest(p.path('oci'), 'top')).layers).toHaveLength(3)
      assertNoMountsUnder(p.dir)
    } finally {
      await p.cleanup()
    }
  })
})

describe('a 200-layer chain', () => {
  it('builds, and the last image holds the files of the first and last layers', async () => {
    const p = await tempProject()
    try {
      // Layer 1 and 200 run in a container; the 198 between write their file by a dest import, which
      // needs no container, so the chain is deep without 200 container starts. Layer 200's run mounts
      // the whole chain (~200 lower dirs), beyond where long overlay options break.
      const N = 200
      let yaml = `l1:\n  ${BUSYBOX}\n  run: echo 1 > /f1\n`
      for (let i = 2; i < N; i++) {
        await p.write(`files/f${i}`, `${i}\n`)
        yaml += `l${i}:\n  from: {type: built, tag: l${i - 1}}\n  imports: [{path: files/f${i}, dest: /f${i}}]\n`
      }
      yaml += `l${N}:\n  from: {type: built, tag: l${N - 1}}\n  run: |\n    cat /f1 /f2 /f100 /f${N - 1} > /f${N}\n`
      await p.write('stacker.yaml', yaml)
      const started = Date.now()
      const r = await build(p)
      const seconds = (Date.now() - started) / 1000
      expectOk(r)
      console.log(`200-layer chain built in ${seconds.toFixed(1)}s`)
      const m = await readManifest(p.path('oci'), `l${N}`)
      // busybox + l1's diff + 198 dest-import layers + l200's diff.
      expect(m.layers).toHaveLength(N + 1)
      const root = await unpack(p, `l${N}`)
      expect(await readFile(join(root, 'f1'), 'utf8')).toBe('1\n')
      expect(await readFile(join(root, `f${N}`), 'utf8')).toBe(`1\n2\n100\n${N - 1}\n`)
      for (let i = 1; i <= N; i++) expect(existsSync(join(root, `f${i}`)), `f${i}`).toBe(true)
      assertNoMountsUnder(p.dir)
    } finally {
      await p.cleanup()
    }
  })
})

describe('overlay_dirs', () => {
  let p: TempProject
  let first: StackerResult
  const oci = (): string => p.path('oci')
  beforeAll(async () => {
    p = await tempProject({
      'ovl1/bin/tool': { content: '#!/bin/sh\necho tool-ran\n', mode: 0o755 },
      'ovl1/etc/ovl.conf': 'conf\n',
      'ovl2/data.txt': 'data v1\n',
      'stacker.yaml': `
ovl:
  ${BUSYBOX}
  overlay_dirs:
    - source: ovl1
    - source: ovl2
      dest: /opt/data
  run: |
    /bin/tool > /ran
    cat /opt/data/data.txt > /seen
user:
  ${BUSYBOX}
  imports:
    - stacker://ovl/opt/data/data.txt
  run: cp /stacker/imports/data.txt /copied
`,
    })
    execFileSync('chown', ['-R', '1234:1234', p.path('ovl1'), p.path('ovl2')])
    first = expectOk(await build(p))
  })
  afterAll(() => p?.cleanup())

  it('puts each overlay dir in its own uncompressed layer below the run diff', async () => {
    const m = await readManifest(oci(), 'ovl')
    expect(m.layers).toHaveLength(4)
    expect(m.layers.map((l) => l.mediaType)).toEqual([
      'application/vnd.oci.image.layer.v1.tar+gzip',
      'application/vnd.oci.image.layer.v1.tar',
      'application/vnd.oci.image.layer.v1.tar',
      'application/vnd.oci.image.layer.v1.tar+gzip',
    ])
    const ovl1 = (await layerTarEntries(oci(), m.layers[1]!.digest)).map((e) => norm(e.name))
    expect(ovl1).toEqual(expect.arrayContaining(['bin/tool', 'etc/ovl.conf']))
    expect(ovl1.some((n) => n.includes('data.txt'))).toBe(false)
    const ovl2 = (await layerTarEntries(oci(), m.layers[2]!.digest)).map((e) => norm(e.name))
    expect(ovl2).toContain('opt/data/data.txt')
    // The run diff holds only what the run wrote.
    const top = (await layerTarEntries(oci(), m.layers[3]!.digest)).map((e) => norm(e.name))
    expect(top.sort()).toEqual(['ran', 'seen'])
    assertNoMountsUnder(p.dir)
  })

  it('is visible to run, keeps the exec bit, and does not keep host ownership', async () => {
    const root = await unpack(p, 'ovl')
    expect(await readFile(join(root, 'ran'), 'utf8')).toBe('tool-ran\n')
    expect(await readFile(join(root, 'seen'), 'utf8')).toBe('data v1\n')
    const tool = await lstat(join(root, 'bin/tool'))
    expect(tool.mode & 0o777).toBe(0o755)
    expect([tool.uid, tool.gid]).toEqual([0, 0])
    expect((await lstat(join(root, 'opt/data/data.txt'))).uid).toBe(0)
    // The rest of /bin is still the base's.
    expect(existsSync(join(root, 'bin/busybox'))).toBe(true)
    const m = await readManifest(oci(), 'ovl')
    for (const e of await layerTarEntries(oci(), m.layers[1]!.digest))
      expect([e.name, e.uid, e.gid]).toEqual([e.name, 0, 0])
    assertNoMountsUnder(p.dir)
  })

  it('can be imported from with stacker://', async () => {
    const root = await unpack(p, 'user')
    expect(await readFile(join(root, 'copied'), 'utf8')).toBe('data v1\n')
    assertNoMountsUnder(p.dir)
  })

  it('a changed overlay dir misses the cache and says which dir changed', async () => {
    expect(first.stderr).toContain('filesystem ovl built successfully')
    const again = expectOk(await build(p))
    expect(again.stderr).toContain('found cached layer ovl')
    await p.write('ovl2/data.txt', 'data v2\n')
    const changed = expectOk(await build(p))
    expect(changed.stderr).toContain('cache miss because content of 1 overlay dirs changed:')
    expect(changed.stderr).toContain('Changed overlay_dir:')
    expect(changed.stderr).toContain('ovl2')
    const root = await unpack(p, 'ovl')
    expect(await readFile(join(root, 'seen'), 'utf8')).toBe('data v2\n')
    assertNoMountsUnder(p.dir)
  })
})
