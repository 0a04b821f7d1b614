import { describe, expect, it } from 'vitest'
import { isLoopbackRegistry, parseTransportRef } from '../src/index.js'

describe('parseTransportRef', () => {
  it('splits an oci: reference at the first colon after the scheme, as containers/image does', () => {
    expect(parseTransportRef('oci:/abs/busybox:latest')).toMatchObject({
      transport: 'oci',
      dir: '/abs/busybox',
      reference: 'latest',
    })
    expect(parseTransportRef('oci:dest:busybox:0.1.1')).toMatchObject({ dir: 'dest', reference: 'busybox:0.1.1' })
    const bare = parseTransportRef('oci:.stacker/layer-bases/oci')
    expect(bare).toMatchObject({ transport: 'oci', dir: '.stacker/layer-bases/oci' })
    expect('reference' in bare).toBe(false)
    expect('reference' in parseTransportRef('oci:dir:')).toBe(false)
  })

  it('parses docker:// references with the registry parser', () => {
    const r = parseTransportRef('docker://localhost:5000/x/y:tag')
    expect(r.transport).toBe('docker')
    if (r.transport === 'docker')
      expect(r.ref).toMatchObject({ registry: 'localhost:5000', repository: 'x/y', tag: 'tag' })
  })

  it("refuses other schemes with upstream's texts", () => {
    expect(() => parseTransportRef('nocolon')).toThrow('bad image ref: nocolon')
    expect(() => parseTransportRef('foo:bar')).toThrow('unknown url scheme foo for foo:bar')
    expect(() => parseTransportRef('docker:busybox')).toThrow(/must start with docker:\/\//)
    expect(() => parseTransportRef('oci::tag')).toThrow(/no layout path/)
  })
})

describe('isLoopbackRegistry', () => {
  it('is true for localhost, 127.0.0.0/8 and [::1], with or without a port', () => {
    for (const r of ['localhost', 'localhost:5000', '127.0.0.1:5000', '127.1.2.3', '[::1]:5000'])
      expect(isLoopbackRegistry(r), r).toBe(true)
    for (const r of ['docker.io', 'registry.local:5000', '10.0.0.1:5000', 'localhost.example.com', '[::2]:5000'])
      expect(isLoopbackRegistry(r), r).toBe(false)
  })
})
