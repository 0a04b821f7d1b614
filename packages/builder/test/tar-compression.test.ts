import { describe, expect, it } from 'vitest'
import { outputKey, parseTarCompression } from '../src/types.js'

describe('--tar-compression', () => {
  it('defaults to gzip and accepts zstd', () => {
    expect(parseTarCompression(undefined)).toBe('gzip')
    expect(parseTarCompression('gzip')).toBe('gzip')
    expect(parseTarCompression('zstd')).toBe('zstd')
    expect(() => parseTarCompression('xz')).toThrow('unknown tar compression: xz')
  })

  it('gives zstd tar outputs their own cache key, and leaves the gzip and fs image keys as they were', () => {
    expect(outputKey({ type: 'tar', verity: false })).toBe('tar+false')
    expect(outputKey({ type: 'tar', verity: false, tarCompression: 'gzip' })).toBe('tar+false')
    expect(outputKey({ type: 'tar', verity: false, tarCompression: 'zstd' })).toBe('tar+false+zstd')
    expect(outputKey({ type: 'squashfs', verity: true, tarCompression: 'zstd' })).toBe('squashfs+true')
  })
})
