import { mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { authFilePaths, lookupAuth, lookupAuthEntry, parseImageRef } from '../src/index.js'
import { tempDir } from './helpers.js'

describe('parseImageRef', () => {
  it('parses host:port, nested repositories, tags and digests', () => {
    const r = parseImageRef('docker://127.0.0.1:5000/team/busybox:1.36')
    expect(r).toMatchObject({ registry: '127.0.0.1:5000', repository: 'team/busybox', tag: '1.36' })
    expect(r.digest).toBeUndefined()
    expect(String(r)).toBe('docker://127.0.0.1:5000/team/busybox:1.36')

    const d = `sha256:${'a'.repeat(64)}`
    const byDigest = parseImageRef(`127.0.0.1:5000/busybox@${d}`)
    expect(byDigest).toMatchObject({ registry: '127.0.0.1:5000', repository: 'busybox', digest: d })
    expect(byDigest.tag).toBeUndefined()
    expect(String(byDigest)).toBe(`docker://127.0.0.1:5000/busybox@${d}`)

    expect(parseImageRef('localhost/x').registry).toBe('localhost')
    expect(parseImageRef('docker://127.0.0.1:5000/busybox').tag).toBe('latest')
  })

  it('normalises Docker Hub names', () => {
    expect(parseImageRef('busybox')).toMatchObject({
      registry: 'docker.io',
      repository: 'library/busybox',
      tag: 'latest',
    })
    expect(parseImageRef('docker://user/app:1')).toMatchObject({ registry: 'docker.io', repository: 'user/app' })
    expect(String(parseImageRef('docker://registry-1.docker.io/busybox:1'))).toBe(
      'docker://docker.io/library/busybox:1',
    )
  })

  it('rejects what is not a registry reference', () => {
    expect(() => parseImageRef('oci:///tmp/x:tag')).toThrow(/only docker:\/\//)
    expect(() => parseImageRef('docker://h:5000/Upper:1')).toThrow(/invalid repository name/)
    expect(() => parseImageRef('docker://h:5000/x@sha256:123')).toThrow(/invalid digest/)
    expect(() => parseImageRef('docker://h:5000/x:bad/tag')).toThrow(/invalid repository name|invalid tag/)
  })
})

describe('lookupAuth', () => {
  const dirs: string[] = []
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
  })
  const b64 = (s: string) => Buffer.from(s).toString('base64')

  it('takes the longest matching prefix, in path components', async () => {
    const dir = await tempDir('stacker-auth-')
    dirs.push(dir)
    const file = join(dir, 'auth.json')
    await writeFile(
      file,
      JSON.stringify({
        auths: {
          'reg.test:5000': { auth: b64('short:one') },
          'reg.test:5000/team': { auth: b64('long:two') },
          'reg.test:5000/team/app': { auth: b64('longest:th:ree') },
        },
      }),
    )
    const env = { HOME: dir }
    expect(await lookupAuth('reg.test:5000', 'team/app', { authFile: file, env })).toEqual({
      username: 'longest',
      password: 'th:ree',
    })
    expect(await lookupAuth('reg.test:5000', 'team/other', { authFile: file, env })).toEqual({
      username: 'long',
      password: 'two',
    })
    // "team" is a component prefix of "teamx" only as a string, not as a path.
    expect(await lookupAuth('reg.test:5000', 'teamx/app', { authFile: file, env })).toEqual({
      username: 'short',
      password: 'one',
    })
    expect(await lookupAuth('other.test', 'team/app', { authFile: file, env })).toBeUndefined()
  })

  it('searches the usual files in order and reads legacy Docker keys', async () => {
    const home = await tempDir('stacker-auth-home-')
    dirs.push(home)
    const xdg = join(home, 'run')
    await mkdir(join(xdg, 'containers'), { recursive: true })
    await mkdir(join(home, '.docker'), { recursive: true })
    await writeFile(join(xdg, 'containers', 'auth.json'), JSON.stringify({ auths: { 'a.test': { auth: b64('x:1') } } }))
    await writeFile(
      join(home, '.docker', 'config.json'),
      JSON.stringify({ auths: { 'https://b.test/v1/': { auth: b64('y:2') }, 'a.test': { auth: b64('z:3') } } }),
    )
    const env = { HOME: home, XDG_RUNTIME_DIR: xdg }
    expect(authFilePaths({ env })).toEqual([
      join(xdg, 'containers', 'auth.json'),
      join(home, '.config', 'containers', 'auth.json'),
      join(home, '.docker', 'config.json'),
    ])
    expect(await lookupAuth('a.test', 'r', { env })).toEqual({ username: 'x', password: '1' })
    const b = await lookupAuthEntry('b.test', 'r', { env })
    expect(b?.credentials).toEqual({ username: 'y', password: '2' })
    expect(b?.source).toBe(join(home, '.docker', 'config.json'))
    expect(
      await lookupAuth('a.test', 'r', { env: { HOME: home, REGISTRY_AUTH_FILE: join(home, 'none.json') } }),
    ).toEqual({
      username: 'z',
      password: '3',
    })
  })

  it('reports a malformed file without quoting it', async () => {
    const dir = await tempDir('stacker-auth-bad-')
    dirs.push(dir)
    const file = join(dir, 'auth.json')
    await writeFile(file, '{"auths": {"h": {"auth": "c2VjcmV0LXB3"}')
    const err = await lookupAuth('h', 'r', { authFile: file, env: { HOME: dir } }).catch((e: Error) => e)
    expect(err).toBeInstanceOf(Error)
    expect((err as Error).message).toBe(`reading ${file}: invalid JSON`)
  })
})
