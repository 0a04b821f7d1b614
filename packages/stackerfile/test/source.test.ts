import { describe, expect, it } from 'vitest'
import type { Layer } from '../src/index.js'
import { layerDependencies, parseSource } from '../src/index.js'

const pos = { file: 'stacker.yaml', line: 1, col: 1 }

describe('parseSource', () => {
  it('tells local paths, http(s), stacker:// and other schemes apart', () => {
    expect(parseSource('/abs/file')).toEqual({ kind: 'local', path: '/abs/file' })
    expect(parseSource('https://example.invalid/x')).toEqual({ kind: 'http', url: 'https://example.invalid/x' })
    expect(parseSource('http://example.invalid/x')).toEqual({ kind: 'http', url: 'http://example.invalid/x' })
    expect(parseSource('stacker://base/etc/passwd')).toEqual({ kind: 'stacker', layer: 'base', path: '/etc/passwd' })
    // No path: the whole layer name, and the layer's root.
    expect(parseSource('stacker://base')).toEqual({ kind: 'stacker', layer: 'base', path: '/' })
    expect(parseSource('ftp://example.invalid/x')).toMatchObject({ kind: 'unsupported', scheme: 'ftp' })
  })
})

describe('layerDependencies', () => {
  it('lists the built parent, a stacker:// tar base and stacker:// imports, once each', () => {
    const imp = (path: string) => ({ path, source: parseSource(path), pos })
    const layer = {
      name: 'l',
      from: { type: 'tar', url: 'stacker://base', source: parseSource('stacker://base'), insecure: false, pos },
      imports: [imp('stacker://other/a'), imp('stacker://base/b'), imp('/local'), imp('https://example.invalid/f')],
    } as unknown as Layer
    expect(layerDependencies(layer)).toEqual(['base', 'other'])
    const built = {
      name: 'c',
      from: { type: 'built', tag: 'p', insecure: false, pos },
      imports: [],
    } as unknown as Layer
    expect(layerDependencies(built)).toEqual(['p'])
  })
})
