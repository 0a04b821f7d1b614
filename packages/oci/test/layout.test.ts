import { existsSync } from 'node:fs'
import { mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { canonicalJson, type Digest, memoryLogger, sha256Digest, StackerError } from '@stacker/core'
import { describe, expect, it, vi } from 'vitest'
import { Annotations, type Descriptor, MediaTypes, mutateImage, OciLayout } from '../src/index.js'
import { chunks, useTempDirs } from './helpers.js'
import { OFF_THREAD_MIN } from '../src/blob-writer.js'

const tempDir = useTempDirs()

async function newLayout(): Promise<OciLayout> {
  return OciLayout.open(join(await tempDir(), 'oci'), { create: true })
}

async function blobNames(l: OciLayout): Promise<string[]> {
  return (await readdir(join(l.dir, 'blobs', 'sha256'))).sort()
}

async function tempNames(l: OciLayout): Promise<string[]> {
  try {
    return await readdir(join(l.dir, '.tmp'))
  } catch {
    return []
  }
}

async function rejection(p: Promise<unknown>): Promise<StackerError> {
  try {
    await p
  } catch (e) {
    expect(e).toBeInstanceOf(StackerError)
    return e as StackerError
  }
  throw new Error('expected a rejection')
}

/** A tagged image with one layer; returns its descriptors. */
async function writeTestImage(l: OciLayout, seed: string) {
  const layer = await l.putBlob(`layer ${seed}`)
  const layerDesc: Descriptor = { mediaType: MediaTypes.layerTar, ...layer }
  const parts = mutateImage(undefined, {
    architecture: 'amd64',
    os: 'linux',
    layers: [{ descriptor: layerDesc, diffId: layer.digest, history: { created_by: seed } }],
  })
  const manifest = await l.writeImage(parts)
  const m = await l.readJson<{ config: Descriptor }>(manifest.digest)
  return { layer: layerDesc, manifest, config: m.config }
}

describe('open', () => {
  it('creates a layout and logs it', async () => {
    const dir = join(await tempDir(), 'sub', 'oci')
    const logger = memoryLogger()
    const l = await OciLayout.open(dir, { create: true, logger })
    expect(logger.lines('info')).toEqual([`Creating new OCI Layout at "${dir}"`])
    expect(JSON.parse(await readFile(join(dir, 'oci-layout'), 'utf8'))).toEqual({ imageLayoutVersion: '1.0.0' })
    expect(await readFile(join(dir, 'index.json'), 'utf8')).toBe(
      '{"manifests":[],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}',
    )
    expect((await stat(join(dir, 'blobs', 'sha256'))).isDirectory()).toBe(true)
    expect(l.dir).toBe(dir)
    // Built beside and renamed in: nothing left over next to it.
    expect(await readdir(join(dir, '..'))).toEqual(['oci'])
    const again = memoryLogger()
    await OciLayout.open(dir, { create: true, logger: again })
    expect(again.records).toEqual([])
  })

  it('survives concurrent creation of the same path', async () => {
    const dir = join(await tempDir(), 'oci')
    const ls = await Promise.all([1, 2, 3].map(() => OciLayout.open(dir, { create: true })))
    expect(ls.map((l) => l.dir)).toEqual([dir, dir, dir])
    expect((await readdir(join(dir, '..'))).sort()).toEqual(['oci'])
  })

  it('does not create without create', async () => {
    const dir = join(await tempDir(), 'oci')
    const e = await rejection(OciLayout.open(dir))
    expect(e.code).toBe('OCI_LAYOUT')
    expect(e.detail).toEqual({ path: dir, reason: 'missing' })
    await expect(stat(dir)).rejects.toThrow()
  })

  it('rejects a file, saying so in its own words', async () => {
    const file = join(await tempDir(), 'oci')
    await writeFile(file, 'x')
    const e = await rejection(OciLayout.open(file, { create: true }))
    expect(e.code).toBe('OCI_LAYOUT')
    expect(e.message).toBe(`OCI layout "${file}" is not a directory`)
    expect(e.detail).toEqual({ path: file, reason: 'not-a-directory' })
  })

  it('rejects a non-empty directory without index.json', async () => {
    const dir = await tempDir()
    await writeFile(join(dir, 'something'), 'x')
    const e = await rejection(OciLayout.open(dir, { create: true }))
    expect(e.code).toBe('OCI_LAYOUT')
    expect(e.message).toBe(`"${dir}" is not an OCI layout: it has no index.json`)
    expect(e.detail).toEqual({ path: dir, reason: 'not-a-layout' })
  })

  it('makes a layout in an empty existing directory (as mkdtemp leaves it) with create', async () => {
    const dir = await tempDir()
    const layout = await OciLayout.open(dir, { create: true })
    expect((await layout.readIndex()).manifests).toEqual([])
    const e = await rejection(OciLayout.open(await tempDir()))
    expect(e.detail).toEqual(expect.objectContaining({ reason: 'not-a-layout' }))
  })
})

describe('blobs', () => {
  it('stores strings, buffers and streams under their sha256', async () => {
    const l = await newLayout()
    const big = Buffer.alloc(3 * 1024 * 1024 + 7, 'ab')
    const a = await l.putBlob('hello')
    const b = await l.putBlob(Buffer.from('hello'))
    const c = await l.putBlob(chunks(big, 65536))
    expect(a).toEqual({ digest: sha256Digest('hello'), size: 5 })
    expect(b).toEqual(a)
    expect(c).toEqual({ digest: sha256Digest(big), size: big.length })
    expect(l.blobPath(a.digest)).toBe(join(l.dir, 'blobs', 'sha256', a.digest.slice(7)))
    expect((await l.readBlob(c.digest)).equals(big)).toBe(true)
    expect(await l.hasBlob(a.digest)).toBe(true)
    expect(await l.hasBlob(sha256Digest('nope'))).toBe(false)
    expect(await tempNames(l)).toEqual([])
  })

  it('verifies the expected digest and size and stores nothing on a mismatch', async () => {
    const l = await newLayout()
    expect(await l.putBlob('abc', { digest: sha256Digest('abc'), size: 3 })).toEqual({
      digest: sha256Digest('abc'),
      size: 3,
    })
    const before = await blobNames(l)
    const bad = await rejection(l.putBlob('abd', { digest: sha256Digest('abc') }))
    expect(bad.code).toBe('DIGEST')
    expect(bad.message).toContain(sha256Digest('abc'))
    expect(bad.message).toContain(sha256Digest('abd'))
    const badSize = await rejection(l.putBlob('abcd', { size: 3 }))
    expect(badSize.code).toBe('DIGEST')
    expect(badSize.message).toContain('expected 3 bytes, got 4')
    expect(await blobNames(l)).toEqual(before)
    expect(await tempNames(l)).toEqual([])
  })

  it('hashes with sha512 when the expected digest is sha512', async () => {
    const l = await newLayout()
    const { createHash } = await import('node:crypto')
    const d = `sha512:${createHash('sha512').update('x512').digest('hex')}` as Digest
    expect(await l.putBlob('x512', { digest: d })).toEqual({ digest: d, size: 4 })
    expect(l.blobPath(d)).toContain(join('blobs', 'sha512'))
    expect((await l.readBlob(d)).toString()).toBe('x512')
  })

  it('is idempotent, also for concurrent writers of the same blob', async () => {
    const l = await newLayout()
    const other = await OciLayout.open(l.dir)
    const data = Buffer.alloc(2 * 1024 * 1024, 'xyz')
    const results = await Promise.all([
      l.putBlob(chunks(data, 4096)),
      other.putBlob(chunks(data, 100_000)),
      l.putBlob(data),
    ])
    const want = { digest: sha256Digest(data), size: data.length }
    expect(results).toEqual([want, want, want])
    expect(await l.putBlob(data)).toEqual(want)
    expect(await blobNames(l)).toEqual([want.digest.slice(7)])
    expect(await tempNames(l)).toEqual([])
  })

  it('never shows a partial blob: an aborted writer leaves nothing', async () => {
    const l = await newLayout()
    const w = l.createBlobWriter()
    await w.write(Buffer.from('first half '))
    expect(w.path.startsWith(join(l.dir, '.tmp') + '/')).toBe(true)
    expect((await readFile(w.path)).toString()).toBe('first half ')
    expect(await blobNames(l)).toEqual([])
    await w.abort()
    await w.abort()
    expect(await tempNames(l)).toEqual([])
    expect(await blobNames(l)).toEqual([])
    await expect(w.write(Buffer.from('more'))).rejects.toThrow('aborted')
  })

  it('removes the temp file when the source fails midway', async () => {
    const l = await newLayout()
    async function* failing() {
      yield Buffer.from('some bytes')
      throw new Error('source broke')
    }
    await expect(l.putBlob(failing())).rejects.toThrow('source broke')
    expect(await tempNames(l)).toEqual([])
    expect(await blobNames(l)).toEqual([])
  })

  it('commits a pushed blob, with overlapping writes kept in order', async () => {
    const l = await newLayout()
    const w = l.createBlobWriter()
    await Promise.all(['a', 'b', 'c', 'd'].map((s) => w.write(Buffer.from(s))))
    const info = await w.commit({ size: 4 })
    expect(info).toEqual({ digest: sha256Digest('abcd'), size: 4 })
    expect((await l.readBlob(info.digest)).toString()).toBe('abcd')
    await expect(w.commit()).rejects.toThrow('done')
    await w.abort()
    expect(await l.hasBlob(info.digest)).toBe(true)
    const empty = await l.createBlobWriter().commit()
    expect(empty).toEqual({ digest: sha256Digest(''), size: 0 })
  })

  it('writes gathered chunks in order, interleaved with single writes', async () => {
    const l = await newLayout()
    const w = l.createBlobWriter()
    const big = Buffer.alloc(3 << 20, 7)
    await Promise.all([
      w.writev([Buffer.from('ab'), Buffer.alloc(0), Buffer.from('c')]),
      w.write(Buffer.from('d')),
      w.writev([]),
      w.writev([big.subarray(0, 1 << 20), big.subarray(1 << 20)]),
    ])
    const want = Buffer.concat([Buffer.from('abcd'), big])
    const info = await w.commit({ digest: sha256Digest(want), size: want.byteLength })
    expect((await l.readBlob(info.digest)).equals(want)).toBe(true)
  })

  it('verifies a large blob of known size (hashed off the main thread) before it is visible', async () => {
    const l = await newLayout()
    const good = Buffer.alloc(OFF_THREAD_MIN + 12345, 1)
    for (let i = 0; i < good.length; i += 4093) good[i] = i & 0xff
    const bad = Buffer.from(good)
    bad[bad.length - 1] ^= 1
    const want = { digest: sha256Digest(good), size: good.length }

    const w = l.createBlobWriter(want)
    for (let off = 0; off < bad.length; off += 65536) await w.writev([bad.subarray(off, off + 65536)])
    expect(await w.seal()).toEqual({ digest: sha256Digest(bad), size: bad.length })
    await expect(w.write(Buffer.from('x'))).rejects.toThrow('sealed')
    expect(await blobNames(l)).toEqual([])
    expect((await rejection(w.commit())).code).toBe('DIGEST')
    expect(await tempNames(l)).toEqual([])
    expect(await blobNames(l)).toEqual([])

    const ok = l.createBlobWriter(want)
    await Promise.all([ok.write(good.subarray(0, 1000)), ok.writev([good.subarray(1000)])])
    expect(await ok.commit()).toEqual(want)
    expect((await l.readBlob(want.digest)).equals(good)).toBe(true)

    const dropped = l.createBlobWriter(want)
    await dropped.write(good.subarray(0, 3 << 20))
    await dropped.abort()
    expect(await tempNames(l)).toEqual([])
  })

  it('gets a large blob to the disk while it is written, and a failed writeback fails the seal', async () => {
    const l = await newLayout()
    const probe = await open(join(await tempDir(), 'probe'), 'w')
    const handleProto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> }
    await probe.close()
    const body = Buffer.alloc(40 << 20, 3)
    for (let i = 0; i < body.length; i += 8191) body[i] = i & 0xff
    const want = { digest: sha256Digest(body), size: body.length }
    const writeAllOf = async (w: ReturnType<OciLayout['createBlobWriter']>) => {
      for (let off = 0; off < body.length; off += 1 << 20) await w.write(body.subarray(off, off + (1 << 20)))
    }
    const datasync = vi.spyOn(handleProto, 'datasync')
    try {
      const w = l.createBlobWriter(want)
      await writeAllOf(w)
      // seal() fsyncs what is left; these were started as the bytes came.
      expect(datasync.mock.calls.length).toBeGreaterThanOrEqual(1)
      expect(await w.commit()).toEqual(want)
      expect((await l.readBlob(want.digest)).equals(body)).toBe(true)
      await rm(l.blobPath(want.digest))

      // The kernel reports a failed writeback to one fsync only: the writer must keep it.
      datasync.mockRejectedValue(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }))
      const bad = l.createBlobWriter(want)
      await writeAllOf(bad).catch(() => {})
      await expect(bad.commit()).rejects.toThrow('EIO')
      expect(await tempNames(l)).toEqual([])
      expect(await blobNames(l)).toEqual([])
    } finally {
      datasync.mockRestore()
    }
  })

  it('a failed commit removes the temp file', async () => {
    const l = await newLayout()
    const w = l.createBlobWriter({ digest: sha256Digest('other') })
    await w.write(Buffer.from('content'))
    expect((await rejection(w.commit())).code).toBe('DIGEST')
    expect(await tempNames(l)).toEqual([])
    expect(await blobNames(l)).toEqual([])
  })

  it('adopts files by moving or copying', async () => {
    const l = await newLayout()
    const dir = await tempDir()
    const src = join(dir, 'fs.img')
    await writeFile(src, 'image bytes', { mode: 0o600 })
    const copied = await l.putBlobFromFile(src)
    expect(copied).toEqual({ digest: sha256Digest('image bytes'), size: 11 })
    expect(await readFile(src, 'utf8')).toBe('image bytes')

    const src2 = join(l.dir, 'made-here.img')
    await writeFile(src2, 'moved bytes', { mode: 0o600 })
    const moved = await l.putBlobFromFile(src2, { move: true, expected: { size: 11 } })
    expect(moved.digest).toBe(sha256Digest('moved bytes'))
    await expect(stat(src2)).rejects.toThrow()
    expect((await stat(l.blobPath(moved.digest))).mode & 0o777).toBe(0o644)

    // Already stored: the source is consumed all the same.
    await writeFile(src2, 'moved bytes')
    expect(await l.putBlobFromFile(src2, { move: true })).toEqual(moved)
    await expect(stat(src2)).rejects.toThrow()

    await writeFile(src2, 'wrong')
    const e = await rejection(l.putBlobFromFile(src2, { move: true, expected: { digest: moved.digest } }))
    expect(e.code).toBe('DIGEST')
    expect(await readFile(src2, 'utf8')).toBe('wrong')
  })

  it('moves a file from another filesystem by copying it', async () => {
    const l = await newLayout()
    // /dev/shm is tmpfs here, so the rename fails with EXDEV and the copy path runs.
    const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'stacker-oci-test-'))
    try {
      const src = join(dir, 'layer.img')
      await writeFile(src, 'across devices')
      const info = await l.putBlobFromFile(src, { move: true })
      expect(info).toEqual({ digest: sha256Digest('across devices'), size: 14 })
      expect((await l.readBlob(info.digest)).toString()).toBe('across devices')
      await expect(stat(src)).rejects.toThrow()
      expect(await tempNames(l)).toEqual([])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('reads verify the digest: corruption is DIGEST naming digest and path', async () => {
    const l = await newLayout()
    const { digest } = await l.putBlob('good content')
    const path = l.blobPath(digest)
    await writeFile(path, 'evil content')
    const e = await rejection(l.readBlob(digest))
    expect(e.code).toBe('DIGEST')
    expect(e.message).toContain(digest)
    expect(e.message).toContain(path)

    const s = await rejection(
      (async () => {
        for await (const _ of l.openBlob(digest)) {
          // drain
        }
      })(),
    )
    expect(s.code).toBe('DIGEST')
    expect(s.message).toContain(path)
  })

  it('streams a good blob and reports a missing one as NOT_FOUND', async () => {
    const l = await newLayout()
    const data = Buffer.alloc(300_000, 'q')
    const { digest } = await l.putBlob(data)
    const got: Buffer[] = []
    for await (const c of l.openBlob(digest)) got.push(c as Buffer)
    expect(Buffer.concat(got).equals(data)).toBe(true)
    const missing = sha256Digest('missing')
    expect((await rejection(l.readBlob(missing))).code).toBe('NOT_FOUND')
    const s = await rejection(
      (async () => {
        for await (const _ of l.openBlob(missing)) {
          // drain
        }
      })(),
    )
    expect(s.code).toBe('NOT_FOUND')
    expect(() => l.blobPath('sha256:../../etc/passwd' as Digest)).toThrow(expect.objectContaining({ code: 'DIGEST' }))
  })

  it('writes JSON canonically so equal values have equal digests', async () => {
    const l = await newLayout()
    const a = await l.putJson(MediaTypes.config, { b: 1, a: { y: [2, 1], x: null } })
    const b = await l.putJson(MediaTypes.config, { a: { x: null, y: [2, 1] }, b: 1 })
    expect(b).toEqual(a)
    expect(a.mediaType).toBe(MediaTypes.config)
    expect((await l.readBlob(a.digest)).toString()).toBe('{"a":{"x":null,"y":[2,1]},"b":1}')
    expect(await l.readJson(a.digest)).toEqual({ a: { x: null, y: [2, 1] }, b: 1 })
    const notJson = await l.putBlob('{nope')
    expect((await rejection(l.readJson(notJson.digest))).code).toBe('OCI_LAYOUT')
  })
})

describe('tags', () => {
  it('replaces and appends, keeping only the ref name annotation', async () => {
    const l = await newLayout()
    const a = await writeTestImage(l, 'a')
    const b = await writeTestImage(l, 'b')
    await l.setTag('parent', a.manifest)
    await l.setTag('parent-squashfs', b.manifest)
    await l.setTag('child', a.manifest)
    await l.setTag('parent', { ...b.manifest })
    expect((await l.listTags()).map((t) => [t.name, t.descriptor.digest])).toEqual([
      ['parent-squashfs', b.manifest.digest],
      ['child', a.manifest.digest],
      ['parent', b.manifest.digest],
    ])
    const parent = await l.getTag('parent')
    expect(parent).toEqual({ ...b.manifest, annotations: { [Annotations.refName]: 'parent' } })
    expect(await l.getTag('nope')).toBeUndefined()
    const raw = await readFile(join(l.dir, 'index.json'), 'utf8')
    expect(raw).toBe(canonicalJson(JSON.parse(raw)))

    await l.setTag('extra', { ...a.manifest, annotations: { 'x.y': 'z' } })
    expect((await l.getTag('extra'))?.annotations).toEqual({ 'x.y': 'z', [Annotations.refName]: 'extra' })
  })

  it('refuses invalid names and missing manifests without touching index.json', async () => {
    const l = await newLayout()
    const a = await writeTestImage(l, 'a')
    const before = await readFile(join(l.dir, 'index.json'), 'utf8')
    const e = await rejection(l.setTag('bad name', a.manifest))
    expect(e.message).toBe('refusing to update invalid reference "bad name"')
    const missing = await rejection(l.setTag('ok', { ...a.manifest, digest: sha256Digest('absent') }))
    expect(missing.code).toBe('NOT_FOUND')
    expect(await readFile(join(l.dir, 'index.json'), 'utf8')).toBe(before)
  })

  it('serialises concurrent tag updates from several callers', async () => {
    const l = await newLayout()
    const other = await OciLayout.open(l.dir)
    const a = await writeTestImage(l, 'a')
    const names = Array.from({ length: 30 }, (_, i) => `tag${i}`)
    await Promise.all(names.map((n, i) => (i % 2 ? l : other).setTag(n, a.manifest)))
    await Promise.all([l.setTag('same', a.manifest), other.setTag('same', a.manifest), l.setTag('same', a.manifest)])
    const tags = (await l.listTags()).map((t) => t.name)
    expect([...tags].sort()).toEqual([...names, 'same'].sort())
    expect(tags.filter((t) => t === 'same')).toHaveLength(1)
    expect(await readdir(l.dir)).not.toContain(expect.stringMatching(/tmp/))
  })

  it('keeps untagged entries until dropUntagged, and removes tags', async () => {
    const l = await newLayout()
    const a = await writeTestImage(l, 'a')
    const b = await writeTestImage(l, 'b')
    await writeFile(
      join(l.dir, 'index.json'),
      JSON.stringify({ schemaVersion: 2, manifests: [b.manifest, { ...a.manifest, annotations: { other: 'x' } }] }),
    )
    await l.setTag('t', a.manifest)
    expect((await l.readIndex()).manifests.map((m) => m.digest)).toEqual([
      b.manifest.digest,
      a.manifest.digest,
      a.manifest.digest,
    ])
    expect(await l.removeTag('t')).toBe(true)
    expect(await l.removeTag('t')).toBe(false)
    await l.setTag('t', a.manifest)
    await l.dropUntagged()
    expect((await l.readIndex()).manifests).toEqual([{ ...a.manifest, annotations: { [Annotations.refName]: 't' } }])
  })

  it('resolves tags and digests', async () => {
    const l = await newLayout()
    const a = await writeTestImage(l, 'a')
    const b = await writeTestImage(l, 'b')
    await l.setTag('a', a.manifest)
    expect((await l.resolve('a')).digest).toBe(a.manifest.digest)
    expect((await l.resolve(a.manifest.digest)).annotations?.[Annotations.refName]).toBe('a')
    // Untagged but stored: found by content.
    expect(await l.resolve(b.manifest.digest)).toEqual(b.manifest)
    const e = await rejection(l.resolve('nope'))
    expect(e.code).toBe('NOT_FOUND')
    expect(e.message).toContain('"nope"')
    expect((await rejection(l.resolve(sha256Digest('absent')))).code).toBe('NOT_FOUND')
    expect((await rejection(l.resolve(b.layer.digest))).code).toBe('NOT_FOUND')
  })
})

describe('images', () => {
  it('writes and reads an image deterministically', async () => {
    const l = await newLayout()
    const layer = await l.putBlob('layer-bytes')
    const layerDesc = {
      mediaType: MediaTypes.layerTarGzip,
      ...layer,
      annotations: { [Annotations.uncompressedBlobSize]: '100' },
    }
    const parts = mutateImage(undefined, {
      architecture: 'arm64',
      os: 'linux',
      created: '2023-11-14T22:13:20Z',
      layers: [{ descriptor: layerDesc, diffId: sha256Digest('uncompressed'), history: { created_by: 'x' } }],
      config: { Env: ['PATH=/bin'], Cmd: null },
      annotations: { a: '1' },
    })
    const d1 = await l.writeImage(parts)
    const d2 = await l.writeImage(structuredClone(parts))
    expect(d2).toEqual(d1)
    expect(d1.mediaType).toBe(MediaTypes.manifest)
    const img = await l.readImage(d1.digest)
    expect(img.descriptor.digest).toBe(d1.digest)
    expect(img.manifest).toMatchObject({
      schemaVersion: 2,
      mediaType: MediaTypes.manifest,
      layers: [layerDesc],
      annotations: { a: '1' },
      config: { mediaType: MediaTypes.config },
    })
    expect(img.config).toEqual({
      architecture: 'arm64',
      os: 'linux',
      created: '2023-11-14T22:13:20Z',
      config: { Env: ['PATH=/bin'], Cmd: null },
      rootfs: { type: 'layers', diff_ids: [sha256Digest('uncompressed')] },
      history: [{ created_by: 'x' }],
    })
  })

  it('derives a child image from a base without changing the base', async () => {
    const l = await newLayout()
    const base = await writeTestImage(l, 'base')
    await l.setTag('base', base.manifest)
    const baseImg = await l.readImage('base')
    const snapshot = structuredClone(baseImg)
    const layer = await l.putBlob('child layer')
    const parts = mutateImage(baseImg, {
      layers: [
        {
          descriptor: { mediaType: MediaTypes.layerTar, ...layer },
          diffId: layer.digest,
          history: { created_by: 'c' },
        },
      ],
      history: [{ created_by: 'stacker build', empty_layer: true }],
      annotations: { k: 'v' },
      author: 'stacker',
    })
    expect(baseImg).toEqual(snapshot)
    const child = await l.readImage((await l.writeImage(parts)).digest)
    expect(child.manifest.layers.map((x) => x.digest)).toEqual([base.layer.digest, layer.digest])
    expect(child.config.rootfs.diff_ids).toEqual([base.layer.digest, layer.digest])
    expect(child.config.history).toEqual([
      { created_by: 'base' },
      { created_by: 'c' },
      { created_by: 'stacker build', empty_layer: true },
    ])
    expect(child.config.author).toBe('stacker')
    expect(child.manifest.annotations).toEqual({ k: 'v' })
  })

  it('refuses inconsistent images', async () => {
    const l = await newLayout()
    const layer = await l.putBlob('l')
    const desc = { mediaType: MediaTypes.layerTar, ...layer }
    const cfg = mutateImage(undefined, {}).config
    expect((await rejection(l.writeImage({ config: cfg, layers: [desc] }))).message).toContain(
      '0 diff_ids for 1 layers',
    )
    const missing = { ...desc, digest: sha256Digest('missing') }
    cfg.rootfs.diff_ids.push(missing.digest)
    expect((await rejection(l.writeImage({ config: cfg, layers: [missing] }))).code).toBe('NOT_FOUND')
  })

  it('picks a platform from an index', async () => {
    const l = await newLayout()
    const amd = await writeTestImage(l, 'amd')
    const arm = await writeTestImage(l, 'arm')
    const idx = await l.putJson(MediaTypes.index, {
      schemaVersion: 2,
      mediaType: MediaTypes.index,
      manifests: [
        { ...amd.manifest, platform: { architecture: 'amd64', os: 'linux' } },
        { ...arm.manifest, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
      ],
    })
    await l.setTag('multi', idx)
    const got = await l.readImage('multi', { platform: { architecture: 'arm64', os: 'linux' } })
    expect(got.descriptor.digest).toBe(arm.manifest.digest)
    expect(got.config.history).toEqual([{ created_by: 'arm' }])
    const e = await rejection(l.readImage('multi', { platform: { architecture: 's390x', os: 'linux' } }))
    expect(e.code).toBe('NOT_FOUND')
    expect(e.message).toContain('linux/s390x')
  })
})

describe('gc', () => {
  it('keeps what index.json reaches and removes the rest', async () => {
    const l = await newLayout()
    const tagged = await writeTestImage(l, 'tagged')
    const untagged = await writeTestImage(l, 'untagged')
    const nested = await writeTestImage(l, 'nested')
    const orphan = await writeTestImage(l, 'orphan')
    const kept = await l.putBlob('kept by caller')
    const junk = await l.putBlob('junk')
    const idx = await l.putJson(MediaTypes.index, { schemaVersion: 2, manifests: [nested.manifest] })
    await l.setTag('tagged', tagged.manifest)
    await l.setTag('nested', idx)
    const index = await l.readIndex()
    index.manifests.push(untagged.manifest)
    await writeFile(join(l.dir, 'index.json'), JSON.stringify(index))

    const res = await l.gc({ keep: [kept.digest] })
    expect(res.removed).toEqual([orphan.layer.digest, orphan.config.digest, orphan.manifest.digest, junk.digest].sort())
    for (const img of [tagged, untagged, nested]) {
      for (const d of [img.layer.digest, img.config.digest, img.manifest.digest]) expect(await l.hasBlob(d)).toBe(true)
    }
    expect(await l.hasBlob(idx.digest)).toBe(true)
    expect(await l.hasBlob(kept.digest)).toBe(true)
    expect((await l.readImage('tagged')).config.history).toEqual([{ created_by: 'tagged' }])
    expect((await l.gc()).removed).toEqual([kept.digest])
  })

  it('removes stale temp files but spares writers in progress', async () => {
    const l = await newLayout()
    const orphan = await l.putBlob('orphan being rewritten')
    const writing = l.createBlobWriter()
    await writing.write(Buffer.from('in progress'))
    const rewriting = l.createBlobWriter({ digest: orphan.digest })
    await rewriting.write(Buffer.from('orphan'))
    const tmp = join(l.dir, '.tmp')
    const deadPid = 2 ** 22 + 12345
    await writeFile(join(tmp, `blob-${deadPid}-abcd`), 'crashed')
    await writeFile(join(tmp, `blob-${process.pid}-dead`), 'ours, forgotten')
    await writeFile(join(tmp, `blob-${process.ppid}-beef`), 'another live process')
    await writeFile(join(l.dir, `.index.json.tmp-${deadPid}-00ff`), '{}')

    const res = await l.gc()
    expect(res.temp).toEqual(
      [
        join(tmp, `blob-${deadPid}-abcd`),
        join(tmp, `blob-${process.pid}-dead`),
        join(l.dir, `.index.json.tmp-${deadPid}-00ff`),
      ].sort(),
    )
    expect(res.removed).toEqual([])
    expect((await readdir(tmp)).sort()).toEqual(
      [`blob-${process.ppid}-beef`, writing.path.split('/').pop(), rewriting.path.split('/').pop()].sort(),
    )
    await writing.write(Buffer.from(' and done'))
    const info = await writing.commit()
    expect((await l.readBlob(info.digest)).toString()).toBe('in progress and done')
    await rewriting.abort()
    expect((await l.gc()).removed).toEqual([info.digest, orphan.digest].sort())
  })

  it('refuses to collect when a reachable manifest is corrupt', async () => {
    const l = await newLayout()
    const a = await writeTestImage(l, 'a')
    const junk = await l.putBlob('junk')
    await l.setTag('a', a.manifest)
    await writeFile(l.blobPath(a.manifest.digest), '{"corrupt":true}')
    expect((await rejection(l.gc())).code).toBe('DIGEST')
    expect(await l.hasBlob(junk.digest)).toBe(true)
  })
})

describe('layout files', () => {
  it('reports a broken index.json as OCI_LAYOUT', async () => {
    const l = await newLayout()
    await writeFile(join(l.dir, 'index.json'), '{"schemaVersion":1}')
    expect((await rejection(l.readIndex())).code).toBe('OCI_LAYOUT')
    await writeFile(join(l.dir, 'index.json'), 'not json')
    expect((await rejection(l.listTags())).code).toBe('OCI_LAYOUT')
  })
})
