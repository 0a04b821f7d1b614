import type { LogRecord } from '@stacker/core'
import { describe, expect, it } from 'vitest'
import { layer, parse, parseError } from './helpers.js'

const HASH = 'abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789'

describe('top level', () => {
  it('keeps file order and the config section apart', () => {
    const sf = parse(
      [
        'zeta:',
        '  from: {type: scratch}',
        'config:',
        '  prerequisites: [a/b.yaml, /abs/c.yaml]',
        'alpha:',
        '  from: {type: scratch}',
        '',
      ].join('\n'),
    )
    expect(sf.fileOrder).toEqual(['zeta', 'alpha'])
    expect([...sf.layers.keys()]).toEqual(['zeta', 'alpha'])
    expect(sf.prerequisites).toEqual(['/proj/a/b.yaml', '/abs/c.yaml'])
    expect(sf.prerequisitePositions.map((p) => [p.line, p.col])).toEqual([
      [4, 19],
      [4, 29],
    ])
    expect(sf.layers.get('zeta')!.pos).toEqual({ file: '/proj/stacker.yaml', line: 1, col: 1 })
  })

  it('an empty file or one with only comments has no layers', () => {
    expect(parse('').fileOrder).toEqual([])
    expect(parse('# nothing\n').fileOrder).toEqual([])
  })

  it('malformed YAML names the file and where', () => {
    expect(parseError('a:\n  from: {type: scratch}\n b: 1\n')).toBe(
      "couldn't parse stacker file /proj/stacker.yaml: All mapping items must start at the same column @3:1",
    )
    expect(parseError('a: [1, 2\n')).toMatch(/^couldn't parse stacker file \/proj\/stacker.yaml: .* @2:1$/)
    expect(parseError('a: b\n---\nc: d\n')).toMatch(/^couldn't parse stacker file .*multiple documents.* @2:1$/)
  })

  it('rejects a top level that is not a map', () => {
    expect(parseError('- a\n- b\n')).toBe(
      "couldn't parse stacker file /proj/stacker.yaml: the top level must be a map of layer names to layer definitions, found !!seq @1:1",
    )
    expect(parseError('just a string\n')).toMatch(/found !!str @1:1$/)
  })

  it('top-level keys must be strings', () => {
    expect(parseError('1:\n  from: {type: scratch}\n')).toBe('stackerfile: cannot cast 1 to string @1:1')
    expect(parseError('x:\n  from: {type: scratch}\nyes:\n  from: {type: scratch}\n')).toBe(
      'stackerfile: cannot cast true to string @3:1',
    )
  })

  it('a duplicate layer in one file is a duplicate layer name', () => {
    expect(parseError('a:\n  from: {type: scratch}\nb:\n  from: {type: scratch}\na:\n  from: {type: scratch}\n')).toBe(
      'duplicate layer name: both /proj/stacker.yaml and /proj/stacker.yaml have a @5:1',
    )
  })

  it('config must be a map with a list of prerequisites', () => {
    expect(parseError('config: foo\n')).toBe(
      "stackerfile: cannot interpret 'config' value, note the 'config' section in the stackerfile cannot contain a layer definition foo @1:9",
    )
    expect(parseError('config:\n  prerequisites: 3\n')).toBe(
      "stackerfile: cannot interpret 'config' value, note the 'config' section in the stackerfile cannot contain a layer definition [{prerequisites 3}] @2:3",
    )
    expect(parseError('config:\n  prerequisites:\n    - {a: b}\n')).toMatch(
      /cannot contain a layer definition \[\{prerequisites \[\[\{a b\}\]\]\}\] @2:3$/,
    )
    // unknown keys under config are ignored, as upstream does
    expect(parse('config:\n  other: 1\n').prerequisites).toEqual([])
    expect(parse('config:\n').prerequisites).toEqual([])
  })

  it('unknown anchors are parse errors', () => {
    expect(parseError('a: *nope\n')).toBe(
      "couldn't parse stacker file /proj/stacker.yaml: unknown anchor 'nope' referenced @1:4",
    )
  })

  it('anchors, aliases and merge keys work; explicit keys win over merged ones', () => {
    const sf = parse(
      [
        'base: &base',
        '  from: {type: docker, url: "docker://busybox"}',
        '  environment: {A: "1"}',
        'child:',
        '  <<: *base',
        '  environment: {B: "2"}',
        '',
      ].join('\n'),
    )
    const child = sf.layers.get('child')!
    expect(child.from?.url).toBe('docker://busybox')
    expect(child.environment).toEqual([['B', '2']])
    expect(parseError('a: &a\n  <<: *a\n')).toMatch(/merge key refers to its own map @|must be a map/)
  })
})

describe('layer shape', () => {
  it('a layer that is not a map is an error, not a crash', () => {
    expect(parseError('foo: bar\n')).toBe('stackerfile: layer foo must be a map of directives, found !!str @1:6')
    expect(parseError('foo:\n')).toBe('stackerfile: layer foo must be a map of directives, found !!null @1:1')
    expect(parseError('foo: [1]\n')).toBe('stackerfile: layer foo must be a map of directives, found !!seq @1:6')
  })

  it('unknown directives are named', () => {
    expect(parseError('foo:\n  from: {type: scratch}\n  foo: bar\n')).toBe('stackerfile: unknown directive foo @3:3')
    expect(parseError('foo:\n  1: bar\n')).toBe('stackerfile: unknown directive 1 @2:3')
  })

  it('the internal directives are accepted', () => {
    const l = layer('foo:\n  from: {type: scratch}\n  was_legacy_import: true\n  was_bom: true\n', 'foo')
    expect(l.wasLegacyImport).toBe(true)
    expect(l.wasBom).toBe(true)
  })

  it('from: keys, shape and built tags', () => {
    expect(parseError('foo:\n  from:\n    type: docker\n    uri: x\n')).toBe(
      'stackerfile: unknown image source directive uri @4:5',
    )
    expect(parseError('foo:\n  from: docker://x\n')).toBe(
      "stackerfile: layer foo: 'from' must be a map with type, url, tag and insecure, found !!str @2:9",
    )
    expect(parseError('foo:\n  from:\n')).toBe(
      "stackerfile: layer foo: 'from' must be a map with type, url, tag and insecure, found !!null @2:3",
    )
    expect(parseError('foo:\n  from:\n    type: built\n')).toBe(
      "foo: from tag cannot be empty for image type 'built' @3:11",
    )
    expect(parseError('foo:\n  from:\n    type: built\n    tag: ""\n')).toBe(
      "foo: from tag cannot be empty for image type 'built' @3:11",
    )
    expect(parseError('foo:\n  from:\n    type: docker\n    insecure: maybe\n')).toBe(
      "stackerfile: layer foo: 'from.insecure' must be a boolean (true or false), found !!str @4:15",
    )
    expect(parseError('foo:\n  from:\n    type: [docker]\n')).toBe(
      "stackerfile: layer foo: 'from.type' must be a string, found !!seq @3:11",
    )
  })

  it('from: values, with tar/oci urls left as written', () => {
    const l = layer('foo:\n  from:\n    type: oci\n    url: rel/dir:tag\n    insecure: yes\n', 'foo')
    expect(l.from).toEqual({
      type: 'oci',
      url: 'rel/dir:tag',
      source: { kind: 'local', path: 'rel/dir:tag' },
      insecure: true,
      pos: { file: '/proj/stacker.yaml', line: 3, col: 11 },
    })
    expect(layer('foo:\n  from: {type: tar, url: x.tar.gz}\n', 'foo').from?.url).toBe('x.tar.gz')
    expect(layer('foo:\n  from: {type: whatever}\n', 'foo').from?.type).toBe('whatever')
    expect(layer('foo:\n  from: {url: x}\n', 'foo').from?.type).toBe('')
    expect(layer('foo:\n  run: x\n', 'foo').from).toBeUndefined()
  })

  it('os and arch: defaults, values, and empty is an error', () => {
    const l = layer('foo:\n  from: {type: scratch}\n', 'foo')
    expect([l.os, l.arch]).toEqual(['linux', 'amd64'])
    const m = layer('foo:\n  from: {type: scratch}\n  os: windows\n  arch: arm64\n', 'foo')
    expect([m.os, m.arch]).toEqual(['windows', 'arm64'])
    expect(parseError('foo:\n  from: {type: scratch}\n  os:\n')).toBe('stackerfile: "os" value cannot be empty @3:3')
    expect(parseError('foo:\n  from: {type: scratch}\n  arch: ~\n')).toBe(
      'stackerfile: "arch" value cannot be empty @3:3',
    )
  })

  it('wrong scalar types are errors with positions', () => {
    expect(parseError('foo:\n  from: {type: scratch}\n  build_only: [1]\n')).toBe(
      "stackerfile: layer foo: 'build_only' must be a boolean (true or false), found !!seq @3:15",
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  build_only: 1\n')).toMatch(/found !!int @3:15$/)
    expect(parseError('foo:\n  from: {type: scratch}\n  run: {a: b}\n')).toBe(
      'unknown directive type: map[interface {}]interface {} @3:8',
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  volumes: 3\n')).toBe(
      "stackerfile: layer foo: 'volumes' must be a list of strings, found !!int @3:12",
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  volumes: [[a]]\n')).toBe(
      "stackerfile: layer foo: 'volumes' must be a list of strings, found !!seq in it @3:13",
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  environment: [a]\n')).toBe(
      "stackerfile: layer foo: 'environment' must be a map of strings to strings, found !!seq @3:16",
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  labels:\n    a: [b]\n')).toBe(
      "stackerfile: layer foo: 'labels' values must be strings, found !!seq @4:8",
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  working_dir: {a: b}\n')).toBe(
      "stackerfile: layer foo: 'working_dir' must be a string, found !!map @3:16",
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  build_env_passthrough: FOO\n')).toMatch(
      /'build_env_passthrough' must be a list of strings, found !!str @3:26$/,
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  overlay_dirs: {source: x}\n')).toMatch(/found !!map @3:17$/)
    expect(parseError('foo:\n  from: {type: scratch}\n  binds: /a\n')).toMatch(
      /'binds' must be a list, found !!str @3:10$/,
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  bom: 3\n')).toMatch(/'bom' must be a map, found !!int @3:8$/)
  })
})

describe('layer names', () => {
  it("':' is forbidden", () => {
    expect(parseError('"a:b":\n  from: {type: scratch}\n  build_only: true\n')).toBe(
      "using ':' in the layer name (a:b) is forbidden due to overlay constraints @1:1",
    )
  })

  it('non-build-only names must be OCI references', () => {
    expect(parseError('"-bad":\n  from: {type: scratch}\n')).toBe(
      'refusing to update invalid reference "-bad": a layer that is not build_only is tagged with its name, which must be a valid OCI reference @1:1',
    )
    expect(parseError('"a b":\n  from: {type: scratch}\n')).toMatch(/^refusing to update invalid reference "a b"/)
    expect(parse('"-ok_when_build_only":\n  from: {type: scratch}\n  build_only: true\n').fileOrder).toEqual([
      '-ok_when_build_only',
    ])
    expect(parse('a.b-c/d_e:\n  from: {type: scratch}\n').fileOrder).toEqual(['a.b-c/d_e'])
  })

  it('names that would climb out of the roots dir are refused even when build_only', () => {
    expect(parseError('"../x":\n  from: {type: scratch}\n  build_only: true\n')).toBe(
      'stackerfile: invalid layer name "../x" @1:1',
    )
    expect(parseError('"":\n  from: {type: scratch}\n  build_only: true\n')).toBe(
      'stackerfile: invalid layer name "" @1:1',
    )
  })
})

describe('imports', () => {
  const imp = (body: string, opts: { requireHash?: boolean } = {}) => {
    const text = `foo:\n  from: {type: scratch}\n  imports:\n${body}`
    return { layer: () => layer(text, 'foo'), error: () => parseError(text, opts) }
  }

  it('a string, a list of strings and maps, absolutified', () => {
    expect(layer('foo:\n  from: {type: scratch}\n  imports: a.txt\n', 'foo').imports.map((i) => i.path)).toEqual([
      '/proj/a.txt',
    ])
    const l = imp(
      [
        '    - dir/',
        '    - ../up',
        '    - /abs/file',
        '    - stacker://other/x',
        '    - https://h/x.tgz',
        `    - {path: f, hash: ${HASH.toUpperCase()}, dest: /d/, mode: 0644, uid: 1000, gid: 0, perms: ignored}`,
        '',
      ].join('\n'),
    ).layer()
    expect(l.imports.map(({ pos, ...rest }) => rest)).toEqual([
      { path: '/proj/dir/', source: { kind: 'local', path: '/proj/dir/' } },
      { path: '/up', source: { kind: 'local', path: '/up' } },
      { path: '/abs/file', source: { kind: 'local', path: '/abs/file' } },
      { path: 'stacker://other/x', source: { kind: 'stacker', layer: 'other', path: '/x' } },
      { path: 'https://h/x.tgz', source: { kind: 'http', url: 'https://h/x.tgz' } },
      {
        path: '/proj/f',
        source: { kind: 'local', path: '/proj/f' },
        hash: HASH,
        dest: '/d/',
        mode: 0o644,
        uid: 1000,
        gid: 0,
      },
    ])
    expect(l.imports[5]!.pos).toEqual({ file: '/proj/stacker.yaml', line: 9, col: 7 })
  })

  it("uid/gid -1 means 'unchanged'", () => {
    const l = imp('    - {path: f, uid: -1, gid: -1}\n').layer()
    expect(l.imports[0]).not.toHaveProperty('uid')
    expect(l.imports[0]).not.toHaveProperty('gid')
  })

  it("upstream's messages", () => {
    expect(imp('    - {path: 3}\n').error()).toBe(
      `value for 'path' in import is not a string: map[interface {}]interface {}{"path":3} @4:7`,
    )
    expect(imp('    - {path: f, hash: [x]}\n').error()).toBe(
      `value for 'hash' in import is not a string: map[interface {}]interface {}{"hash":[]interface {}{"x"}, "path":"f"} @4:7`,
    )
    expect(imp('    - {path: f, mode: rw}\n').error()).toBe(
      `value for 'mode' in import is not an integer: map[interface {}]interface {}{"mode":"rw", "path":"f"} @4:7`,
    )
    expect(imp('    - {path: f, uid: 1.5}\n').error()).toMatch(/^value for 'uid' in import is not an integer: /)
    expect(imp('    - {dest: /x}\n').error()).toBe(
      `No 'path' entry found in import: map[interface {}]interface {}{"dest":"/x"} @4:7`,
    )
    expect(imp('    - {path: f, dest: rel}\n').error()).toBe(
      `'dest' path cannot be relative for: map[interface {}]interface {}{"dest":"rel", "path":"f"} @4:7`,
    )
    expect(imp('    - {path: f, uid: -3}\n').error()).toBe(`'uid' (-3) cannot be negative: map[path:f uid:-3] @4:7`)
    expect(imp('    - {path: f, gid: -2}\n').error()).toBe(`'gid' (-2) cannot be negative: map[gid:-2 path:f] @4:7`)
    expect(imp('    - [a, b]\n').error()).toBe(`could not read imports entry: []interface {}{"a", "b"} @4:7`)
    expect(imp('    - 3\n').error()).toBe('could not read imports entry: 3 @4:7')
    expect(imp('    - {1: x, path: f}\n').error()).toBe(
      `key '%!s(int=1)' in import is not a string: map[interface {}]interface {}{"path":"f", 1:"x"} @4:7`,
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  imports: {path: x}\n')).toBe(
      `'imports' expected an array, found map[interface {}]interface {}: map[interface {}]interface {}{"path":"x"} @3:12`,
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  imports: 3\n')).toBe(
      `'imports' expected an array, found int: 3 @3:12`,
    )
  })

  it('checks the hash format at parse time', () => {
    expect(imp('    - {path: f, hash: abc}\n').error()).toBe(
      'Given hash abc is not valid: invalid checksum digest length @4:7',
    )
    expect(imp(`    - {path: f, hash: ${'g'.repeat(64)}}\n`).error()).toBe(
      `Given hash ${'g'.repeat(64)} is not valid: invalid checksum digest format @4:7`,
    )
    expect(imp(`    - {path: f, hash: "sha256:${HASH.slice(7)}"}\n`).error()).toMatch(
      /is not valid: invalid checksum digest format/,
    )
  })

  it('--require-hash wants a hash on http(s) imports, but not on the legacy import:', () => {
    expect(imp('    - http://h/x\n', { requireHash: true }).error()).toBe(
      'Remote import needs a hash in yaml for path: http://h/x @4:7',
    )
    expect(imp('    - {path: "https://h/y"}\n', { requireHash: true }).error()).toBe(
      'Remote import needs a hash in yaml for path: https://h/y @4:7',
    )
    expect(
      parse(`foo:\n  from: {type: scratch}\n  imports:\n    - {path: "https://h/y", hash: ${HASH}}\n    - local\n`, {
        requireHash: true,
      }).fileOrder,
    ).toEqual(['foo'])
    expect(
      parse('foo:\n  from: {type: scratch}\n  import:\n    - http://h/x\n', { requireHash: true }).fileOrder,
    ).toEqual(['foo'])
  })

  it('legacy import: is converted with a warning, and cannot be mixed with imports', () => {
    const records: LogRecord[] = []
    const sf = parse('foo:\n  from: {type: scratch}\n  import:\n    - a\n', { records })
    const l = sf.layers.get('foo')!
    expect(l.wasLegacyImport).toBe(true)
    expect(l.imports.map((i) => i.path)).toEqual(['/proj/a'])
    expect(records.filter((r) => r.level === 'warn').map((r) => r.msg)).toEqual([
      "'import' directive used in layer 'foo' inside file '/proj/stacker.yaml' is deprecated. Support for 'import' will be removed in releases after 2025-01-01. Migrate by changing 'import' to 'imports' and '/stacker' to '/stacker/imports'. See https://github.com/project-stacker/stacker/issues/571 for migration.",
    ])
    expect(parseError('foo:\n  from: {type: scratch}\n  imports: [a]\n  import: [b]\n')).toBe(
      "layer 'foo' cannot have both 'import' and 'imports' @4:3",
    )
  })
})

describe('other directives', () => {
  it('exposed_ports: PORT or PORT/PROTO, tcp by default; anything else is an error at the item', () => {
    const l = parse(
      'foo:\n  from: {type: scratch}\n  exposed_ports: [80, 443/udp, "9000/sctp", 08080/tcp]\n',
    ).layers.get('foo')!
    expect(l.exposedPorts).toEqual(['80/tcp', '443/udp', '9000/sctp', '8080/tcp'])
    expect(parse('foo:\n  from: {type: scratch}\n').layers.get('foo')!.exposedPorts).toEqual([])
    expect(parseError('foo:\n  from: {type: scratch}\n  exposed_ports: [80, 70000]\n')).toBe(
      'stackerfile: layer foo: exposed port "70000" is not PORT or PORT/PROTO (PORT 1 to 65535, PROTO tcp, udp or sctp) @3:23',
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  exposed_ports:\n    - 80/http\n')).toMatch(
      /exposed port "80\/http" is not PORT or PORT\/PROTO .* @4:7$/,
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  exposed_ports: 80\n')).toBe(
      "stackerfile: layer foo: 'exposed_ports' must be a list of strings, found !!int @3:18",
    )
  })

  it('bom is dropped with a warning and remembered', () => {
    const records: LogRecord[] = []
    const l = parse('foo:\n  from: {type: scratch}\n  bom:\n    generate: true\n', { records }).layers.get('foo')!
    expect(l.wasBom).toBe(true)
    expect(records.map((r) => [r.level, r.msg])).toEqual([
      [
        'warn',
        "'bom' directive used in layer 'foo' inside file '/proj/stacker.yaml' is deprecated. Support for 'bom' is removed in releases after 2026-03-10. ",
      ],
    ])
  })

  it('binds: all three forms, source and dest absolutified', () => {
    const l = layer(
      [
        'foo:',
        '  from: {type: scratch}',
        '  binds:',
        '    - /src',
        '    - rel ->  /dest',
        '    - /a -> b',
        '    - {source: /s}',
        '    - {source: s2, dest: /d2}',
        '',
      ].join('\n'),
      'foo',
    )
    expect(l.binds.map(({ source, dest }) => [source, dest])).toEqual([
      ['/src', '/src'],
      ['/proj/rel', '/dest'],
      ['/a', '/proj/b'],
      ['/s', '/s'],
      ['/proj/s2', '/d2'],
    ])
    expect(l.binds[1]!.pos).toEqual({ file: '/proj/stacker.yaml', line: 5, col: 7 })
  })

  it("binds: upstream's messages", () => {
    const b = (item: string) => parseError(`foo:\n  from: {type: scratch}\n  binds:\n    - ${item}\n`)
    expect(b('/a => /b')).toBe('invalid Bind: /a => /b @4:7')
    expect(b('/a /b')).toBe('invalid Bind: /a /b @4:7')
    expect(b('{dest: /x}')).toBe(
      `unexpected 'bind': missing required field 'source': &types.bindType{Source:"", Dest:"/x"} @4:7`,
    )
    expect(b('[a]')).toBe(`unexpected 'bind' data of type: []interface {}: []interface {}{"a"} @4:7`)
  })

  it('overlay_dirs: dest defaults to /, source absolutified', () => {
    const l = layer(
      'foo:\n  from: {type: scratch}\n  overlay_dirs:\n    - source: od\n    - {source: /abs, dest: /usr, extra: 1}\n',
      'foo',
    )
    expect(l.overlayDirs.map(({ source, dest }) => [source, dest])).toEqual([
      ['/proj/od', '/'],
      ['/abs', '/usr'],
    ])
    expect(parseError('foo:\n  from: {type: scratch}\n  overlay_dirs:\n    - dest: /x\n')).toBe(
      "stackerfile: layer foo: overlay_dirs entry has no 'source' @4:7",
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  overlay_dirs:\n    - od\n')).toBe(
      "stackerfile: layer foo: 'overlay_dirs' entries must be maps, found !!str @4:7",
    )
  })

  it('run and generate_labels: string or list of strings', () => {
    expect(layer('foo:\n  from: {type: scratch}\n  run: |\n    echo a\n    echo b\n', 'foo').run).toEqual([
      'echo a\necho b\n',
    ])
    expect(layer('foo:\n  from: {type: scratch}\n  run: [a, b]\n', 'foo').run).toEqual(['a', 'b'])
    expect(layer('foo:\n  from: {type: scratch}\n  generate_labels: x\n', 'foo').generateLabels).toEqual(['x'])
    expect(parseError('foo:\n  from: {type: scratch}\n  run:\n    - echo\n    - 3\n')).toBe(
      'unknown run array type: int @5:7',
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  run:\n    - {a: b}\n')).toBe(
      'unknown run array type: map[interface {}]interface {} @4:7',
    )
    expect(parseError('foo:\n  from: {type: scratch}\n  generate_labels: true\n')).toBe(
      'unknown directive type: bool @3:20',
    )
  })

  it('cmd, entrypoint, full_command: strings are shell-split, lists kept', () => {
    const l = layer(
      [
        'foo:',
        '  from: {type: scratch}',
        `  cmd: /bin/sh -c "echo \\"hi\\" 'there'"`,
        "  entrypoint: [/bin/sh, '-c', 'a b']",
        '  full_command: a\\ b  c',
        '',
      ].join('\n'),
      'foo',
    )
    expect(l.cmd).toEqual(['/bin/sh', '-c', `echo "hi" 'there'`])
    expect(l.entrypoint).toEqual(['/bin/sh', '-c', 'a b'])
    expect(l.fullCommand).toEqual(['a b', 'c'])
    expect(layer('foo:\n  from: {type: scratch}\n', 'foo')).not.toHaveProperty('cmd')
    expect(parseError(`foo:\n  from: {type: scratch}\n  cmd: echo "unterminated\n`)).toBe(
      "stackerfile: layer foo: can't split 'cmd' into words: No closing quotation @3:8",
    )
  })

  it('maps of strings keep file order and coerce scalars as written', () => {
    const l = layer(
      [
        'foo:',
        '  from: {type: scratch}',
        '  environment:',
        '    Z: 1',
        '    A: yes',
        '    M: 0777',
        '    E:',
        '    F: 1.50',
        '    Z: last',
        '  labels: {b: "x", a: y}',
        '  annotations: {k: v}',
        '  build_env: {X: "1"}',
        '',
      ].join('\n'),
      'foo',
    )
    expect(l.environment).toEqual([
      ['Z', 'last'],
      ['A', 'yes'],
      ['M', '0777'],
      ['E', ''],
      ['F', '1.50'],
    ])
    expect(l.labels).toEqual([
      ['b', 'x'],
      ['a', 'y'],
    ])
    expect(l.annotations).toEqual([['k', 'v']])
    expect(l.buildEnv).toEqual([['X', '1']])
  })

  it('plain strings and lists', () => {
    const l = layer(
      [
        'foo:',
        '  from: {type: scratch}',
        '  runtime_user: 1000',
        '  working_dir: /w',
        '  volumes: [/v1, /v2]',
        '  build_env_passthrough: ["HTTP_.*", TERM]',
        '  build_only: yes',
        '',
      ].join('\n'),
      'foo',
    )
    expect(l.runtimeUser).toBe('1000')
    expect(l.workingDir).toBe('/w')
    expect(l.volumes).toEqual(['/v1', '/v2'])
    expect(l.buildEnvPassthrough).toEqual(['HTTP_.*', 'TERM'])
    expect(l.buildOnly).toBe(true)
    // an empty passthrough list means the default list, as upstream
    expect(layer('foo:\n  from: {type: scratch}\n  build_env_passthrough: []\n', 'foo')).not.toHaveProperty(
      'buildEnvPassthrough',
    )
  })

  it('a repeated directive warns and the last one is used', () => {
    const records: LogRecord[] = []
    const l = parse('foo:\n  from: {type: scratch}\n  run: a\n  run: b\n', { records }).layers.get('foo')!
    expect(l.run).toEqual(['b'])
    expect(records.map((r) => r.msg)).toEqual([
      'stackerfile: directive run appears twice in layer foo, the last one is used',
    ])
  })
})
