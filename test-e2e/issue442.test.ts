// Upstream issue #442 ("cache use problem with build_only layers single --layer-type") and its whole
// family: a layer's filesystem is one chain of content dirs, so whatever --layer-type values are
// given, in whatever order and across however many builds, every run sees the content of its
// build_only ancestors and every output holds it. Outputs are checked by unpacking them with tools
// that share no code with stacker: umoci (tar), unsquashfs (squashfs), the kernel's erofs (erofs).
import { lstat, mkdir, readdir, readFile, readlink, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { getAttribute } from '@napi-rs/xattr'
import { fsImageDataSize } from '@stacker/layers'
import { describe, expect, it } from 'vitest'
import {
  blobPath,
  expectOk,
  fixtures,
  indexTags,
  manifestDescriptor,
  readIndex,
  readManifest,
  REF_NAME,
  projectsPerTest,
  type StackerResult,
  stacker,
  type TempProject,
  umociUnpack,
  unsquashfsExtract,
  veritysetupVerify,
  withErofsMount,
} from './helpers/index.js'

const VERITY = 'io.stackeroci.stacker.atomfs_verity_root_hash'

// The issue's file, with rootfs's run made to change on every build through NUMBER.
const ISSUE_FILE = `minbase:
  build_only: true
  from: {type: oci, url: \${{BASE}}}
  run: echo hello > /minbase.txt
rootfs:
  from: {type: built, tag: minbase}
  run: |
    [ -e /minbase.txt ]
    echo \${{NUMBER}} > /n
`

function build(p: TempProject, args: string[]): Promise<StackerResult> {
  return stacker(['build', '--substitute', `BASE=${fixtures().BUSYBOX_OCI}`, ...args], { cwd: p.dir })
}

function typeArgs(types: readonly string[]): string[] {
  return types.flatMap((t) => ['--layer-type', t])
}

interface Entry {
  type: 'file' | 'dir' | 'symlink' | 'other'
  content?: string
}

/** A directory tree read with overlay semantics: what it adds, what it deletes (0:0 char devices),
 *  and which directories hide what lies below them (the opaque xattr). */
interface LayerTree {
  entries: Map<string, Entry>
  whiteouts: string[]
  opaque: string[]
}

async function readTree(root: string): Promise<LayerTree> {
  const t: LayerTree = { entries: new Map(), whiteouts: [], opaque: [] }
  const visit = async (rel: string): Promise<void> => {
    for (const name of (await readdir(join(root, rel))).sort()) {
      const r = `${rel}/${name}`
      const full = join(root, r)
      const st = await lstat(full)
      if (st.isCharacterDevice() && st.rdev === 0) {
        t.whiteouts.push(r)
      } else if (st.isDirectory()) {
        if ((await getAttribute(full, 'user.overlay.opaque'))?.toString() === 'y') t.opaque.push(r)
        t.entries.set(r, { type: 'dir' })
        await visit(r)
      } else if (st.isFile()) {
        t.entries.set(r, { type: 'file', ...(st.size < 4096 ? { content: await readFile(full, 'utf8') } : {}) })
      } else if (st.isSymbolicLink()) {
        t.entries.set(r, { type: 'symlink', content: await readlink(full) })
      } else {
        t.entries.set(r, { type: 'other' })
      }
    }
  }
  await visit('')
  return t
}

/** Stacks layer trees bottom to top the way overlayfs does. */
function stack(layers: LayerTree[]): Map<string, Entry> {
  const fs = new Map<string, Entry>()
  const dropUnder = (p: string, self: boolean) => {
    for (const k of [...fs.keys()]) if ((self && k === p) || k.startsWith(`${p}/`)) fs.delete(k)
  }
  for (const l of layers) {
    for (const w of l.whiteouts) dropUnder(w, true)
    for (const o of l.opaque) dropUnder(o, false)
    for (const [k, v] of l.entries) fs.set(k, v)
  }
  return fs
}

let workCounter = 0
// Unpacking is by manifest digest: the same digest is the same filesystem.
const flattened = new Map<string, Map<string, Entry>>()

/** The filesystem an output image holds. tar images are unpacked by umoci; squashfs layers are
 *  extracted with unsquashfs, erofs layers read through a read-only kernel loop mount; both are then
 *  stacked with overlay semantics. Every squashfs/erofs layer's verity data is checked on the way. */
async function imageFs(layout: string, tag: string, work: string): Promise<Map<string, Entry>> {
  const desc = await manifestDescriptor(layout, tag)
  const known = flattened.get(desc.digest)
  if (known) return known
  const m = await readManifest(layout, tag)
  const dir = join(work, `unpack-${workCounter++}`)
  let fs: Map<string, Entry>
  if (m.layers.every((l) => l.mediaType.startsWith('application/vnd.oci.image.layer.v1.tar'))) {
    fs = (await readTree(await umociUnpack(layout, tag, dir))).entries
  } else {
    const trees: LayerTree[] = []
    await mkdir(dir, { recursive: true })
    for (const [i, l] of m.layers.entries()) {
      const blob = blobPath(layout, l.digest)
      const kind = l.mediaType.includes('squashfs') ? 'squashfs' : l.mediaType.includes('erofs') ? 'erofs' : undefined
      if (!kind) throw new Error(`${tag}: layer ${l.digest} is ${l.mediaType} in an image of fs layers`)
      const hash = l.annotations?.[VERITY]
      if (hash !== undefined) {
        const v = await veritysetupVerify(blob, hash, await fsImageDataSize(blob, kind))
        expect(v.ok, `${tag} layer ${i}: ${v.output}`).toBe(true)
      }
      const target = join(dir, String(i))
      if (kind === 'squashfs') {
        await unsquashfsExtract(blob, target)
        trees.push(await readTree(target))
      } else {
        trees.push(await withErofsMount(blob, target, readTree))
      }
    }
    fs = stack(trees)
  }
  await rm(dir, { recursive: true, force: true })
  flattened.set(desc.digest, fs)
  return fs
}

function tagsOf(name: string, types: readonly string[]): string[] {
  return types.map((t) => (t === 'tar' ? name : `${name}-${t}`))
}

/** Asserts that output `tag` holds files with the given contents, and lacks the `absent` paths. */
async function expectFiles(
  p: TempProject,
  tag: string,
  files: Record<string, string>,
  absent: string[] = [],
): Promise<void> {
  const fs = await imageFs(p.path('oci'), tag, p.path('work'))
  // The busybox base is there too (the base layers were carried into this output type).
  expect(fs.get('/bin/busybox')?.type, `${tag}: /bin/busybox`).toBe('file')
  for (const [path, content] of Object.entries(files)) expect(fs.get(path)?.content, `${tag}: ${path}`).toBe(content)
  for (const path of absent) expect(fs.has(path), `${tag}: ${path} should be absent`).toBe(false)
}

const project = projectsPerTest({ checkMounts: true })

describe('issue #442: build_only layer, single --layer-type squashfs, a changing child', () => {
  it('passes 50 builds in a row, each run seeing the build_only content', async () => {
    const p = await project({ 'stacker.yaml': ISSUE_FILE })
    for (let n = 1; n <= 50; n++) {
      const r = await build(p, ['--layer-type', 'squashfs', '--substitute', `NUMBER=${n}`])
      expect(r.exitCode, `build ${n}:\n${r.stderr}`).toBe(0)
      if (n > 1) {
        // minbase is not rebuilt: this is the cached-build_only-parent situation of the issue.
        expect(r.stderr, `build ${n}`).toContain('found cached layer minbase')
        expect(r.stderr, `build ${n}`).toContain('filesystem rootfs built successfully')
      }
    }
    expect(await indexTags(p.path('oci'))).toEqual(['rootfs-squashfs'])
    await expectFiles(p, 'rootfs-squashfs', { '/minbase.txt': 'hello\n', '/n': '50\n' })
  })

  it('a second child of the same build_only layer, built after the first, sees its content too', async () => {
    const p = await project({
      'stacker.yaml': `${ISSUE_FILE}rootfs2:
  from: {type: built, tag: minbase}
  run: |
    [ -e /minbase.txt ]
    echo \${{NUMBER}} > /n2
`,
    })
    for (let n = 1; n <= 5; n++) {
      // --jobs 1: the second child is built strictly after the first has made its outputs.
      const r = await build(p, ['--layer-type', 'squashfs', '--jobs', '1', '--substitute', `NUMBER=${n}`])
      expect(r.exitCode, `build ${n}:\n${r.stderr}`).toBe(0)
    }
    expect(await indexTags(p.path('oci'))).toEqual(['rootfs-squashfs', 'rootfs2-squashfs'])
    await expectFiles(p, 'rootfs-squashfs', { '/minbase.txt': 'hello\n', '/n': '5\n' }, ['/n2'])
    await expectFiles(p, 'rootfs2-squashfs', { '/minbase.txt': 'hello\n', '/n2': '5\n' }, ['/n'])
  })
})

// build_only ancestors two deep, a cached sibling, and a grandchild: every output of every layer must
// hold minbase's and mid's content, whatever types are asked for and in whatever order across builds.
const MATRIX_FILE = `minbase:
  build_only: true
  from: {type: oci, url: \${{BASE}}}
  run: |
    echo hello > /minbase.txt
    rm /etc/hostname
mid:
  build_only: true
  from: {type: built, tag: minbase}
  run: echo mid > /mid.txt
rootfs:
  from: {type: built, tag: mid}
  run: |
    [ -e /minbase.txt ] && [ -e /mid.txt ] && [ ! -e /etc/hostname ]
    echo \${{NUMBER}} > /n
sibling:
  from: {type: built, tag: minbase}
  run: |
    [ -e /minbase.txt ] && [ ! -e /mid.txt ]
    echo sibling > /sibling
top:
  from: {type: built, tag: rootfs}
  run: |
    [ -e /minbase.txt ] && [ -e /mid.txt ] && [ -e /n ]
    echo top > /top
`

const SWITCHES: ReadonlyArray<readonly string[]> = [['squashfs'], ['tar'], ['tar', 'squashfs'], ['erofs']]

/** Checks every output in the index; the ones of this build's types must be of build n's rootfs. */
async function checkMatrixOutputs(p: TempProject, n: number, types: readonly string[]): Promise<void> {
  const shared = { '/minbase.txt': 'hello\n' }
  for (const tag of await indexTags(p.path('oci'))) {
    const layer = tag.replace(/-(squashfs|erofs)$/, '')
    if (layer === 'sibling') {
      await expectFiles(p, tag, { ...shared, '/sibling': 'sibling\n' }, ['/mid.txt', '/n'])
      continue
    }
    if (layer !== 'rootfs' && layer !== 'top') throw new Error(`unexpected tag ${tag}`)
    const files: Record<string, string> = { ...shared, '/mid.txt': 'mid\n' }
    if (layer === 'top') files['/top'] = 'top\n'
    if (types.some((t) => tagsOf(layer, [t])[0] === tag)) files['/n'] = `${n}\n`
    await expectFiles(p, tag, files, ['/etc/hostname', '/sibling'])
  }
}

describe('issue #442 family: --layer-type switched between builds', () => {
  it('every output of every layer holds every build_only ancestor (busybox tar base)', async () => {
    const p = await project({ 'stacker.yaml': MATRIX_FILE })
    const seen = new Set<string>()
    for (const [i, types] of SWITCHES.entries()) {
      const r = await build(p, [...typeArgs(types), '--substitute', `NUMBER=${i + 1}`])
      expect(r.exitCode, `build ${i + 1} (${types.join(',')}):\n${r.stderr}`).toBe(0)
      for (const t of types) for (const l of ['rootfs', 'sibling', 'top']) seen.add(tagsOf(l, [t])[0]!)
      const tags = await indexTags(p.path('oci'))
      expect(new Set(tags)).toEqual(seen)
      // This build's types come last, per layer in --layer-type order, layers in build order.
      const order = ['rootfs', 'sibling', 'top'].flatMap((l) => tagsOf(l, types))
      expect(tags.slice(-order.length).sort()).toEqual([...order].sort())
      await checkMatrixOutputs(p, i + 1, types)
    }
    // The index holds the last output of each type: rootfs-erofs of build 4, the others of build 3.
    const last = { rootfs: '3\n', 'rootfs-squashfs': '3\n', 'rootfs-erofs': '4\n' }
    for (const [t, n] of Object.entries(last))
      expect((await imageFs(p.path('oci'), t, p.path('work'))).get('/n')?.content, t).toBe(n)
  })

  it('the same with a squashfs base made without verity (base type differs from the output type)', async () => {
    const p = await project({
      'base.yaml': `base:
  from: {type: oci, url: \${{BASE}}}
  run: echo base > /base.txt
`,
      'stacker.yaml': MATRIX_FILE.replace(`\${{BASE}}`, `\${{NOVERITY}}`),
    })
    const baseOci = p.path('base-oci')
    expectOk(
      await stacker(
        [
          '--oci-dir',
          baseOci,
          '--stacker-dir',
          p.path('base-stacker'),
          '--roots-dir',
          p.path('base-roots'),
          'build',
          '-f',
          'base.yaml',
          '--layer-type',
          'squashfs',
          '--no-verity',
          '--substitute',
          `BASE=${fixtures().BUSYBOX_OCI}`,
        ],
        { cwd: p.dir },
      ),
    )
    const baseLayers = (await readManifest(baseOci, 'base-squashfs')).layers
    expect(baseLayers).toHaveLength(2)
    for (const l of baseLayers) expect(l.annotations?.[VERITY]).toBeUndefined()
    const withBase = (args: string[]) => build(p, ['--substitute', `NOVERITY=${baseOci}:base-squashfs`, ...args])

    const seen = new Set<string>()
    const runs: Array<{ types: readonly string[]; verity: boolean }> = [
      ...SWITCHES.map((types) => ({ types, verity: true })),
      { types: ['squashfs'], verity: false },
    ]
    for (const [i, run] of runs.entries()) {
      const args = [...typeArgs(run.types), ...(run.verity ? [] : ['--no-verity']), '--substitute', `NUMBER=${i + 1}`]
      const r = await withBase(args)
      expect(r.exitCode, `build ${i + 1} (${args.join(' ')}):\n${r.stderr}`).toBe(0)
      for (const t of run.types) for (const l of ['rootfs', 'sibling', 'top']) seen.add(tagsOf(l, [t])[0]!)
      expect(new Set(await indexTags(p.path('oci')))).toEqual(seen)
      await checkMatrixOutputs(p, i + 1, run.types)
      for (const tag of await indexTags(p.path('oci'))) await expectFiles(p, tag, { '/base.txt': 'base\n' })
      if (run.types.includes('squashfs')) {
        const layers = (await readManifest(p.path('oci'), 'rootfs-squashfs')).layers
        if (run.verity) {
          // The verity-less base was converted: new blobs, verity on all of them.
          expect(layers[0]?.digest).not.toBe(baseLayers[0]?.digest)
          for (const l of layers) expect(l.annotations?.[VERITY], l.digest).toMatch(/^[0-9a-f]{64}$/)
        } else {
          // Same type as the base: its blobs are used as they are.
          expect(layers.slice(0, 2).map((l) => l.digest)).toEqual(baseLayers.map((l) => l.digest))
          for (const l of layers) expect(l.annotations?.[VERITY]).toBeUndefined()
        }
      }
    }
    // One index entry per tag, whatever was built before.
    const names = (await readIndex(p.path('oci'))).manifests.map((m) => m.annotations?.[REF_NAME])
    expect(new Set(names).size).toBe(names.length)
  })
})
