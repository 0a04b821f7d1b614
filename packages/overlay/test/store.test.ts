import { lstat, mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { execa } from 'execa'
import { getAttribute, setAttribute } from '@napi-rs/xattr'
import { memoryLogger } from '@stacker/core'
import { OVERLAY_OPAQUE_XATTR } from '@stacker/layers'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { OverlayStore, STORE_DIR, listMounts } from '../src/index.js'
import { cleanDir, isRoot, mknodWhiteout, tempDir } from './helpers.js'

const OPAQUE = OVERLAY_OPAQUE_XATTR

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  )
}

async function writeFiles(dir: string, files: Record<string, string>): Promise<void> {
  for (const [rel, body] of Object.entries(files)) {
    await mkdir(join(dir, rel, '..'), { recursive: true })
    await writeFile(join(dir, rel), body)
  }
}

it('runs the mount tests when CI runs them', () => {
  if (process.env.CI) expect(isRoot).toBe(true)
})

describe.runIf(isRoot)('OverlayStore content and records', () => {
  let dir: string
  let store: OverlayStore
  beforeEach(async () => {
    dir = await tempDir()
    store = await OverlayStore.open(join(dir, 'roots'))
  })
  afterEach(async () => cleanDir(dir))

  it('creates the layout and clears staging left by a killed process', async () => {
    await writeFiles(join(dir, 'roots', STORE_DIR, 'tmp', 'c-dead'), { 'half.txt': 'x' })
    await mkdir(join(dir, 'roots', STORE_DIR, 'build', 'app', 'upper'), { recursive: true })
    const reopened = await OverlayStore.open(join(dir, 'roots'))
    expect(reopened.rootsDir).toBe(join(dir, 'roots'))
    expect(await readdir(join(dir, 'roots'))).toEqual([STORE_DIR])
    expect((await readdir(join(dir, 'roots', STORE_DIR))).sort()).toEqual(['build', 'content', 'layers', 'tmp'])
    expect(await readdir(join(dir, 'roots', STORE_DIR, 'tmp'))).toEqual([])
    expect(await readdir(join(dir, 'roots', STORE_DIR, 'build'))).toEqual([])
  })

  it('fills a content dir once, even for concurrent callers', async () => {
    let fills = 0
    const fill = async (d: string) => {
      fills++
      await writeFiles(d, { 'etc/hostname': 'box\n' })
    }
    const [a, b] = await Promise.all([store.ensureContent('sha256_aa', fill), store.ensureContent('sha256_aa', fill)])
    expect(a).toBe(store.contentPath('sha256_aa'))
    expect(b).toBe(a)
    expect(fills).toBe(1)
    expect(await store.ensureContent('sha256_aa', fill)).toBe(a)
    expect(fills).toBe(1)
    expect(await readFile(join(a, 'etc/hostname'), 'utf8')).toBe('box\n')
    expect((await stat(a)).mode & 0o777).toBe(0o755)
    expect(await store.hasContent('sha256_aa')).toBe(true)
    expect(await store.hasContent('sha256_bb')).toBe(false)
  })

  it('leaves no content dir when the fill fails, and retries next time', async () => {
    await expect(
      store.ensureContent('layer_x', async (d) => {
        await writeFiles(d, { partial: 'p' })
        throw new Error('disk on fire')
      }),
    ).rejects.toThrow('disk on fire')
    expect(await store.hasContent('layer_x')).toBe(false)
    expect(await readdir(join(store.rootsDir, STORE_DIR, 'tmp'))).toEqual([])
    await store.ensureContent('layer_x', (d) => writeFiles(d, { whole: 'w' }))
    expect(await readdir(store.contentPath('layer_x'))).toEqual(['whole'])
  })

  it('adopts a dir, and drops a second dir for the same id', async () => {
    const up1 = join(store.rootsDir, STORE_DIR, 'build', 'u1')
    const up2 = join(store.rootsDir, STORE_DIR, 'build', 'u2')
    await writeFiles(up1, { 'one.txt': '1' })
    await writeFiles(up2, { 'two.txt': '2' })
    const p = await store.adoptContent('layer_abc', up1)
    expect(await readdir(p)).toEqual(['one.txt'])
    expect(await exists(up1)).toBe(false)
    expect(await store.adoptContent('layer_abc', up2)).toBe(p)
    expect(await readdir(p)).toEqual(['one.txt'])
    expect(await exists(up2)).toBe(false)
  })

  it('rejects content ids that are not one safe path component', () => {
    for (const bad of ['', '../x', 'a/b', '.hidden', 'a..b', 'x'.repeat(129), 'sp ace']) {
      expect(() => store.contentPath(bad), bad).toThrow('invalid content id')
    }
    expect(store.contentPath('sha256_0123abc')).toBe(join(store.rootsDir, STORE_DIR, 'content', 'sha256_0123abc'))
  })

  it('keeps layer records by name, whatever the name', async () => {
    const names = ['app', 'org/app:1', '.hidden', '..', 'x'.repeat(300)]
    for (const [i, name] of names.entries()) {
      await store.writeLayer(name, { version: 1, chain: ['sha256_aa', `layer_${i}`], meta: { i, env: ['B=1', 'A=2'] } })
    }
    expect(await store.listLayers()).toEqual([...names].sort())
    expect(await store.readLayer('org/app:1')).toEqual({
      version: 1,
      chain: ['sha256_aa', 'layer_1'],
      meta: { i: 1, env: ['B=1', 'A=2'] },
    })
    expect(await store.readLayer('x'.repeat(300))).toMatchObject({ chain: ['sha256_aa', 'layer_4'] })
    expect(await readdir(join(store.rootsDir, STORE_DIR, 'layers'))).not.toContain('...json')
    await store.writeLayer('app', { version: 1, chain: [] })
    expect(await store.readLayer('app')).toEqual({ version: 1, chain: [] })
    await store.removeLayer('app')
    await store.removeLayer('app')
    expect(await store.readLayer('app')).toBeUndefined()
    await expect(store.writeLayer('bad', { version: 1, chain: ['../etc'] })).rejects.toThrow('invalid content id')
  })

  it('ignores an unreadable record with a warning', async () => {
    const logger = memoryLogger()
    const s = await OverlayStore.open(store.rootsDir, { logger })
    await writeFile(join(s.rootsDir, STORE_DIR, 'layers', 'broken.json'), '{"version": 1, "chain": ["../x"]}')
    expect(await s.readLayer('broken')).toBeUndefined()
    expect(logger.lines('warn').join('\n')).toContain('ignoring unreadable layer record')
  })

  it('collects content not kept and not mounted', async () => {
    for (const id of ['keep_1', 'drop_1', 'drop_2', 'busy_1']) {
      await store.ensureContent(id, (d) => writeFiles(d, { [id]: id }))
    }
    const m = await store.mount({ lower: ['busy_1'], target: join(dir, 'mnt') })
    try {
      expect(await store.gcContent(new Set(['keep_1']))).toEqual(['drop_1', 'drop_2'])
      expect((await readdir(join(store.rootsDir, STORE_DIR, 'content'))).sort()).toEqual(['busy_1', 'keep_1'])
    } finally {
      await m.release()
    }
    expect(await store.gcContent(new Set(['keep_1']))).toEqual(['busy_1'])
    expect(await readdir(join(store.rootsDir, STORE_DIR, 'tmp'))).toEqual([])
  })

  it('removes blob views of collected content and keeps the others', async () => {
    for (const id of ['keep_1', 'drop_1']) await store.ensureContent(id, (d) => writeFiles(d, { [id]: id }))
    await store.setBlobView(`sha256:${'a'.repeat(64)}`, 'keep_1')
    await store.setBlobView(`sha256:${'b'.repeat(64)}`, 'drop_1')
    await store.gcContent(new Set(['keep_1']))
    const views = (await readdir(store.rootsDir)).filter((n) => n.startsWith('sha256_'))
    expect(views).toEqual([`sha256_${'a'.repeat(64)}`])
  })
})

describe.runIf(isRoot)('OverlayStore mounts', () => {
  let dir: string
  let store: OverlayStore
  beforeEach(async () => {
    dir = await tempDir()
    store = await OverlayStore.open(join(dir, 'roots'))
  })
  afterEach(async () => cleanDir(dir))

  async function threeLayers(): Promise<string[]> {
    await store.ensureContent('l0', (d) =>
      writeFiles(d, { 'a.txt': 'a0', 'b.txt': 'b0', 'c.txt': 'c0', 'd/old.txt': 'old', 'e/kept.txt': 'kept' }),
    )
    await store.ensureContent('l1', async (d) => {
      mknodWhiteout(join(d, 'b.txt'))
      await writeFiles(d, { 'd/new.txt': 'new', 'e/more.txt': 'more' })
      await setAttribute(join(d, 'd'), OPAQUE, 'y')
    })
    await store.ensureContent('l2', (d) => writeFiles(d, { 'a.txt': 'a2' }))
    return ['l0', 'l1', 'l2']
  }

  it('shows a chain with whiteouts and opaque dirs, and writes only to the upper dir', async () => {
    const chain = await threeLayers()
    const ws = await store.prepareBuild('app')
    const m = await store.mount({ lower: chain, upper: ws.upper, work: ws.work, target: ws.rootfs })
    try {
      expect(await listMounts(dir)).toEqual([ws.rootfs])
      const root = m.target
      expect((await readdir(root)).sort()).toEqual(['a.txt', 'c.txt', 'd', 'e'])
      expect(await readFile(join(root, 'a.txt'), 'utf8')).toBe('a2')
      expect(await readdir(join(root, 'd'))).toEqual(['new.txt'])
      expect((await readdir(join(root, 'e'))).sort()).toEqual(['kept.txt', 'more.txt'])

      await writeFile(join(root, 'made.txt'), 'made')
      await rm(join(root, 'c.txt'))
      expect(await readFile(join(ws.upper, 'made.txt'), 'utf8')).toBe('made')
      const wh = await lstat(join(ws.upper, 'c.txt'))
      expect(wh.isCharacterDevice()).toBe(true)
      expect(wh.rdev).toBe(0)
    } finally {
      await m.release()
      await m.release()
    }
    expect(await listMounts(dir)).toEqual([])
    expect(await readFile(join(store.contentPath('l0'), 'c.txt'), 'utf8')).toBe('c0')
    expect(await readdir(store.contentPath('l2'))).toEqual(['a.txt'])
    expect((await getAttribute(join(store.contentPath('l1'), 'd'), OPAQUE))?.toString()).toBe('y')
    expect(await readdir(join(store.rootsDir, STORE_DIR, 'tmp'))).toEqual([])
  })

  it('mounts read-only views of one layer, and writable views of none', async () => {
    await store.ensureContent('only', (d) => writeFiles(d, { 'x.txt': 'x' }))
    const ro = await store.mount({ lower: ['only'], target: join(dir, 'with space', 'ro') })
    try {
      expect(await listMounts(join(dir, 'with space'))).toEqual([join(dir, 'with space', 'ro')])
      expect(await readdir(ro.target)).toEqual(['x.txt'])
      await expect(writeFile(join(ro.target, 'y'), 'y')).rejects.toThrow()
    } finally {
      await ro.release()
    }
    const ws = await store.prepareBuild('scratch')
    const rw = await store.mount({ lower: [], upper: ws.upper, work: ws.work, target: ws.rootfs })
    try {
      expect(await readdir(rw.target)).toEqual([])
      await writeFile(join(rw.target, 'hello'), 'hi')
      expect(await readdir(ws.upper)).toEqual(['hello'])
    } finally {
      await rw.release()
    }
    await store.removeBuild('scratch')
    await store.removeBuild('app')
  })

  it('uses a layer repeated in a chain once, at its topmost place', async () => {
    await store.ensureContent('dup', (d) => writeFiles(d, { 'f.txt': 'dup' }))
    await store.ensureContent('mid', (d) => writeFiles(d, { 'f.txt': 'mid', 'm.txt': 'm' }))
    const m = await store.mount({ lower: ['dup', 'mid', 'dup'], target: join(dir, 'mnt') })
    try {
      expect(await readFile(join(m.target, 'f.txt'), 'utf8')).toBe('dup')
      expect(await readFile(join(m.target, 'm.txt'), 'utf8')).toBe('m')
    } finally {
      await m.release()
    }
  })

  it('fails with MOUNT when a layer of the chain is missing', async () => {
    await expect(store.mount({ lower: ['nope'], target: join(dir, 'mnt') })).rejects.toMatchObject({
      code: 'MOUNT',
      message: expect.stringContaining('is missing'),
    })
    expect(await readdir(join(store.rootsDir, STORE_DIR, 'tmp'))).toEqual([])
  })

  it('mounts a chain of 200 layers', async () => {
    const chain: string[] = []
    for (let i = 0; i < 200; i++) {
      const id = `layer_${String(i).padStart(3, '0')}`
      chain.push(id)
      await store.ensureContent(id, (d) =>
        writeFile(join(d, i === 0 ? 'bottom.txt' : i === 199 ? 'top.txt' : `f${i}`), String(i)),
      )
    }
    // With absolute paths the options would not fit overlayfs's one-page limit.
    expect(chain.map((id) => store.contentPath(id)).join(':').length).toBeGreaterThan(4096)
    const snap = await store.snapshot(chain)
    try {
      expect(await readFile(join(snap.target, 'bottom.txt'), 'utf8')).toBe('0')
      expect(await readFile(join(snap.target, 'top.txt'), 'utf8')).toBe('199')
      expect(await readFile(join(snap.target, 'f100'), 'utf8')).toBe('100')
    } finally {
      await snap.release()
    }
  })

  it('keeps snapshot writes out of the content dirs and drops them on release', async () => {
    const chain = await threeLayers()
    const snap = await store.snapshot(chain)
    try {
      await writeFile(join(snap.target, 'a.txt'), 'changed')
      await writeFile(join(snap.target, 'd', 'added'), 'added')
      await rm(join(snap.target, 'e'), { recursive: true })
      expect(await readFile(join(snap.upper, 'a.txt'), 'utf8')).toBe('changed')
      expect(await exists(join(snap.target, 'e'))).toBe(false)
    } finally {
      await snap.release()
    }
    expect(await readFile(join(store.contentPath('l2'), 'a.txt'), 'utf8')).toBe('a2')
    expect(await readdir(join(store.contentPath('l1'), 'd'))).toEqual(['new.txt'])
    expect(await readdir(join(store.contentPath('l0'), 'e'))).toEqual(['kept.txt'])
    expect(await exists(snap.upper)).toBe(false)
    expect(await exists(snap.target)).toBe(false)
    expect(await readdir(join(store.rootsDir, STORE_DIR, 'tmp'))).toEqual([])
  })

  it('builds layer on layer: an adopted upper dir serves as a lower of the next build', async () => {
    await store.ensureContent('base', (d) => writeFiles(d, { 'etc/conf': 'base', 'bin/tool': 'tool', 'var/x': 'x' }))
    let chain = ['base']
    for (const [i, step] of [
      async (root: string) => {
        await writeFile(join(root, 'etc/conf'), 'one')
        await rm(join(root, 'var'), { recursive: true })
        await mkdir(join(root, 'var'))
        await writeFile(join(root, 'var/y'), 'y')
      },
      async (root: string) => {
        await writeFile(join(root, 'etc/conf'), 'two', { flag: 'a' })
        await rm(join(root, 'bin/tool'))
        await rename(join(root, 'var/y'), join(root, 'var/z'))
      },
    ].entries()) {
      const ws = await store.prepareBuild(`step${i}`)
      const m = await store.mount({ lower: chain, upper: ws.upper, work: ws.work, target: ws.rootfs })
      try {
        await step(m.target)
      } finally {
        await m.release()
      }
      chain = [...chain, `layer_step${i}`]
      await store.adoptContent(`layer_step${i}`, ws.upper)
      await store.removeBuild(`step${i}`)
    }
    const view = await store.mount({ lower: chain, target: join(dir, 'view') })
    try {
      expect(await readFile(join(view.target, 'etc/conf'), 'utf8')).toBe('onetwo')
      expect(await readdir(join(view.target, 'bin'))).toEqual([])
      expect(await readdir(join(view.target, 'var'))).toEqual(['z'])
    } finally {
      await view.release()
    }
    expect(await readFile(join(store.contentPath('base'), 'var/x'), 'utf8')).toBe('x')
  })

  it('recovers a build workspace left mounted by a killed build', async () => {
    await store.ensureContent('base', (d) => writeFiles(d, { 'etc/os-release': 'x', 'keep/me': 'me' }))
    const ws = await store.prepareBuild('app')
    // Never released: stands for the mount of a process that died mid-build.
    const orphan = await store.mount({ lower: ['base'], upper: ws.upper, work: ws.work, target: ws.rootfs })
    await writeFile(join(ws.rootfs, 'half-built'), 'x')
    await rm(join(ws.rootfs, 'keep'), { recursive: true })

    const again = await store.prepareBuild('app')
    expect(again).toEqual(ws)
    expect(await listMounts(dir)).toEqual([])
    for (const d of [again.upper, again.work, again.rootfs]) expect(await readdir(d)).toEqual([])
    expect(await readFile(join(store.contentPath('base'), 'keep/me'), 'utf8')).toBe('me')

    const m = await store.mount({ lower: ['base'], upper: again.upper, work: again.work, target: again.rootfs })
    expect((await readdir(m.target)).sort()).toEqual(['etc', 'keep'])
    await m.release()
    await orphan.release()
    await store.removeBuild('app')
    expect(await readdir(join(store.rootsDir, STORE_DIR, 'build'))).toEqual([])
  })

  it('unmounts what a killed process left mounted when the store is opened again', async () => {
    const chain = await threeLayers()
    await store.snapshot(chain)
    const ws = await store.prepareBuild('app')
    await store.mount({ lower: chain, upper: ws.upper, work: ws.work, target: ws.rootfs })
    expect(await listMounts(dir)).toHaveLength(2)
    await OverlayStore.open(store.rootsDir)
    expect(await listMounts(dir)).toEqual([])
    expect(await readdir(join(store.rootsDir, STORE_DIR, 'tmp'))).toEqual([])
    expect(await readFile(join(store.contentPath('l0'), 'c.txt'), 'utf8')).toBe('c0')
  })

  it('keeps a roots dir that is itself a mount (a bind-mounted sandbox) and its content', async () => {
    const real = join(dir, 'real-roots')
    const aliased = join(dir, 'aliased')
    await mkdir(real)
    await mkdir(aliased)
    await execa('mount', ['--bind', real, aliased])
    try {
      const s1 = await OverlayStore.open(aliased)
      await s1.ensureContent('kept', async (d) => writeFile(join(d, 'f'), 'x'))
      const again = await OverlayStore.open(aliased)
      expect(await listMounts(aliased)).toEqual([aliased])
      expect(await readFile(join(again.contentPath('kept'), 'f'), 'utf8')).toBe('x')
      expect(await readdir(join(real, STORE_DIR))).toContain('tmp')
    } finally {
      await execa('umount', [aliased], { reject: false })
    }
  })

  it('lists no mount hidden under a later mount, and opening a store there succeeds', async () => {
    const a = join(dir, 'a')
    const other = join(dir, 'other')
    await mkdir(join(a, 'layer', 'rootfs'), { recursive: true })
    await mkdir(other)
    await execa('mount', ['-t', 'tmpfs', 'tmpfs', join(a, 'layer', 'rootfs')])
    try {
      expect(await listMounts(a)).toEqual([join(a, 'layer', 'rootfs')])
      await execa('mount', ['--bind', other, a])
      try {
        // The tmpfs is still in mountinfo, but no path leads to it any more.
        expect(await listMounts(a)).toEqual([a])
        const s2 = await OverlayStore.open(a)
        const ws = await s2.prepareBuild('layer')
        expect(ws.rootfs).toBe(join(a, 'layer', 'rootfs'))
      } finally {
        await execa('umount', [a], { reject: false })
      }
    } finally {
      await execa('umount', [join(a, 'layer', 'rootfs')], { reject: false })
    }
  })

  it('gives each layer views: its own content at <name>/overlay, an empty <name>/rootfs', async () => {
    await store.ensureContent('own1', async (d) => writeFile(join(d, 'f'), '1'))
    await store.ensureContent('own2', async (d) => writeFile(join(d, 'f'), '2'))
    await store.setLayerView('app', 'own1')
    expect(await readFile(join(store.rootsDir, 'app', 'overlay', 'f'), 'utf8')).toBe('1')
    await store.setLayerView('app', 'own2')
    expect(await readFile(join(store.rootsDir, 'app', 'overlay', 'f'), 'utf8')).toBe('2')
    await store.setLayerView('app', undefined)
    expect(await readdir(join(store.rootsDir, 'app', 'overlay'))).toEqual([])
    expect(await readdir(join(store.rootsDir, 'app', 'rootfs'))).toEqual([])
    // Names that would leave the roots dir or reach into the store get none.
    for (const bad of ['../x', '.store', 'a/../../b']) await store.setLayerView(bad, 'own1')
    expect(existsSync(join(dir, 'x'))).toBe(false)
    await store.setBlobView(`sha256:${'ab'.repeat(32)}`, 'own2')
    expect(await readFile(join(store.rootsDir, `sha256_${'ab'.repeat(32)}`, 'overlay', 'f'), 'utf8')).toBe('2')
  })
})
