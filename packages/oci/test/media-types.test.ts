import { describe, expect, it } from 'vitest'
import { Annotations, isLayerMediaType, layerCompression, layerKind, MediaTypes } from '../src/index.js'

describe('media types', () => {
  it('uses upstream stacker and OCI strings', () => {
    expect(MediaTypes.layerTar).toBe('application/vnd.oci.image.layer.v1.tar')
    expect(MediaTypes.layerTarGzip).toBe('application/vnd.oci.image.layer.v1.tar+gzip')
    expect(MediaTypes.layerTarZstd).toBe('application/vnd.oci.image.layer.v1.tar+zstd')
    expect(MediaTypes.layerSquashfs).toBe('application/vnd.stacker.image.layer.squashfs')
    expect(MediaTypes.layerSquashfsGzip).toBe('application/vnd.stacker.image.layer.squashfs+gzip')
    expect(MediaTypes.layerSquashfsZstd).toBe('application/vnd.stacker.image.layer.squashfs+zstd')
    expect(MediaTypes.layerErofs).toBe('application/vnd.stacker.image.layer.erofs')
    expect(MediaTypes.layerErofsLz4hc).toBe('application/vnd.stacker.image.layer.erofs+lz4hc')
    expect(MediaTypes.layerErofsLz4).toBe('application/vnd.stacker.image.layer.erofs+lz4')
    expect(MediaTypes.layerErofsZstd).toBe('application/vnd.stacker.image.layer.erofs+zstd')
    expect(MediaTypes.manifest).toBe('application/vnd.oci.image.manifest.v1+json')
    expect(MediaTypes.config).toBe('application/vnd.oci.image.config.v1+json')
    expect(MediaTypes.index).toBe('application/vnd.oci.image.index.v1+json')
  })

  it('has the annotation keys', () => {
    expect(Annotations.refName).toBe('org.opencontainers.image.ref.name')
    expect(Annotations.uncompressedBlobSize).toBe('ci.umo.uncompressed_blob_size')
    expect(Annotations.verityRootHash).toBe('io.stackeroci.stacker.atomfs_verity_root_hash')
  })

  it.each([
    [MediaTypes.layerTar, 'tar', 'none'],
    [MediaTypes.layerTarGzip, 'tar', 'gzip'],
    [MediaTypes.layerTarZstd, 'tar', 'zstd'],
    [MediaTypes.layerSquashfs, 'squashfs', 'none'],
    [MediaTypes.layerSquashfsGzip, 'squashfs', 'gzip'],
    [MediaTypes.layerSquashfsZstd, 'squashfs', 'zstd'],
    [MediaTypes.layerErofs, 'erofs', 'none'],
    [MediaTypes.layerErofsLz4hc, 'erofs', 'lz4hc'],
    [MediaTypes.layerErofsLz4, 'erofs', 'lz4'],
    [MediaTypes.layerErofsZstd, 'erofs', 'zstd'],
  ])('classifies %s', (mt, kind, comp) => {
    expect(layerKind(mt)).toBe(kind)
    expect(layerCompression(mt)).toBe(comp)
    expect(isLayerMediaType(mt)).toBe(true)
  })

  it.each([
    'application/vnd.docker.image.rootfs.diff.tar.gzip',
    'application/vnd.oci.image.layer.v1.tar+bzip2',
    MediaTypes.manifest,
    'toString',
    '',
  ])('rejects %j with upstream text', (mt) => {
    expect(() => layerKind(mt)).toThrow(expect.objectContaining({ code: 'LAYER', message: `invalid layer type ${mt}` }))
    expect(() => layerCompression(mt)).toThrow(`invalid layer type ${mt}`)
    expect(isLayerMediaType(mt)).toBe(false)
  })
})
