// Image config rules: cmd/entrypoint/full_command (docs/compatibility.md), generate_labels,
// os/arch, and reproducibility with SOURCE_DATE_EPOCH (upstream's bats "entrypoint",
// "labels", "multi-arch" and "reproducible").
import { cp, mkdir } from 'node:fs/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  expectOk,
  fixtures,
  manifestDescriptor,
  type OciImageConfig,
  readConfig,
  skopeoInspect,
  stacker,
  type TempProject,
  tempProject,
} from './helpers/index.js'

const SDE = '1700000000'
const SDE_TIME = '2023-11-14T22:13:20Z'

function busybox(): string {
  return `    type: oci\n    url: ${fixtures().BUSYBOX_OCI}\n`
}

async function config(layout: string, tag: string): Promise<OciImageConfig['config']> {
  const c = (await readConfig(layout, tag)).config
  // skopeo reads the same blob independently; the two must agree on what is set.
  const s = (await skopeoInspect(layout, tag, { config: true })).config
  expect(s?.Entrypoint ?? null).toEqual(c?.Entrypoint ?? null)
  expect(s?.Cmd ?? null).toEqual(c?.Cmd ?? null)
  return c
}

describe('cmd, entrypoint, full_command, labels and platform', () => {
  let p: TempProject
  const oci = (): string => p.path('oci')

  beforeAll(async () => {
    p = await tempProject({
      'stacker.yaml': `parent:
  from:
${busybox()}  cmd: foo "bar baz"
  entrypoint: [ep1]
inherits:
  from: {type: built, tag: parent}
  run: touch /x
sets-entrypoint:
  from: {type: built, tag: parent}
  entrypoint: "sh -c 'echo a b'"
sets-cmd:
  from: {type: built, tag: parent}
  cmd: [x, "y z"]
sets-both:
  from: {type: built, tag: parent}
  entrypoint: /new-ep
  cmd: /new-cmd arg
full:
  from: {type: built, tag: parent}
  full_command: /bin/full --flag "two words"
full-list:
  from: {type: built, tag: parent}
  full_command: [/bin/a, b c]
labels:
  from: {type: built, tag: parent}
  generate_labels: |
    echo -n rocks > /stacker/oci-labels/meshuggah
    echo -n generated > /stacker/oci-labels/overridden
    touch /not-in-image
  labels:
    overridden: from-labels
    plain: label
platform:
  from: {type: built, tag: parent}
  os: darwin
  arch: arm64
`,
    })
    expectOk(await stacker(['build'], { cwd: p.dir }))
  })
  afterAll(() => p?.cleanup())
  afterEach(() => assertNoMountsUnder(p.dir))

  it('a shell-split cmd and a list entrypoint are set as given', async () => {
    const c = await config(oci(), 'parent')
    expect(c?.Cmd).toEqual(['foo', 'bar baz'])
    expect(c?.Entrypoint).toEqual(['ep1'])
  })

  it('cmd and entrypoint are inherited from the parent when unset', async () => {
    const c = await config(oci(), 'inherits')
    expect(c?.Cmd).toEqual(['foo', 'bar baz'])
    expect(c?.Entrypoint).toEqual(['ep1'])
  })

  it('setting entrypoint clears an inherited cmd', async () => {
    const c = await config(oci(), 'sets-entrypoint')
    expect(c?.Entrypoint).toEqual(['sh', '-c', 'echo a b'])
    expect(c?.Cmd ?? null).toBeNull()
  })

  it('setting cmd keeps the inherited entrypoint', async () => {
    const c = await config(oci(), 'sets-cmd')
    expect(c?.Cmd).toEqual(['x', 'y z'])
    expect(c?.Entrypoint).toEqual(['ep1'])
  })

  it('setting both keeps both', async () => {
    const c = await config(oci(), 'sets-both')
    expect(c?.Entrypoint).toEqual(['/new-ep'])
    expect(c?.Cmd).toEqual(['/new-cmd', 'arg'])
  })

  it('full_command sets entrypoint and clears cmd', async () => {
    const c = await config(oci(), 'full')
    expect(c?.Entrypoint).toEqual(['/bin/full', '--flag', 'two words'])
    expect(c?.Cmd ?? null).toBeNull()
    const l = await config(oci(), 'full-list')
    expect(l?.Entrypoint).toEqual(['/bin/a', 'b c'])
    expect(l?.Cmd ?? null).toBeNull()
  })

  it('generate_labels makes labels from /stacker/oci-labels; labels: override them', async () => {
    const viaSkopeo = await skopeoInspect(oci(), 'labels')
    expect(viaSkopeo.Labels).toEqual({ meshuggah: 'rocks', overridden: 'from-labels', plain: 'label' })
    expect((await readConfig(oci(), 'labels')).config?.Labels).toEqual(viaSkopeo.Labels)
    // The label script's filesystem changes are thrown away: the image is its parent's.
    const layers = async (t: string) => (await skopeoInspect(oci(), t)).Layers
    expect(await layers('labels')).toEqual(await layers('parent'))
  })

  it('os and arch set the config platform', async () => {
    const cfg = await readConfig(oci(), 'platform')
    expect(cfg.os).toBe('darwin')
    expect(cfg.architecture).toBe('arm64')
    const s = await skopeoInspect(oci(), 'platform', { config: true })
    expect([s.os, s.architecture]).toEqual(['darwin', 'arm64'])
    expect((await readConfig(oci(), 'parent')).os).toBe('linux')
  })
})

describe('stackerfile and environment errors', () => {
  let p: TempProject
  afterEach(async () => {
    assertNoMountsUnder(p.dir)
    await p.cleanup()
  })

  it('an empty os fails', async () => {
    p = await tempProject({ 'stacker.yaml': `a:\n  from:\n${busybox()}  os:\n` })
    const r = await stacker(['build'], { cwd: p.dir })
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toContain('"os" value cannot be empty')
  })

  it('a SOURCE_DATE_EPOCH that is not an integer fails', async () => {
    p = await tempProject({ 'stacker.yaml': `a:\n  from:\n${busybox()}` })
    const r = await stacker(['build'], { cwd: p.dir, env: { SOURCE_DATE_EPOCH: 'abc' } })
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toContain('invalid SOURCE_DATE_EPOCH')
    expect(r.stderr).toContain('"abc"')
  })
})

describe('reproducible builds with SOURCE_DATE_EPOCH', () => {
  // A multi-layer image: a build_only ancestor, then a layer with several environment variables.
  const stackerfile = (): string => `base:
  from:
${busybox()}  build_only: true
  run: |
    echo one > /one
    mkdir -p /d/e && echo deep > /d/e/f
mid:
  from: {type: built, tag: base}
  run: echo two > /two
  environment:
    ZETA: z
    ALPHA: a
    MIDDLE: "m m"
top:
  from: {type: built, tag: mid}
  run: rm /one && echo three > /three
  environment:
    TOP: t
`
  const projects: TempProject[] = []
  async function project(): Promise<TempProject> {
    const p = await tempProject({ 'stacker.yaml': stackerfile() })
    projects.push(p)
    return p
  }
  afterEach(async () => {
    for (const p of projects) assertNoMountsUnder(p.dir)
    while (projects.length) await projects.pop()?.cleanup()
  })
  const build = async (p: TempProject, sde: string) =>
    expectOk(await stacker(['build'], { cwd: p.dir, env: { SOURCE_DATE_EPOCH: sde } }))
  const digest = async (p: TempProject, tag: string) => (await manifestDescriptor(p.path('oci'), tag)).digest

  it('sets created, author and history from SOURCE_DATE_EPOCH', async () => {
    const p = await project()
    await build(p, SDE)
    const cfg = await readConfig(p.path('oci'), 'top')
    expect(cfg.created).toBe(SDE_TIME)
    expect(cfg.author).toBe('stacker')
    const h = cfg.history ?? []
    expect(h.at(-1)).toEqual({ created: SDE_TIME, created_by: 'stacker build', author: 'stacker', empty_layer: true })
    const own = h.filter((e) => e.created_by?.startsWith('stacker build of '))
    // The build_only ancestor's diff is carried by its first tagged child, named after the ancestor.
    expect(own.map((e) => e.created_by)).toEqual([
      'stacker build of base',
      'stacker build of mid',
      'stacker build of top',
    ])
    expect(own.every((e) => e.created === SDE_TIME && !e.empty_layer)).toBe(true)
    const nonEmpty = h.filter((e) => !e.empty_layer)
    expect(nonEmpty).toHaveLength(cfg.rootfs.diff_ids.length)
    const skopeo = await skopeoInspect(p.path('oci'), 'top')
    expect(skopeo.Created).toBe(SDE_TIME)
    expect(skopeo.Env).toEqual(expect.arrayContaining(['ZETA=z', 'ALPHA=a', 'MIDDLE=m m', 'TOP=t']))
  })

  it('gives identical digests after clean + rebuild and in a fresh directory', async () => {
    const a = await project()
    await build(a, SDE)
    const first = { mid: await digest(a, 'mid'), top: await digest(a, 'top') }
    expectOk(await stacker(['clean'], { cwd: a.dir }))
    await build(a, SDE)
    expect({ mid: await digest(a, 'mid'), top: await digest(a, 'top') }).toEqual(first)
    const b = await project()
    // A different dir and different file times: nothing of that may reach the image.
    await mkdir(b.path('unrelated'))
    await cp(a.path('stacker.yaml'), b.path('stacker.yaml'))
    await build(b, SDE)
    expect({ mid: await digest(b, 'mid'), top: await digest(b, 'top') }).toEqual(first)
  })

  it('an unchanged rebuild hits the cache; a changed SOURCE_DATE_EPOCH misses and changes created', async () => {
    const p = await project()
    await build(p, SDE)
    const before = await digest(p, 'top')
    const again = await build(p, SDE)
    expect(again.stderr).toContain('found cached layer base')
    expect(again.stderr).toContain('found cached layer mid')
    expect(again.stderr).toContain('found cached layer top')
    expect(again.stderr).not.toContain('built successfully')
    expect(await digest(p, 'top')).toBe(before)
    const later = await build(p, '1700000100')
    expect(later.stderr).toContain('cache miss because SOURCE_DATE_EPOCH changed')
    expect(later.stderr).toContain('filesystem top built successfully')
    const cfg = await readConfig(p.path('oci'), 'top')
    expect(cfg.created).toBe('2023-11-14T22:15:00Z')
    expect(cfg.created).not.toBe(SDE_TIME)
    expect(await digest(p, 'top')).not.toBe(before)
  })

  it('without SOURCE_DATE_EPOCH the author is user@host', async () => {
    const p = await project()
    await build(p, '')
    const cfg = await readConfig(p.path('oci'), 'top')
    expect(cfg.author).toContain('@')
    expect(cfg.history?.at(-1)?.author).toBe(cfg.author)
    expect(cfg.created).not.toBe(SDE_TIME)
    expect(Number.isNaN(Date.parse(cfg.created ?? ''))).toBe(false)
  })
})
