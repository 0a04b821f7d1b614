import { readFile, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { gunzipSync, gzipSync } from 'node:zlib'
import { sha256Digest } from '@stacker/core'
import { describe, expect, it } from 'vitest'
import { Annotations, type Descriptor, MediaTypes, mutateImage, OciLayout } from '../src/index.js'
import { makeTar, run, useTempDirs } from './helpers.js'

const tempDir = useTempDirs()
const rootless = process.getuid?.() === 0 ? [] : ['--rootless']

/** Writes a one-layer busybox-less image with a gzip tar layer holding etc/hello.txt. */
async function writeHelloImage(l: OciLayout, text: string): Promise<{ manifest: Descriptor; layer: Descriptor }> {
  const tar = makeTar([
    { name: 'etc', type: 'dir' },
    { name: 'etc/hello.txt', type: 'file', content: text },
  ])
  const gz = gzipSync(tar)
  const stored = await l.putBlob(gz)
  const layer: Descriptor = {
    mediaType: MediaTypes.layerTarGzip,
    ...stored,
    annotations: { [Annotations.uncompressedBlobSize]: String(tar.length) },
  }
  const parts = mutateImage(undefined, {
    architecture: 'amd64',
    os: 'linux',
    created: '2023-11-14T22:13:20Z',
    author: 'stacker',
    layers: [{ descriptor: layer, diffId: sha256Digest(tar), history: { created_by: 'stacker build of hello' } }],
    history: [{ created: '2023-11-14T22:13:20Z', created_by: 'stacker build', author: 'stacker', empty_layer: true }],
    config: { Env: ['PATH=/bin'], Cmd: ['/bin/sh'] },
    annotations: { 'io.stackeroci.stacker.stacker_version': 'test' },
  })
  return { manifest: await l.writeImage(parts), layer }
}

describe('interoperability with umoci and skopeo', () => {
  it('umoci and skopeo read an image written here', async () => {
    const tmp = await tempDir()
    const dir = join(tmp, 'oci')
    const l = await OciLayout.open(dir, { create: true })
    const { manifest, layer } = await writeHelloImage(l, 'hello from stacker-ts\n')
    await l.setTag('hello', manifest)
    await l.setTag('hello-copy', manifest)

    const ls = await run('umoci', ['ls', '--layout', dir])
    expect(ls.stderr).toBe('')
    expect(ls.exitCode).toBe(0)
    expect(ls.stdout.split('\n').filter(Boolean).sort()).toEqual(['hello', 'hello-copy'])

    const bundle = join(tmp, 'bundle')
    const unpack = await run('umoci', ['unpack', ...rootless, '--image', `${dir}:hello`, bundle])
    expect(unpack.stderr).not.toMatch(/error/i)
    expect(unpack.exitCode).toBe(0)
    expect(await readFile(join(bundle, 'rootfs', 'etc', 'hello.txt'), 'utf8')).toBe('hello from stacker-ts\n')
    const runtimeCfg = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8'))
    expect(runtimeCfg.process.args).toEqual(['/bin/sh'])

    const inspect = await run('skopeo', ['inspect', `oci:${dir}:hello`])
    expect(inspect.exitCode).toBe(0)
    const info = JSON.parse(inspect.stdout)
    expect(info.Digest).toBe(manifest.digest)
    expect(info.Layers).toEqual([layer.digest])
    expect(info.Architecture).toBe('amd64')
    expect(info.Created).toBe('2023-11-14T22:13:20Z')

    // A layout written by skopeo (a different writer) reads back here with the same content.
    const copy = await run('skopeo', [
      'copy',
      '--insecure-policy',
      `oci:${dir}:hello`,
      `oci:${join(tmp, 'copy')}:again`,
    ])
    expect(copy.exitCode).toBe(0)
    const other = await OciLayout.open(join(tmp, 'copy'))
    const img = await other.readImage('again')
    expect(img.manifest.layers.map((x) => x.digest)).toEqual([layer.digest])
    expect(img.config.history?.[0]?.created_by).toBe('stacker build of hello')

    // Collecting after untagging keeps the layout valid for umoci.
    expect(await l.removeTag('hello-copy')).toBe(true)
    const stray = await l.putBlob('stray')
    expect((await l.gc()).removed).toEqual([stray.digest])
    const ls2 = await run('umoci', ['ls', '--layout', dir])
    expect(ls2.stdout.trim()).toBe('hello')
  })

  it('reads and extends a layout made by umoci init + umoci new', async () => {
    const tmp = await tempDir()
    const dir = join(tmp, 'layout')
    expect((await run('umoci', ['init', '--layout', dir])).exitCode).toBe(0)
    expect((await run('umoci', ['new', '--image', `${dir}:base`])).exitCode).toBe(0)

    const l = await OciLayout.open(dir, { create: true })
    expect((await l.listTags()).map((t) => t.name)).toEqual(['base'])
    const base = await l.readImage('base')
    expect(base.manifest.layers).toEqual([])
    expect(base.config.rootfs).toEqual({ type: 'layers', diff_ids: [] })
    expect(base.config.os).toBe('linux')

    // A layer made by umoci itself: unpack, add a file, repack.
    const bundle = join(tmp, 'bundle')
    expect((await run('umoci', ['unpack', ...rootless, '--image', `${dir}:base`, bundle])).exitCode).toBe(0)
    await mkdir(join(bundle, 'rootfs', 'data'))
    await writeFile(join(bundle, 'rootfs', 'data', 'from-umoci'), 'umoci layer\n')
    const repack = await run('umoci', ['repack', '--image', `${dir}:withlayer`, bundle])
    expect(repack.exitCode).toBe(0)
    const withLayer = await l.readImage('withlayer')
    expect(withLayer.manifest.layers).toHaveLength(1)
    const umociLayer = withLayer.manifest.layers[0]!
    const tar = gunzipSync(await l.readBlob(umociLayer.digest))
    expect(sha256Digest(tar)).toBe(withLayer.config.rootfs.diff_ids[0])
    expect(tar.includes(Buffer.from('umoci layer\n'))).toBe(true)

    // Extend umoci's image with a layer of ours; umoci unpacks both.
    const ours = makeTar([
      { name: 'etc', type: 'dir' },
      { name: 'etc/ours.txt', type: 'file', content: 'ours\n' },
    ])
    const stored = await l.putBlob(gzipSync(ours))
    const parts = mutateImage(withLayer, {
      layers: [{ descriptor: { mediaType: MediaTypes.layerTarGzip, ...stored }, diffId: sha256Digest(ours) }],
    })
    await l.setTag('child', await l.writeImage(parts))
    const ls = await run('umoci', ['ls', '--layout', dir])
    expect(ls.stdout.split('\n').filter(Boolean).sort()).toEqual(['base', 'child', 'withlayer'])
    const childBundle = join(tmp, 'child')
    const unpack = await run('umoci', ['unpack', ...rootless, '--image', `${dir}:child`, childBundle])
    expect(unpack.exitCode).toBe(0)
    expect(await readFile(join(childBundle, 'rootfs', 'etc', 'ours.txt'), 'utf8')).toBe('ours\n')
    expect(await readFile(join(childBundle, 'rootfs', 'data', 'from-umoci'), 'utf8')).toBe('umoci layer\n')

    // umoci's own gc agrees with ours: nothing of a tagged image is missing after ours.
    await l.gc()
    const umociGc = await run('umoci', ['gc', '--layout', dir])
    expect(umociGc.exitCode).toBe(0)
    for (const t of ['base', 'withlayer', 'child']) {
      const img = await l.readImage(t)
      for (const d of img.manifest.layers) expect(await l.hasBlob(d.digest)).toBe(true)
    }
  })
})
