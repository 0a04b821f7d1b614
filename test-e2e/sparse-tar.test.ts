// Sparse files in tars that stacker reads, as upstream reads them (Go's archive/tar expands them): a
// `type: tar` base whose tarball holds sparse entries in all four GNU formats (old GNU 'S', PAX 0.0,
// 0.1 and 1.0), and an OCI base whose top layer does. Every output type must hold each file whole
// (holes as zeros, real size, real name), checked with umoci (tar), unsquashfs (squashfs) and the
// kernel's erofs (erofs), and a `run` step on top must read the same bytes.
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  blobPath,
  expectOk,
  fixtures,
  indexTags,
  readManifest,
  stacker,
  type TempProject,
  tempProject,
  umociUnpack,
  unsquashfsExtract,
  withErofsMount,
} from './helpers/index.js'

const KiB = 1024
const MiB = 1024 * KiB
const FORMATS = ['gnu', '0.0', '0.1', '1.0'] as const
const LONG = `long-${'name-'.repeat(24)}end`

function run(cmd: string, args: string[], cwd: string): Buffer {
  return execFileSync(cmd, args, { cwd, maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'pipe'] })
}

/** `truncate -s size`, then random bytes over each [offset, offset+length) with `dd conv=notrunc`. */
function sparseFile(path: string, size: number, data: ReadonlyArray<readonly [number, number]>): void {
  run('truncate', ['-s', String(size), path], '/')
  for (const [offset, length] of data) {
    run(
      'dd',
      [
        'if=/dev/urandom',
        `of=${path}`,
        'bs=1',
        `seek=${offset}`,
        `count=${length}`,
        'conv=notrunc',
        'iflag=fullblock,count_bytes',
        'oflag=seek_bytes',
        'status=none',
      ],
      '/',
    )
  }
}

/** The files made for one format, relative to the sparse dir: each has holes. */
function makeSparseFiles(dir: string): void {
  // data at the start, in the middle and at the end
  sparseFile(join(dir, 'ends'), 6 * MiB, [
    [0, 16 * KiB],
    [2 * MiB, 1536 * KiB],
    [6 * MiB - 100, 100],
  ])
  sparseFile(join(dir, 'all-hole'), 3 * MiB, [])
  sparseFile(join(dir, 'hole-at-end'), 2 * MiB, [[0, 64 * KiB]])
  // a name longer than the header's 100 bytes
  sparseFile(join(dir, LONG), 1 * MiB, [[512 * KiB, 8 * KiB]])
}

/** GNU tar's archive of `sparse/<format>/*` (below `stage`) in that sparse format, a small dense
 *  file last, without its end-of-archive blocks: such parts concatenate into one archive (GNU tar's
 *  -r keeps the archive's first format, and -A leaves end blocks inside after a sparse member). The
 *  dense file's last block is not all zeros, so cutting the trailing zero blocks cuts only those. */
function tarPart(format: (typeof FORMATS)[number], stage: string): Buffer {
  const names = ['ends', 'all-hole', 'hole-at-end', LONG, 'zz-dense'].map((n) => `sparse/${format}/${n}`)
  const opts = format === 'gnu' ? ['-S', '--format=gnu'] : ['-S', '--format=posix', `--sparse-version=${format}`]
  const tar = run('tar', [...opts, '-cf', '-', ...names], stage)
  let end = tar.length
  while (end >= 512 && tar.subarray(end - 512, end).every((b) => b === 0)) end -= 512
  return tar.subarray(0, end)
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const c of createReadStream(path)) h.update(c as Buffer)
  return h.digest('hex')
}

/** `size sha256` of every regular file below dir, by path relative to it. */
async function fileDigests(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await readdir(join(dir, rel))).sort()) {
      const r = rel === '' ? name : `${rel}/${name}`
      const st = await lstat(join(dir, r))
      if (st.isDirectory()) await walk(r)
      else if (st.isFile()) out.set(r, `${st.size} ${await sha256File(join(dir, r))}`)
    }
  }
  await walk('')
  return out
}

/** Counts sparse entries in a tar: GNU 'S' headers and PAX headers with GNU.sparse records. */
function sparseEntries(tar: Buffer): { gnu: number; pax: number } {
  const n = { gnu: 0, pax: 0 }
  for (let off = 0; off + 512 <= tar.length; off += 512) {
    const magic = tar.toString('latin1', off + 257, off + 263)
    if (magic !== 'ustar ' && magic !== 'ustar\0') continue
    const type = String.fromCharCode(tar[off + 156]!)
    if (type === 'S') n.gnu++
    if (type === 'x' && tar.subarray(off + 512, off + 2048).includes('GNU.sparse.')) n.pax++
  }
  return n
}

describe('sparse files in tar bases and base layers', () => {
  let p: TempProject
  /** `size sha256` of every file below /sparse as made. */
  let want: Map<string, string>

  beforeAll(async () => {
    p = await tempProject()
    const stage = p.path('stage')
    for (const f of FORMATS) {
      await mkdir(join(stage, 'sparse', f), { recursive: true })
      makeSparseFiles(join(stage, 'sparse', f))
      await writeFile(join(stage, 'sparse', f, 'zz-dense'), `dense ${f}\n`)
    }
    want = await fileDigests(join(stage, 'sparse'))
    expect(want.size).toBe(FORMATS.length * 5)

    // The four parts, then the busybox rootfs (with its end-of-archive blocks).
    const parts = FORMATS.map((f) => tarPart(f, stage))
    const base = Buffer.concat([...parts, gunzipSync(await readFile(fixtures().busyboxTar))])
    await writeFile(p.path('sparse-base.tar'), base)
    // Every format is there: 4 old GNU entries, 12 PAX ones; GNU tar reads the whole archive.
    expect(sparseEntries(base)).toEqual({ gnu: 4, pax: 12 })
    const listed = run('tar', ['-tf', 'sparse-base.tar'], p.dir).toString()
    for (const path of want.keys()) expect(listed).toContain(`sparse/${path}\n`)
    expect(listed).toContain('bin/busybox')
    const sparseOnly = Buffer.concat([...parts, Buffer.alloc(1024)])
    await writeFile(p.path('sparse-only.tar'), sparseOnly)

    // An OCI base: busybox plus a layer (gzip, written by umoci as given) holding the sparse files.
    run('skopeo', ['copy', `oci:${fixtures().busyboxLayout}:latest`, 'oci:sparse-oci:base'], p.dir)
    run('umoci', ['raw', 'add-layer', '--image', 'sparse-oci:base', '--tag', 'latest', 'sparse-only.tar'], p.dir)
    const m = await readManifest(p.path('sparse-oci'), 'latest')
    const top = gunzipSync(await readFile(blobPath(p.path('sparse-oci'), m.layers.at(-1)!.digest)))
    expect(sparseEntries(top)).toEqual({ gnu: 4, pax: 12 })

    await p.write(
      'stacker.yaml',
      `
tarbase:
  from: {type: tar, url: sparse-base.tar}
child:
  from: {type: built, tag: tarbase}
  run: |
    cd /sparse
    find . -type f | sort | while read -r f; do
      echo "$f $(stat -c %s "$f") $(sha256sum < "$f" | cut -d' ' -f1)"
    done > /sums
ocibase:
  from: {type: oci, url: "sparse-oci:latest"}
  run: |
    cd /sparse
    find . -type f | sort | while read -r f; do
      echo "$f $(stat -c %s "$f") $(sha256sum < "$f" | cut -d' ' -f1)"
    done > /sums
`,
    )
    expectOk(
      await stacker(['build', '--layer-type', 'tar', '--layer-type', 'squashfs', '--layer-type', 'erofs'], {
        cwd: p.dir,
      }),
    )
  })
  afterAll(() => p?.cleanup())

  /** What `/sums` should say: `./<path> <size> <sha256>` lines, sorted by path. */
  function expectedSums(): string {
    return [...want.entries()]
      .map(([path, v]) => `./${path} ${v}\n`)
      .sort()
      .join('')
  }

  let work = 0
  /** The files below /sparse and the /sums file of an output image, layers stacked bottom to top
   *  (nothing is deleted in these images): umoci for tar images, unsquashfs for squashfs layers, a
   *  read-only kernel mount for erofs layers. */
  async function imageFiles(tag: string): Promise<{ sparse: Map<string, string>; sums?: string }> {
    const oci = p.path('oci')
    const dir = p.path(`unpack-${work++}`)
    const sparse = new Map<string, string>()
    let sums: string | undefined
    const collect = async (root: string): Promise<void> => {
      if (await lstat(join(root, 'sparse')).catch(() => null)) {
        for (const [k, v] of await fileDigests(join(root, 'sparse'))) sparse.set(k, v)
      }
      const s = await readFile(join(root, 'sums'), 'utf8').catch(() => undefined)
      if (s !== undefined) sums = s
    }
    const m = await readManifest(oci, tag)
    await mkdir(dir, { recursive: true })
    if (tag === 'ocibase') {
      // The base's layer is carried over as it is, with its old GNU 'S' entries, which umoci does
      // not unpack ("unknown typeflag"): GNU tar reads the layers instead.
      for (const l of m.layers) {
        expect(l.mediaType).toMatch(/^application\/vnd\.oci\.image\.layer\.v1\.tar/)
        run('tar', ['-x', '-S', '-C', dir, '-f', blobPath(oci, l.digest)], '/')
      }
      await collect(dir)
    } else if (!tag.endsWith('-squashfs') && !tag.endsWith('-erofs')) {
      await collect(await umociUnpack(oci, tag, dir))
    } else {
      for (const [i, l] of m.layers.entries()) {
        const target = join(dir, String(i))
        if (l.mediaType.includes('squashfs')) {
          await unsquashfsExtract(blobPath(oci, l.digest), target)
          await collect(target)
        } else {
          expect(l.mediaType).toContain('erofs')
          await withErofsMount(blobPath(oci, l.digest), target, collect)
        }
      }
    }
    await rm(dir, { recursive: true, force: true })
    return sums === undefined ? { sparse } : { sparse, sums }
  }

  it('writes every output', async () => {
    expect(await indexTags(p.path('oci'))).toEqual([
      'tarbase',
      'tarbase-squashfs',
      'tarbase-erofs',
      'child',
      'child-squashfs',
      'child-erofs',
      'ocibase',
      'ocibase-squashfs',
      'ocibase-erofs',
    ])
  })

  it.each(['tarbase', 'tarbase-squashfs', 'tarbase-erofs'])('%s holds every sparse file whole', async (tag) => {
    const got = await imageFiles(tag)
    expect(got.sparse).toEqual(want)
  })

  it.each(['child', 'child-squashfs', 'child-erofs', 'ocibase', 'ocibase-squashfs', 'ocibase-erofs'])(
    '%s holds them whole, and its run step read them whole',
    async (tag) => {
      const got = await imageFiles(tag)
      expect(got.sparse).toEqual(want)
      expect(got.sums).toBe(expectedSums())
    },
  )
})
