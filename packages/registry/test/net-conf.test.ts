import { mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import tls from 'node:tls'
import { afterEach, describe, expect, it } from 'vitest'
import {
  hostCerts,
  parseImageRef,
  proxyConfig,
  proxyFor,
  pullSources,
  pushTarget,
  readRegistriesConf,
  trustedCas,
} from '../src/index.js'
import { tempDir as makeTempDir } from './helpers.js'

const dirs: string[] = []
async function tempDir(prefix: string): Promise<string> {
  const d = await makeTempDir(prefix)
  dirs.push(d)
  return d
}
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

describe('proxyFor', () => {
  const cfg = (noProxy: string) =>
    proxyConfig({
      HTTPS_PROXY: 'proxy.example.invalid:3128',
      http_proxy: 'http://p2.example.invalid:8080',
      NO_PROXY: noProxy,
    })
  const via = (url: string, noProxy = '') => proxyFor(new URL(url), cfg(noProxy))?.href

  it('picks HTTPS_PROXY for https and HTTP_PROXY for http (either case), http:// when no scheme is given', () => {
    expect(via('https://r.example.invalid/v2/')).toBe('http://proxy.example.invalid:3128/')
    expect(via('http://r.example.invalid/v2/')).toBe('http://p2.example.invalid:8080/')
    expect(proxyFor(new URL('https://r.example.invalid/'), proxyConfig({ http_proxy: 'http://p:1' }))).toBeUndefined()
  })

  it('never proxies loopback, and honours NO_PROXY names, suffixes, IPs, CIDRs, ports and *', () => {
    expect(via('https://localhost:5000/')).toBeUndefined()
    expect(via('https://127.0.0.1:5000/')).toBeUndefined()
    expect(via('https://[::1]:5000/')).toBeUndefined()
    expect(via('https://a.corp.example.invalid/', 'corp.example.invalid')).toBeUndefined()
    expect(via('https://corp.example.invalid/', 'corp.example.invalid')).toBeUndefined()
    expect(via('https://corp.example.invalid/', '.corp.example.invalid')).toBeDefined()
    expect(via('https://a.corp.example.invalid/', '*.corp.example.invalid')).toBeUndefined()
    expect(via('https://10.1.2.3/', '10.0.0.0/8')).toBeUndefined()
    expect(via('https://11.1.2.3/', '10.0.0.0/8')).toBeDefined()
    expect(via('https://192.0.2.7/', '192.0.2.7')).toBeUndefined()
    expect(via('https://r.example.invalid:5000/', 'r.example.invalid:5000')).toBeUndefined()
    expect(via('https://r.example.invalid:5001/', 'r.example.invalid:5000')).toBeDefined()
    expect(via('https://anything.example.invalid/', ' other.example.invalid , *')).toBeUndefined()
  })
})

describe('trust', () => {
  it('adds SSL_CERT_FILE and SSL_CERT_DIR certificates to the bundled roots, once each', async () => {
    const dir = await tempDir('stacker-net-')
    const root = tls.rootCertificates[0] as string
    const own = tls.rootCertificates[1] as string
    await writeFile(join(dir, 'bundle.pem'), `${root}\n${own}\n`)
    await mkdir(join(dir, 'certs'))
    await writeFile(join(dir, 'certs', 'x.pem'), own)
    const cas = trustedCas({ SSL_CERT_FILE: join(dir, 'bundle.pem'), SSL_CERT_DIR: join(dir, 'certs') })
    expect(cas.length).toBe(tls.rootCertificates.length)
    const warnings: string[] = []
    trustedCas({ SSL_CERT_FILE: join(dir, 'none.pem'), NODE_EXTRA_CA_CERTS: join(dir, 'missing.pem') }, (m) =>
      warnings.push(m),
    )
    expect(warnings).toEqual([
      expect.stringMatching(/^Warning: Ignoring extra certs from `.*missing\.pem`, load failed/),
    ])
  })

  it('reads certs.d/HOST: *.crt as CAs, NAME.cert with NAME.key as the client certificate', async () => {
    const home = await tempDir('stacker-net-')
    const d = join(home, '.config', 'containers', 'certs.d', '127.0.0.1:5000')
    await mkdir(d, { recursive: true })
    await writeFile(join(d, 'ca.crt'), tls.rootCertificates[0] as string)
    await writeFile(join(d, 'client.cert'), 'CERT')
    await writeFile(join(d, 'client.key'), 'KEY')
    const c = hostCerts('127.0.0.1:5000', { HOME: home })
    expect(c).toMatchObject({ dir: d, cert: 'CERT', key: 'KEY' })
    expect(c?.cas).toHaveLength(1)
    expect(hostCerts('127.0.0.1:5001', { HOME: home })?.dir).not.toBe(
      join(home, '.config', 'containers', 'certs.d', '127.0.0.1:5001'),
    )
  })
})

describe('registries.conf', () => {
  it('rewrites pulls to mirrors then the location, by the longest prefix; pushes go to the reference', async () => {
    const dir = await tempDir('stacker-net-')
    const file = join(dir, 'registries.conf')
    await writeFile(
      file,
      `[[registry]]\nprefix = "example.invalid"\nlocation = "main.example.invalid"\n\n[[registry]]\nprefix = "example.invalid/team"\nlocation = "team.example.invalid:5000/t"\ninsecure = true\n[[registry.mirror]]\nlocation = "m1.example.invalid/cache"\n[[registry.mirror]]\nlocation = "m2.example.invalid"\ninsecure = true\n\n[[registry]]\nlocation = "blocked.example.invalid"\nblocked = true\n\n[[registry]]\nlocation = "digests.example.invalid"\npull-from-mirror = "digest-only"\n[[registry.mirror]]\nlocation = "m3.example.invalid"\n`,
    )
    const entries = readRegistriesConf({ env: { CONTAINERS_REGISTRIES_CONF: file } })
    const srcs = pullSources(parseImageRef('docker://example.invalid/team/app:1'), entries)
    expect(srcs.map((s) => [String(s.ref), s.insecure, s.mirror])).toEqual([
      ['docker://m1.example.invalid/cache/app:1', false, true],
      ['docker://m2.example.invalid/app:1', true, true],
      ['docker://team.example.invalid:5000/t/app:1', true, false],
    ])
    expect(pullSources(parseImageRef('docker://example.invalid/other:1'), entries).map((s) => String(s.ref))).toEqual([
      'docker://main.example.invalid/other:1',
    ])
    expect(() => pullSources(parseImageRef('docker://blocked.example.invalid/x'), entries)).toThrow(/blocked/)
    expect(pullSources(parseImageRef('docker://digests.example.invalid/x:1'), entries)).toHaveLength(1)
    expect(
      pullSources(parseImageRef(`docker://digests.example.invalid/x@sha256:${'a'.repeat(64)}`), entries),
    ).toHaveLength(2)
    const push = pushTarget(parseImageRef('docker://example.invalid/team/app:1'), entries)
    expect([String(push.ref), push.insecure]).toEqual(['docker://example.invalid/team/app:1', true])

    await writeFile(file, '[[registry]\n')
    expect(() => readRegistriesConf({ env: { CONTAINERS_REGISTRIES_CONF: file } })).toThrow(/invalid registries.conf/)
    expect(readRegistriesConf({ env: { CONTAINERS_REGISTRIES_CONF: join(dir, 'missing.conf') } })).toEqual([])
  })
})
