// A build on the busybox fixture with imports, run, environment, labels, volumes, working_dir,
// runtime_user and annotations, checked with skopeo, umoci and a tar reader (upstream's bats "basic",
// "annotations", "annotations-namespace" and "env").
import { existsSync } from 'node:fs'
import { lstat, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  expectOk,
  fixtures,
  indexTags,
  initGitRepo,
  layerTarEntries,
  type OciImageConfig,
  type OciManifest,
  readConfig,
  readManifest,
  skopeoInspect,
  type StackerResult,
  stacker,
  type TempProject,
  tempProject,
  umociUnpack,
} from './helpers/index.js'

const NS = 'io.stackeroci'

const STACKERFILE = `parent:
  from:
    type: oci
    url: \${{BUSYBOX_OCI}}
  imports:
    - file.txt
    - exe.sh
    - dir
  run:
    - cp /stacker/imports/file.txt /file.txt
    - cp -a /stacker/imports/exe.sh /exe.sh
    - cp -a /stacker/imports/dir /dir
    - echo "\${{GREETING}}" > /greeting
    - echo remove-me > /remove-me
    - env | sort | sed 's/^/ENV:/'
  environment:
    FOO: bar
    BAZ: two words
  labels:
    foo: bar
    org.example.other: value
  volumes:
    - /data/db
    - /var/log
  exposed_ports: [8080, 53/udp]
  working_dir: /srv
  runtime_user: "1000"
  entrypoint: echo hello world
  annotations:
    a.b.c.key: val
  build_env:
    BE_VAR: from build_env
    HTTP_PROXY: overridden
    EMPTY_VAR: ""
child:
  from:
    type: built
    tag: parent
  exposed_ports: [9090/tcp]
  run: rm /remove-me
passthrough:
  from:
    type: built
    tag: parent
  build_env_passthrough:
    - "MY_.*"
  run: env | sort | sed 's/^/PT:/'
`

/** `NAME=value` lines a run script printed with `sed 's/^/<tag>:/'` (a layer-name prefix may precede). */
function printedEnv(stdout: string, tag: string): Map<string, string> {
  const out = new Map<string, string>()
  const re = new RegExp(`${tag}:([A-Za-z_][A-Za-z0-9_]*)=(.*)$`, 'gm')
  for (const m of stdout.matchAll(re)) out.set(m[1] as string, m[2] as string)
  return out
}

const norm = (n: string): string => n.replace(/^\.?\//, '').replace(/\/$/, '')

describe('basic build', () => {
  let p: TempProject
  let build: StackerResult
  let describeTags: string
  let rootfs: string
  const oci = (): string => p.path('oci')

  beforeAll(async () => {
    p = await tempProject({
      'stacker.yaml': STACKERFILE,
      'file.txt': 'imported file\n',
      'exe.sh': { content: '#!/bin/sh\necho exec ok\n', mode: 0o755 },
      'dir/sub/inner.txt': 'inner\n',
      'dir/top.txt': 'top\n',
    })
    describeTags = (await initGitRepo(p.dir, { tag: 'v1.2.3' })).describe
    build = await stacker(
      ['build', '--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`, '--substitute', 'GREETING=hello,world'],
      {
        cwd: p.dir,
        env: {
          SOURCE_DATE_EPOCH: '1700000000',
          HTTP_PROXY: 'host-proxy',
          https_proxy: 'host-https-proxy',
          TERM: 'dumb',
          MY_ONE: 'one',
          NOT_PASSED: 'secret',
        },
      },
    )
    expectOk(build)
    rootfs = await umociUnpack(oci(), 'child', p.path('unpacked-child'))
  })
  afterAll(() => p?.cleanup())

  it('logs each layer as built successfully', () => {
    for (const name of ['parent', 'child', 'passthrough'])
      expect(build.stderr).toContain(`filesystem ${name} built successfully`)
    assertNoMountsUnder(p.dir)
  })

  it('writes the config fields (skopeo and a plain read agree)', async () => {
    const viaSkopeo = await skopeoInspect(oci(), 'parent', { config: true })
    const plain = await readConfig(oci(), 'parent')
    for (const cfg of [viaSkopeo, plain]) {
      const c = cfg.config
      expect(c?.Env).toEqual(expect.arrayContaining(['FOO=bar', 'BAZ=two words']))
      expect(c?.Env?.filter((e) => e.startsWith('PATH='))).toHaveLength(1)
      expect(c?.Entrypoint).toEqual(['echo', 'hello', 'world'])
      expect(c?.Volumes).toEqual({ '/data/db': {}, '/var/log': {} })
      expect(c?.ExposedPorts).toEqual({ '8080/tcp': {}, '53/udp': {} })
      expect(c?.Labels).toEqual({ foo: 'bar', 'org.example.other': 'value' })
      expect(c?.WorkingDir).toBe('/srv')
      expect(c?.User).toBe('1000')
      expect(cfg.os).toBe('linux')
    }
    // A child adds its ports to those it inherits.
    expect((await readConfig(oci(), 'child')).config?.ExposedPorts).toEqual({
      '8080/tcp': {},
      '53/udp': {},
      '9090/tcp': {},
    })
    // Environment keeps file order (docs/compatibility.md), after the inherited entries.
    const env = plain.config?.Env ?? []
    expect(env.indexOf('FOO=bar')).toBeLessThan(env.indexOf('BAZ=two words'))
    // build_env is for the build container only.
    expect(env.some((e) => e.startsWith('BE_VAR='))).toBe(false)
    assertNoMountsUnder(p.dir)
  })

  it('annotates the manifest: stacker_yaml after substitution, version, git describe, user annotations', async () => {
    const m = await readManifest(oci(), 'parent')
    const a = m.annotations ?? {}
    const raw = await readFile(p.path('stacker.yaml'), 'utf8')
    const placeholder = (k: string): string => `\${{${k}}}`
    const substituted = raw
      .replaceAll(placeholder('BUSYBOX_OCI'), fixtures().BUSYBOX_OCI)
      .replaceAll(placeholder('GREETING'), 'hello,world')
    expect(a[`${NS}.stacker.stacker_yaml`]).toBe(substituted)
    const version = expectOk(await stacker(['--version'], { cwd: p.dir })).stdout.trim()
    expect(version).toMatch(/^stacker version \S+/)
    expect(a[`${NS}.stacker.stacker_version`]).toBe(version.replace(/^stacker version /, ''))
    expect(describeTags).toBe('v1.2.3')
    expect(a[`${NS}.stacker.git_version`]).toBe(describeTags)
    expect(a['a.b.c.key']).toBe('val')
    // A child's manifest starts from its parent's annotations.
    const child = (await readManifest(oci(), 'child')).annotations ?? {}
    expect(child['a.b.c.key']).toBe('val')
    expect(child[`${NS}.stacker.stacker_yaml`]).toBe(substituted)
    assertNoMountsUnder(p.dir)
  })

  it('copies imports through run, keeps the exec bit and leaves no /stacker in the image', async () => {
    expect(await readFile(join(rootfs, 'file.txt'), 'utf8')).toBe('imported file\n')
    expect((await stat(join(rootfs, 'exe.sh'))).mode & 0o777).toBe(0o755)
    expect(await readFile(join(rootfs, 'exe.sh'), 'utf8')).toBe('#!/bin/sh\necho exec ok\n')
    expect(await readFile(join(rootfs, 'dir/sub/inner.txt'), 'utf8')).toBe('inner\n')
    expect(await readFile(join(rootfs, 'dir/top.txt'), 'utf8')).toBe('top\n')
    expect(existsSync(join(rootfs, 'stacker'))).toBe(false)
    expect(existsSync(join(rootfs, '.stacker'))).toBe(false)
    // Nothing of /stacker in the layers stacker generated either.
    const m: OciManifest = await readManifest(oci(), 'child')
    const base = await readManifest(fixtures().busyboxLayout, 'latest')
    const own = m.layers.slice(base.layers.length)
    expect(own).toHaveLength(2)
    for (const l of own) {
      const names = (await layerTarEntries(oci(), l.digest)).map((e) => norm(e.name))
      expect(names.filter((n) => n === 'stacker' || n.startsWith('stacker/'))).toEqual([])
    }
    assertNoMountsUnder(p.dir)
  })

  it("records a child's rm as a whiteout; the file is gone after unpack", async () => {
    const m = await readManifest(oci(), 'child')
    const parent = await readManifest(oci(), 'parent')
    expect(m.layers.slice(0, parent.layers.length)).toEqual(parent.layers)
    const parentTop = parent.layers.at(-1)
    const childTop = m.layers.at(-1)
    if (!parentTop || !childTop) throw new Error('no layers')
    const parentNames = (await layerTarEntries(oci(), parentTop.digest)).map((e) => norm(e.name))
    expect(parentNames).toContain('remove-me')
    const childEntries = await layerTarEntries(oci(), childTop.digest)
    expect(childEntries.map((e) => norm(e.name))).toContain('.wh.remove-me')
    expect(childEntries.map((e) => norm(e.name))).not.toContain('remove-me')
    await expect(lstat(join(rootfs, 'remove-me'))).rejects.toThrow(/ENOENT/)
    expect(existsSync(join(rootfs, '.wh.remove-me'))).toBe(false)
    assertNoMountsUnder(p.dir)
  })

  it('takes `--substitute a=b,c` as one value', async () => {
    expect(await readFile(join(rootfs, 'greeting'), 'utf8')).toBe('hello,world\n')
    assertNoMountsUnder(p.dir)
  })

  it('gives run the default passthrough, build_env, STACKER_LAYER_NAME and SOURCE_DATE_EPOCH', () => {
    const env = printedEnv(build.stdout, 'ENV')
    expect(env.get('STACKER_LAYER_NAME')).toBe('parent')
    expect(env.get('SOURCE_DATE_EPOCH')).toBe('1700000000')
    expect(env.get('https_proxy')).toBe('host-https-proxy')
    expect(env.get('TERM')).toBe('dumb')
    // build_env beats a passed-through value; empty values are dropped.
    expect(env.get('HTTP_PROXY')).toBe('overridden')
    expect(env.get('BE_VAR')).toBe('from build_env')
    expect(env.has('EMPTY_VAR')).toBe(false)
    expect(env.has('NOT_PASSED')).toBe(false)
    expect(env.has('MY_ONE')).toBe(false)
    // The layer's environment is for the image, not for the build.
    expect(env.has('FOO')).toBe(false)
    assertNoMountsUnder(p.dir)
  })

  it('replaces the default passthrough list with build_env_passthrough', () => {
    const env = printedEnv(build.stdout, 'PT')
    expect(env.get('STACKER_LAYER_NAME')).toBe('passthrough')
    expect(env.get('MY_ONE')).toBe('one')
    expect(env.has('HTTP_PROXY')).toBe(false)
    expect(env.has('https_proxy')).toBe(false)
    expect(env.has('TERM')).toBe(false)
    expect(env.has('NOT_PASSED')).toBe(false)
    assertNoMountsUnder(p.dir)
  })
})

describe('many layers finishing together', () => {
  let p: TempProject
  afterAll(() => p?.cleanup())

  it('tags every layer, in file order', async () => {
    const names = Array.from({ length: 16 }, (_, i) => `sibling${i}`)
    const siblings = names.map((n) => `${n}:\n  from: {type: built, tag: parent}\n`).join('')
    p = await tempProject({
      'stacker.yaml': `parent:\n  from:\n    type: oci\n    url: ${fixtures().BUSYBOX_OCI}\n${siblings}`,
    })
    expectOk(await stacker(['build', '--jobs', '4'], { cwd: p.dir }))
    expect(await indexTags(p.path('oci'))).toEqual(['parent', ...names])
    assertNoMountsUnder(p.dir)
  })
})

describe('annotations namespace and substitute files, outside git', () => {
  let p: TempProject
  afterAll(() => p?.cleanup())

  it('--annotations-namespace renames the keys; no git_version outside a repository', async () => {
    p = await tempProject({
      'stacker.yaml': `a:
  from:
    type: oci
    url: \${{BUSYBOX_OCI}}
  run: echo "\${{FROM_FILE}} \${{BOTH}}" > /subs
  annotations:
    org.example.note: kept
`,
      'subs.yaml': `BUSYBOX_OCI: ${fixtures().BUSYBOX_OCI}\nFROM_FILE: file-value\nBOTH: file-loses\n`,
    })
    const r = await stacker(
      [
        'build',
        '--annotations-namespace=namespace.example',
        '--substitute-file',
        'subs.yaml',
        '--substitute',
        'BOTH=cli-wins',
      ],
      { cwd: p.dir },
    )
    expectOk(r)
    const a = (await readManifest(p.path('oci'), 'a')).annotations ?? {}
    expect(Object.keys(a).sort()).toEqual([
      'namespace.example.stacker.stacker_version',
      'namespace.example.stacker.stacker_yaml',
      'org.example.note',
    ])
    expect(a['namespace.example.stacker.stacker_yaml']).toContain(`url: ${fixtures().BUSYBOX_OCI}\n`)
    expect(a['namespace.example.stacker.stacker_yaml']).toContain('echo "file-value cli-wins" > /subs')
    const rootfs = await umociUnpack(p.path('oci'), 'a', p.path('unpacked'))
    expect(await readFile(join(rootfs, 'subs'), 'utf8')).toBe('file-value cli-wins\n')
    const cfg: OciImageConfig = await readConfig(p.path('oci'), 'a')
    expect(cfg.config?.Labels ?? {}).toEqual({})
    assertNoMountsUnder(p.dir)
  })
})
