import { isStackerError } from '@stacker/core'
import { describe, expect, it } from 'vitest'
import { DEFAULT_PASSTHROUGH, DEFAULT_PATH, buildEnvironment, parseBind } from '../src/index.js'

const hostEnv = {
  http_proxy: 'http://proxy:3128',
  NO_PROXY: 'localhost',
  TERM: 'xterm',
  HOME: '/root',
  SECRET: 'x',
  SOURCE_DATE_EPOCH: '100',
  FOO_A: 'a',
  FOO_B: 'b',
  EMPTY: '',
  UNSET: undefined,
}

describe('buildEnvironment', () => {
  it('passes the default list through, in sorted name order, after PATH', () => {
    expect(buildEnvironment({ hostEnv, buildEnv: [], layerName: 'l' })).toEqual([
      `PATH=${DEFAULT_PATH}`,
      'NO_PROXY=localhost',
      'SOURCE_DATE_EPOCH=100',
      'TERM=xterm',
      'http_proxy=http://proxy:3128',
      'STACKER_LAYER_NAME=l',
    ])
    expect(DEFAULT_PASSTHROUGH).toEqual([
      'ftp_proxy',
      'http_proxy',
      'https_proxy',
      'no_proxy',
      'FTP_PROXY',
      'HTTP_PROXY',
      'HTTPS_PROXY',
      'NO_PROXY',
      'TERM',
      'SOURCE_DATE_EPOCH',
    ])
  })

  it('anchors passthrough regexes and replaces the default list', () => {
    expect(
      buildEnvironment({ hostEnv, passthrough: ['FOO_.*', 'EMPTY', 'UNSET'], buildEnv: [], layerName: 'l' }),
    ).toEqual([`PATH=${DEFAULT_PATH}`, 'FOO_A=a', 'FOO_B=b', 'STACKER_LAYER_NAME=l'])
    // Anchored: "FOO" alone matches neither FOO_A nor FOO_B; "OO_A" does not match inside a name.
    expect(buildEnvironment({ hostEnv, passthrough: ['FOO', 'OO_A'], buildEnv: [], layerName: 'l' })).toEqual([
      `PATH=${DEFAULT_PATH}`,
      'STACKER_LAYER_NAME=l',
    ])
    expect(buildEnvironment({ hostEnv, passthrough: [], buildEnv: [], layerName: 'l' })).toEqual([
      `PATH=${DEFAULT_PATH}`,
      'STACKER_LAYER_NAME=l',
    ])
  })

  it('lets build_env override, add in file order and drop with an empty value', () => {
    const env = buildEnvironment({
      hostEnv,
      buildEnv: [
        ['ZED', 'z'],
        ['TERM', 'dumb'],
        ['http_proxy', ''],
        ['ALPHA', 'a'],
        ['PATH', '/opt/bin:/bin'],
        ['STACKER_LAYER_NAME', 'ignored'],
      ],
      layerName: 'layer-1',
    })
    expect(env).toEqual([
      'PATH=/opt/bin:/bin',
      'NO_PROXY=localhost',
      'SOURCE_DATE_EPOCH=100',
      'TERM=dumb',
      'ZED=z',
      'ALPHA=a',
      'STACKER_LAYER_NAME=layer-1',
    ])
  })

  it('sets SOURCE_DATE_EPOCH from the build, over the host value', () => {
    const env = buildEnvironment({ hostEnv: {}, buildEnv: [], layerName: 'l', sourceDateEpoch: 1700000000 })
    expect(env).toEqual([`PATH=${DEFAULT_PATH}`, 'SOURCE_DATE_EPOCH=1700000000', 'STACKER_LAYER_NAME=l'])
    const both = buildEnvironment({
      hostEnv,
      passthrough: ['SOURCE_DATE_EPOCH'],
      buildEnv: [],
      layerName: 'l',
      sourceDateEpoch: 5,
    })
    expect(both).toContain('SOURCE_DATE_EPOCH=5')
    expect(both).not.toContain('SOURCE_DATE_EPOCH=100')
  })

  it('rejects an invalid regex with a clear message', () => {
    let err: unknown
    try {
      buildEnvironment({ hostEnv, passthrough: ['OK', 'BAD(['], buildEnv: [], layerName: 'l' })
    } catch (e) {
      err = e
    }
    expect(isStackerError(err) && err.code).toBe('STACKERFILE')
    expect((err as Error).message).toMatch(/^invalid build_env_passthrough regex "BAD\(\[": /)
  })
})

describe('parseBind', () => {
  it('parses the three forms', () => {
    expect(parseBind('/src')).toEqual({ source: '/src', dest: '/src' })
    expect(parseBind('/src -> /dest')).toEqual({ source: '/src', dest: '/dest' })
    expect(parseBind('  /src   ->   /dest ')).toEqual({ source: '/src', dest: '/dest' })
    expect(parseBind({ source: '/a', dest: '/b' })).toEqual({ source: '/a', dest: '/b' })
    expect(parseBind({ source: '/a' })).toEqual({ source: '/a', dest: '/a' })
  })

  it('keeps upstream messages for bad binds', () => {
    expect(() => parseBind('/a /b')).toThrow('invalid Bind: /a /b')
    expect(() => parseBind('/a => /b')).toThrow('invalid Bind: /a => /b')
    expect(() => parseBind({ dest: '/b' })).toThrow(
      `unexpected 'bind': missing required field 'source': &types.bindType{Source:"", Dest:"/b"}`,
    )
  })
})
