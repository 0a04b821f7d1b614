// The build cache (docs/architecture.md, "The cache"): what hits, what misses and why,
// and that a damaged cache is survived.
import { readdir, readFile, rm, symlink, writeFile, chmod } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  finishProject,
  expectOk,
  fixtures,
  layerTarEntries,
  readManifest,
  projectsPerTest,
  type StackerResult,
  type TarEntry,
  stacker,
  type TempProject,
  umociUnpack,
} from './helpers/index.js'

const project = projectsPerTest()

function build(p: TempProject, extra: string[] = []): Promise<StackerResult> {
  const f = fixtures()
  return stacker(
    ['build', '--substitute', `BUSYBOX_OCI=${f.BUSYBOX_OCI}`, '--substitute', `UBUNTU_OCI=${f.UBUNTU_OCI}`, ...extra],
    { cwd: p.dir },
  )
}

/** The layer was taken from the cache: the hit is logged and its run did not happen. */
function expectHit(r: StackerResult, layer: string): void {
  expectOk(r)
  expect(r.stderr).toContain(`found cached layer ${layer}`)
  expect(r.stdout).not.toContain(`RAN-${layer}`)
}

/** The layer was built again: its run happened and no hit was logged for it. */
function expectRebuilt(r: StackerResult, layer: string, reason?: string): void {
  expectOk(r)
  expect(r.stdout).toContain(`RAN-${layer}`)
  expect(r.stderr).not.toMatch(new RegExp(`found cached layer ${layer}$`, 'm'))
  if (reason !== undefined) expect(r.stderr).toContain(reason)
}

/** The entry for `path` in the topmost layer of the image `tag` that has it (no unpacking). */
async function entryInImage(p: TempProject, tag: string, path: string): Promise<TarEntry | undefined> {
  const layers = (await readManifest(p.path('oci'), tag)).layers
  for (const l of [...layers].reverse()) {
    const e = (await layerTarEntries(p.path('oci'), l.digest, { withContent: true })).find(
      (x) => x.name.replace(/^\.?\//, '') === path,
    )
    if (e) return e
  }
  return undefined
}

async function fileInImage(p: TempProject, tag: string, path: string): Promise<string | undefined> {
  return (await entryInImage(p, tag, path))?.content?.toString('utf8')
}

describe('imports and the cache key', () => {
  it('hits when nothing changed and misses on every kind of import change', async () => {
    const p = await project({
      'file.txt': 'one\n',
      'dir/x': 'x1\n',
      'dir/y': 'y\n',
      'tree1/zomg': 'tree one\n',
      'tree2/zomg': 'tree two\n',
      'destfile.txt': 'dest one\n',
      'stacker.yaml': `
imp:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  imports:
    - file.txt
    - dir
    - link/zomg
    - {path: destfile.txt, dest: /destfile}
  run: |
    echo RAN-imp
    sed 's/^/LINK: /' /stacker/imports/zomg
    cp /destfile /seen-destfile
    cp /stacker/imports/zomg /seen-link
    cp -p /stacker/imports/file.txt /seen-file
`,
    })
    // Imported through a directory symlink, as upstream's "import caching" test does.
    await symlink('tree1', p.path('link'))
    const file = p.path('file.txt')
    const dir = p.path('dir')
    const viaLink = p.path('link/zomg')

    expectRebuilt(await build(p), 'imp')
    expectHit(await build(p), 'imp')

    await p.write('file.txt', 'two\n')
    expectRebuilt(await build(p), 'imp', `cache miss because import content changed: ${file}`)

    await p.write('dir/x', 'x2\n')
    expectRebuilt(await build(p), 'imp', `cache miss because import dir content changed: ${dir}`)

    await rm(p.path('dir/y'))
    expectRebuilt(await build(p), 'imp', `cache miss because import dir content changed: ${dir}`)

    expect((await entryInImage(p, 'imp', 'seen-file'))?.mode).toBe(0o644)
    await chmod(file, 0o755)
    expectRebuilt(await build(p), 'imp', `cache miss because import content changed: ${file}`)
    expect((await entryInImage(p, 'imp', 'seen-file'))?.mode).toBe(0o755)

    // The symlink stays, the file behind it changes.
    await writeFile(p.path('tree1/zomg'), 'tree one, edited\n')
    const viaTarget = await build(p)
    expectRebuilt(viaTarget, 'imp', `cache miss because import content changed: ${viaLink}`)
    expect(viaTarget.stdout).toContain('LINK: tree one, edited')

    // The symlink is pointed somewhere else.
    await rm(p.path('link'))
    await symlink('tree2', p.path('link'))
    const repointed = await build(p)
    expectRebuilt(repointed, 'imp', `cache miss because import content changed: ${viaLink}`)
    expect(repointed.stdout).toContain('LINK: tree two')
    expect(await fileInImage(p, 'imp', 'seen-link')).toBe('tree two\n')
    expectHit(await build(p), 'imp')

    // Upstream ignores imports with dest in the cache key; this project must not.
    expect(await fileInImage(p, 'imp', 'destfile')).toBe('dest one\n')
    await p.write('destfile.txt', 'dest two\n')
    expectRebuilt(await build(p), 'imp')
    expect(await fileInImage(p, 'imp', 'destfile')).toBe('dest two\n')
    expect(await fileInImage(p, 'imp', 'seen-destfile')).toBe('dest two\n')
    expectHit(await build(p), 'imp')

    await p.write('stacker.yaml', (await readFile(p.path('stacker.yaml'), 'utf8')).replace('RAN-imp', 'RAN-imp again'))
    expectRebuilt(await build(p), 'imp', 'cache miss because layer definition was changed')
    expectHit(await build(p), 'imp')
    await finishProject(p)
  })

  it('a changed import dir with dest is rebuilt too', async () => {
    const p = await project({
      'tree/a': 'a1\n',
      'stacker.yaml': `
dd:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  imports:
    - {path: tree, dest: /tree}
  run: echo RAN-dd
`,
    })
    expectRebuilt(await build(p), 'dd')
    await p.write('tree/a', 'a2\n')
    await p.write('tree/b', 'b\n')
    expectRebuilt(await build(p), 'dd')
    expect(await fileInImage(p, 'dd', 'tree/a')).toBe('a2\n')
    expect(await fileInImage(p, 'dd', 'tree/b')).toBe('b\n')
    expectHit(await build(p), 'dd')
    await finishProject(p)
  })
})

describe('bases and parents', () => {
  const yaml = (base: string, topRun = 'echo RAN-top') => `
top:
  from: {type: oci, url: "\${{${base}}}"}
  run: |
    ${topRun}
child:
  from: {type: built, tag: top}
  run: |
    echo RAN-child
    echo child > /child
`

  it('a changed oci base rebuilds the layer and its built children', async () => {
    const p = await project({ 'stacker.yaml': yaml('BUSYBOX_OCI') })
    const r1 = await build(p)
    expectRebuilt(r1, 'top')
    expectRebuilt(r1, 'child')
    const r2 = await build(p)
    expectHit(r2, 'top')
    expectHit(r2, 'child')

    await p.write('stacker.yaml', yaml('UBUNTU_OCI'))
    const r3 = await build(p)
    expectRebuilt(r3, 'top', 'cache miss because base layer was changed')
    expectRebuilt(r3, 'child')
    expect(await fileInImage(p, 'top', 'etc/issue')).toContain('Ubuntu')
    expect(await fileInImage(p, 'child', 'etc/issue')).toContain('Ubuntu')
    expect(await fileInImage(p, 'child', 'child')).toBe('child\n')
    await finishProject(p)
  })

  it('a changed parent rebuilds its built child; --no-cache rebuilds everything', async () => {
    const p = await project({ 'stacker.yaml': yaml('BUSYBOX_OCI') })
    expectOk(await build(p))
    await p.write('stacker.yaml', yaml('BUSYBOX_OCI', 'echo RAN-top; echo v2 > /v2'))
    const r = await build(p)
    expectRebuilt(r, 'top', 'cache miss because layer definition was changed')
    expectRebuilt(r, 'child', 'cache miss because base layer was changed')
    expect(await fileInImage(p, 'child', 'v2')).toBe('v2\n')

    const nc = await build(p, ['--no-cache'])
    expectRebuilt(nc, 'top')
    expectRebuilt(nc, 'child')
    expect(nc.stderr).not.toContain('found cached layer')
    expectHit(await build(p), 'child')
    await finishProject(p)
  })
})

describe('stacker:// imports and the cache key', () => {
  it('an unchanged source layer is a hit, a changed one rebuilds the importer', async () => {
    const yaml = (content: string) => `
src:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  run: |
    echo RAN-src
    echo ${content} > /made
use:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  imports:
    - stacker://src/made
    - {path: stacker://src/made, dest: /made-copy}
  run: |
    echo RAN-use
    cp /stacker/imports/made /seen
`
    const p = await project({ 'stacker.yaml': yaml('first') })
    expectRebuilt(await build(p), 'use')
    expectHit(await build(p), 'use')
    await p.write('stacker.yaml', yaml('second'))
    const r = await build(p)
    expectRebuilt(r, 'src')
    expectRebuilt(r, 'use')
    expect(await fileInImage(p, 'use', 'seen')).toBe('second\n')
    expect(await fileInImage(p, 'use', 'made-copy')).toBe('second\n')
    await finishProject(p)
  })
})

describe('a damaged or partial cache', () => {
  const yaml = `
one:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  run: |
    echo RAN-one
    echo one > /one
two:
  from: {type: built, tag: one}
  run: |
    echo RAN-two
    echo two > /two
`
  const noStack = (r: StackerResult) => expect(`${r.stdout}${r.stderr}`).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m)

  it('warns about corrupt cache files and builds anyway', async () => {
    const p = await project({ 'stacker.yaml': yaml })
    expectOk(await build(p))
    const entries = p.path('.stacker/cache/entries')
    const names = p.path('.stacker/cache/names')
    const entryFiles = await readdir(entries)
    expect(entryFiles.length).toBeGreaterThanOrEqual(2)
    // Garbage in every entry and in one name record.
    for (const f of entryFiles) await writeFile(join(entries, f), '\0\x01{not json')
    await writeFile(join(names, 'one.json'), 'garbage')
    const r = await build(p)
    expectOk(r)
    noStack(r)
    expect(r.stderr).toMatch(/warn|corrupt|discard/i)
    expect(r.stdout).toContain('RAN-one')
    expect(await fileInImage(p, 'two', 'one')).toBe('one\n')
    expectHit(await build(p), 'two')
    await finishProject(p)
  })

  it('survives cache records that are JSON of the wrong shape', async () => {
    const p = await project({ 'stacker.yaml': yaml })
    expectOk(await build(p))
    const names = p.path('.stacker/cache/names')
    const entries = p.path('.stacker/cache/entries')
    const ref = JSON.parse(await readFile(join(names, 'one.json'), 'utf8')) as { version: number; key: string }
    // Right version and key, but a chain that is not there and nothing else.
    await writeFile(
      join(entries, `${ref.key.slice(ref.key.indexOf(':') + 1)}.json`),
      JSON.stringify({ version: ref.version, key: ref.key, chain: ['nope'], outputs: {} }),
    )
    // A name record whose key is not a digest.
    await writeFile(join(names, 'two.json'), JSON.stringify({ version: ref.version, key: 42 }))
    const r = await build(p)
    expectOk(r)
    noStack(r)
    expect(r.stderr).toContain('corrupt cache file')
    expect(r.stdout).toContain('RAN-one')
    expect(await fileInImage(p, 'two', 'one')).toBe('one\n')
    expect(await fileInImage(p, 'two', 'two')).toBe('two\n')
    expectHit(await build(p), 'two')
    await finishProject(p)
  })

  it('ignores a damaged file-hash cache', async () => {
    const p = await project({
      'file.txt': 'hashed once\n',
      'stacker.yaml': `
hc:
  from: {type: oci, url: "\${{BUSYBOX_OCI}}"}
  imports:
    - file.txt
  run: |
    echo RAN-hc
    cp /stacker/imports/file.txt /seen
`,
    })
    expectRebuilt(await build(p), 'hc')
    const hashCache = p.path('.stacker/hash-cache.json')
    expect(await readFile(hashCache, 'utf8')).toContain(p.path('file.txt'))
    // Parses, but a record is not what it should be.
    await writeFile(hashCache, JSON.stringify({ version: 1, entries: [[p.path('file.txt'), null, 'sha256:00']] }))
    const r1 = await build(p)
    noStack(r1)
    expectHit(r1, 'hc')
    await writeFile(hashCache, '{"version":1,"entries":[[')
    await p.write('file.txt', 'hashed twice\n')
    const r2 = await build(p)
    noStack(r2)
    expectRebuilt(r2, 'hc', `cache miss because import content changed: ${p.path('file.txt')}`)
    expect(await fileInImage(p, 'hc', 'seen')).toBe('hashed twice\n')
    await finishProject(p)
  })

  it('rebuilds after roots/ is deleted, keeping .stacker and oci', async () => {
    const p = await project({ 'stacker.yaml': yaml })
    expectOk(await build(p))
    await rm(p.path('roots'), { recursive: true, force: true })
    const r = await build(p)
    expectOk(r)
    noStack(r)
    const rootfs = await umociUnpack(p.path('oci'), 'two', p.path('u'))
    expect(await readFile(join(rootfs, 'one'), 'utf8')).toBe('one\n')
    expect(await readFile(join(rootfs, 'two'), 'utf8')).toBe('two\n')
    expect(await readFile(join(rootfs, 'etc/passwd'), 'utf8')).toContain('root:')
    // And the rebuilt state is a good cache again.
    expectHit(await build(p), 'two')
    await finishProject(p)
  })

  it('leaves no temporary files in the cache', async () => {
    const p = await project({ 'stacker.yaml': yaml })
    expectOk(await build(p))
    await p.write('stacker.yaml', yaml.replace('echo two > /two', 'echo two again > /two'))
    expectOk(await build(p))
    const all = (await readdir(p.path('.stacker/cache'), { recursive: true })) as string[]
    expect(all.some((f) => f.endsWith('.json'))).toBe(true)
    expect(all.filter((f) => /\.tmp|\.part|~$/.test(f))).toEqual([])
    await finishProject(p)
  })
})
