import { mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { getAttributeSync, setAttributeSync } from '@napi-rs/xattr'
import { OVERLAY_OPAQUE_XATTR } from '@stacker/layers'
import { parseSource, type Layer } from '@stacker/stackerfile'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { contentDigest, contentIdFor, dropNeedlessOpaqueMarks } from '../src/content.js'
import { hostCouplings } from '../src/coupling.js'
import { resolveInRoot } from '../src/rootfs-path.js'

let dir: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stacker-content-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

const pos = { file: 'stacker.yaml', line: 1, col: 1 }
function layer(name: string, over: Partial<Layer>): Layer {
  return {
    name,
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

describe('contentDigest and contentIdFor', () => {
  it('tell apart trees that differ in bytes, modes or (clamped) times, and only those', async () => {
    const a = join(dir, 'a')
    const b = join(dir, 'b')
    for (const d of [a, b]) {
      await mkdir(join(d, 'etc'), { recursive: true })
      await writeFile(join(d, 'etc', 'f'), 'same\n')
      await utimes(join(d, 'etc', 'f'), 1000, 1000)
      await utimes(join(d, 'etc'), 1000, 1000)
    }
    expect(await contentDigest(a, undefined)).toBe(await contentDigest(b, undefined))
    await writeFile(join(b, 'etc', 'f'), 'other\n')
    await utimes(join(b, 'etc', 'f'), 1000, 1000)
    expect(await contentDigest(a, undefined)).not.toBe(await contentDigest(b, undefined))
    await writeFile(join(b, 'etc', 'f'), 'same\n')
    await utimes(join(b, 'etc', 'f'), 2000, 2000)
    expect(await contentDigest(a, undefined)).not.toBe(await contentDigest(b, undefined))
    // Both newer than the epoch: clamped to it, the same layer.
    await utimes(join(a, 'etc', 'f'), 3000, 3000)
    expect(await contentDigest(a, 500)).toBe(await contentDigest(b, 500))
    // The id still differs by epoch: another epoch clamps differently.
    const d = await contentDigest(a, 500)
    expect(contentIdFor(d, 500)).not.toBe(contentIdFor(d, 600))
    expect(contentIdFor(d, 500)).toMatch(/^d_[0-9a-f]{48}$/)
  })
})

describe('dropNeedlessOpaqueMarks', () => {
  it('removes marks that hide nothing and keeps those over a lower directory', async () => {
    const upper = join(dir, 'upper')
    const lower = join(dir, 'lower')
    await mkdir(join(upper, 'etc', 'new'), { recursive: true })
    await mkdir(join(upper, 'etc', 'old'), { recursive: true })
    await mkdir(join(lower, 'etc', 'old'), { recursive: true })
    setAttributeSync(join(upper, 'etc', 'new'), OVERLAY_OPAQUE_XATTR, 'y')
    setAttributeSync(join(upper, 'etc', 'old'), OVERLAY_OPAQUE_XATTR, 'y')
    expect(dropNeedlessOpaqueMarks(upper, [lower])).toBe(1)
    expect(getAttributeSync(join(upper, 'etc', 'new'), OVERLAY_OPAQUE_XATTR)).toBeNull()
    expect(getAttributeSync(join(upper, 'etc', 'old'), OVERLAY_OPAQUE_XATTR)?.toString()).toBe('y')
  })
})

describe('resolveInRoot', () => {
  it('follows symlinks inside the root only', async () => {
    const root = join(dir, 'root')
    await mkdir(join(root, 'usr', 'lib'), { recursive: true })
    await symlink('usr/lib', join(root, 'lib'))
    await symlink('/usr/lib', join(root, 'abs'))
    await symlink('../../../../../../../etc', join(root, 'up'))
    await symlink('loop2', join(root, 'loop1'))
    await symlink('loop1', join(root, 'loop2'))
    expect(resolveInRoot(root, '/lib/foo')).toBe('/usr/lib/foo')
    expect(resolveInRoot(root, '/abs/x/y')).toBe('/usr/lib/x/y')
    expect(resolveInRoot(root, '/up/passwd')).toBe('/etc/passwd')
    expect(resolveInRoot(root, '/../../lib')).toBe('/usr/lib')
    expect(resolveInRoot(root, '/lib', { followLast: false })).toBe('/lib')
    expect(resolveInRoot(root, '/missing/../lib/a')).toBe('/usr/lib/a')
    expect(() => resolveInRoot(root, '/loop1/x')).toThrow(/too many levels/)
  })
})

describe('hostCouplings', () => {
  it('orders layers that meet on the host through a bind, in either direction, and no others', () => {
    const bind = (source: string) => ({ source, dest: '/x', pos })
    const order = [
      layer('writer', { binds: [bind('/h/shared')] }),
      layer('reader', { overlayDirs: [{ source: '/h/shared/sub', dest: '/', pos }] }),
      layer('alone', { imports: [{ path: '/h/other', source: parseSource('/h/other'), pos }] }),
      layer('writes-what-alone-read', { binds: [bind('/h')] }),
      layer('http', {
        imports: [{ path: 'https://example.invalid/x', source: parseSource('https://example.invalid/x'), pos }],
      }),
    ]
    const c = hostCouplings(order)
    expect(c.get('writer')).toEqual([])
    expect(c.get('reader')).toEqual(['writer'])
    expect(c.get('alone')).toEqual([])
    expect(c.get('writes-what-alone-read')).toEqual(['writer', 'reader', 'alone'])
    expect(c.get('http')).toEqual([])
  })
})
