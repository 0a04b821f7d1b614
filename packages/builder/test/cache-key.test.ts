import { describe, expect, it } from 'vitest'
import { type CacheParts, cacheKey } from '../src/cache.js'
import { cacheTag } from '../src/remote-cache.js'

/** The parts of one layer as planLayer makes them in a project at `root`. */
function parts(root: string, token = 'abc'): CacheParts {
  return {
    name: 'app',
    definition: {
      imports: [{ path: `${root}/data.txt` }],
      overlayDirs: [{ source: `${root}/overlay`, dest: '/ovl' }],
      run: [`cp ${root}/x /y`],
      buildEnv: [['TOKEN', token]],
    },
    base: 'oci:sha256:0000000000000000000000000000000000000000000000000000000000000000',
    sourceDateEpoch: 1700000000,
    imports: [{ path: `${root}/data.txt`, kind: 'file', digest: 'sha256:11' }],
    overlayDirs: [{ source: `${root}/overlay`, dest: '/ovl', digest: 'sha256:22', entries: [] }],
  }
}

describe('cacheKey', () => {
  it('is the same for the same stackerfile in another directory (a shared cache on another machine)', () => {
    expect(cacheKey(parts('/home/a/proj'), '/home/a/proj')).toBe(cacheKey(parts('/srv/ci/b'), '/srv/ci/b'))
    // A path outside the stackerfile's directory is not rewritten: it must be the same path.
    expect(cacheKey(parts('/home/a/proj'), '/home/a')).not.toBe(cacheKey(parts('/srv/ci/b'), '/srv/ci'))
    // Only whole path components are rewritten: /p is not a prefix of /proc.
    const proc: CacheParts = {
      ...parts('/x'),
      definition: { run: ['cat /proc/cpuinfo'] },
      imports: [],
      overlayDirs: [],
    }
    expect(cacheKey(proc, '/p')).toBe(cacheKey(proc, '/elsewhere'))
  })

  it('changes with a build_env value, and shows none of the inputs', () => {
    const k = cacheKey(parts('/p', 'secret-one'), '/p')
    expect(k).not.toBe(cacheKey(parts('/p', 'secret-two'), '/p'))
    expect(k).toMatch(/^sha256:[0-9a-f]{64}$/)
    expect(cacheTag(k)).toBe(`cache-${k.slice('sha256:'.length)}`)
  })

  it('changes with import content and overlay_dir content', () => {
    const a = parts('/p')
    const b = parts('/p')
    b.imports = [{ path: '/p/data.txt', kind: 'file', digest: 'sha256:12' }]
    expect(cacheKey(a, '/p')).not.toBe(cacheKey(b, '/p'))
    const c = parts('/p')
    c.overlayDirs = [{ source: '/p/overlay', dest: '/ovl', digest: 'sha256:23', entries: [] }]
    expect(cacheKey(a, '/p')).not.toBe(cacheKey(c, '/p'))
  })
})
