import { describe, expect, it } from 'vitest'
import { explainMiss, type CacheParts } from '../src/cache.js'
import { containerConfig, DEFAULT_PATH_ENV } from '../src/image.js'
import { destPlacement } from '../src/imports.js'
import { outputKey, parseLayerTypes, tagFor } from '../src/types.js'
import type { Layer } from '@stacker/stackerfile'

const pos = { file: 'stacker.yaml', line: 1, col: 1 }
function layer(over: Partial<Layer>): Layer {
  return {
    name: 'l',
    file: '/x/stacker.yaml',
    pos,
    from: { type: 'scratch', insecure: false, pos },
    imports: [],
    overlayDirs: [],
    run: [],
    generateLabels: [],
    buildEnv: [],
    environment: [],
    labels: [],
    annotations: [],
    volumes: [],
    exposedPorts: [],
    buildOnly: false,
    binds: [],
    os: 'linux',
    arch: 'amd64',
    wasLegacyImport: false,
    wasBom: false,
    ...over,
  }
}

describe('parseLayerTypes', () => {
  it('defaults to tar, dedupes, keeps order', () => {
    expect(parseLayerTypes([])).toEqual(['tar'])
    expect(parseLayerTypes(['squashfs', 'tar', 'squashfs'])).toEqual(['squashfs', 'tar'])
  })
  it('rejects unknown and empty types with upstream messages', () => {
    expect(() => parseLayerTypes(['zip'])).toThrow('unknown layer type: zip')
    expect(() => parseLayerTypes([''])).toThrow('must specify at least one output --layer-type')
  })
  it('names tags and output keys as upstream', () => {
    expect(tagFor('a', 'tar')).toBe('a')
    expect(tagFor('a', 'squashfs')).toBe('a-squashfs')
    expect(tagFor('a', 'erofs')).toBe('a-erofs')
    expect(outputKey({ type: 'tar', verity: true })).toBe('tar+false')
    expect(outputKey({ type: 'squashfs', verity: true })).toBe('squashfs+true')
  })
})

describe('destPlacement (the dest table of upstream stacker)', () => {
  it.each([
    ['/src/dir', '/d', '/', 'd'],
    ['/src/dir/', '/d', '/d', undefined],
    ['/src/dir', '/d/', '/d/', 'dir'],
    ['/src/dir/', '/d/', '/d/', undefined],
    ['/src/file', '/etc/f', '/etc', 'f'],
    ['/src/file', '/etc/', '/etc/', 'file'],
  ])('%s -> %s', (path, dest, dir, name) => {
    expect(destPlacement(path, dest)).toEqual({ dir, name })
  })
})

describe('containerConfig', () => {
  it('inherits cmd and entrypoint unless set', () => {
    const c = containerConfig({ Cmd: ['/bin/sh'], Entrypoint: ['/init'] }, layer({}), [])
    expect(c.Cmd).toEqual(['/bin/sh'])
    expect(c.Entrypoint).toEqual(['/init'])
  })
  it('setting entrypoint clears an inherited cmd', () => {
    const c = containerConfig({ Cmd: ['/bin/sh'] }, layer({ entrypoint: ['/app'] }), [])
    expect(c.Entrypoint).toEqual(['/app'])
    expect(c.Cmd).toBeNull()
  })
  it('entrypoint and cmd together', () => {
    const c = containerConfig({ Cmd: ['/bin/sh'] }, layer({ entrypoint: ['/app'], cmd: ['--x'] }), [])
    expect(c.Entrypoint).toEqual(['/app'])
    expect(c.Cmd).toEqual(['--x'])
  })
  it('full_command sets entrypoint and clears cmd', () => {
    const c = containerConfig({ Cmd: ['/bin/sh'], Entrypoint: ['/e'] }, layer({ fullCommand: ['/bin/app', 'x'] }), [])
    expect(c.Entrypoint).toEqual(['/bin/app', 'x'])
    expect(c.Cmd).toBeNull()
  })
  it('env keeps file order, replaces inherited keys, adds PATH only when missing', () => {
    const c = containerConfig(
      { Env: ['A=1'] },
      layer({
        environment: [
          ['Z', 'z'],
          ['A', '2'],
          ['B', 'b'],
        ],
      }),
      [],
    )
    expect(c.Env).toEqual(['A=2', 'Z=z', 'B=b', DEFAULT_PATH_ENV])
    const d = containerConfig({ Env: ['PATH=/bin'] }, layer({}), [])
    expect(d.Env).toEqual(['PATH=/bin'])
  })
  it('labels: inherited, then generated, then labels; volumes, working dir and user', () => {
    const c = containerConfig(
      { Labels: { a: 'inherited', b: 'inherited' }, Volumes: { '/v1': {} } },
      layer({ labels: [['b', 'mine']], volumes: ['/data'], workingDir: '/w', runtimeUser: '1000' }),
      [
        ['b', 'generated'],
        ['c', 'generated'],
      ],
    )
    expect(c.Labels).toEqual({ a: 'inherited', b: 'mine', c: 'generated' })
    expect(c.Volumes).toEqual({ '/v1': {}, '/data': {} })
    expect(c.WorkingDir).toBe('/w')
    expect(c.User).toBe('1000')
    expect(c.ExposedPorts).toBeUndefined()
  })
  it('exposed ports: the inherited ones kept, the layer ones added', () => {
    const c = containerConfig({ ExposedPorts: { '80/tcp': {} } }, layer({ exposedPorts: ['443/tcp', '53/udp'] }), [])
    expect(c.ExposedPorts).toEqual({ '80/tcp': {}, '443/tcp': {}, '53/udp': {} })
  })
})

describe('explainMiss', () => {
  const base: CacheParts = {
    name: 'l',
    definition: { a: 1 },
    base: 'b',
    sourceDateEpoch: null,
    imports: [],
    overlayDirs: [],
  }
  it('names what changed, in upstream order', () => {
    expect(explainMiss(base, { ...base, definition: { a: 2 } }, false)).toEqual([
      'cache miss because layer definition was changed',
    ])
    expect(explainMiss(base, { ...base, base: 'c' }, false)).toEqual(['cache miss because base layer was changed'])
    expect(explainMiss(base, { ...base, sourceDateEpoch: 5 }, false)).toEqual([
      'cache miss because SOURCE_DATE_EPOCH changed',
    ])
    const withImp: CacheParts = { ...base, imports: [{ path: '/f', kind: 'file', digest: 'x' }] }
    expect(explainMiss(base, withImp, false)).toEqual(['cache miss because of new import: /f'])
    expect(explainMiss(withImp, { ...base, imports: [{ path: '/f', kind: 'file', digest: 'y' }] }, false)).toEqual([
      'cache miss because import content changed: /f',
    ])
    expect(explainMiss(withImp, { ...base, imports: [{ path: '/f', kind: 'dir', digest: 'y' }] }, false)).toEqual([
      'cache miss because import type changed: /f',
    ])
  })
  it('lists at most two changed overlay dirs without --debug', () => {
    const od = (source: string, d: string) => ({ source, dest: '/', digest: d, entries: [{ path: 'f', digest: d }] })
    const prev: CacheParts = { ...base, overlayDirs: [od('/a', '1'), od('/b', '1'), od('/c', '1')] }
    const next: CacheParts = { ...base, overlayDirs: [od('/a', '2'), od('/b', '2'), od('/c', '2')] }
    const lines = explainMiss(prev, next, false)
    expect(lines[0]).toBe('cache miss because content of 3 overlay dirs changed:')
    expect(lines[1]).toBe('Changed overlay_dir: /a\nContents that changed:\n/a/f')
    expect(lines.at(-1)).toBe('and 1 other overlay_dirs. use --debug for complete output')
    expect(explainMiss(prev, next, true)).toHaveLength(4)
  })
})
