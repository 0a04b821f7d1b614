// imports, imports with dest, stacker:// imports, hashes, http(s) imports,
// --require-hash, the legacy `import:` and binds.
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { lstat, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  finishProject,
  expectOk,
  fixtures,
  type HttpServer,
  layerTarEntries,
  readManifest,
  projectsPerTest,
  type StackerResult,
  stacker,
  startHttpServer,
  type TempProject,
  tempProject,
  umociUnpack,
} from './helpers/index.js'

const sha256 = (s: string | Buffer): string => createHash('sha256').update(s).digest('hex')

function build(p: TempProject, extra: string[] = []): Promise<StackerResult> {
  return stacker(['build', '--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`, ...extra], { cwd: p.dir })
}

/** A user-facing failure: exit 1, exactly one `error:` line holding `text`, no stack trace. */
function expectCleanError(r: StackerResult, text: string): void {
  const out = `${r.stdout}\n${r.stderr}`
  expect(r.exitCode, out).toBe(1)
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('error:'))
  expect(errors, r.stderr).toHaveLength(1)
  expect(errors[0]).toContain(text)
  expect(out).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m)
}

const BUSYBOX = `from: {type: oci, url: "\${{BUSYBOX_OCI}}"}`

const project = projectsPerTest()

/** Asserts nothing is left mounted, then removes the project. */
describe('imports with dest', () => {
  // One build of three layers; each layer's image is unpacked once and shared by the tests.
  let p: TempProject
  let table: string
  let scratchy: string
  let use: string
  let r: StackerResult
  beforeAll(async () => {
    p = await tempProject({
      'dir/a': 'A\n',
      'dir/sub/b': 'B\n',
      'f.txt': 'F\n',
      'stacker.yaml': `
table:
  ${BUSYBOX}
  imports:
    - {path: dir, dest: /d1}
    - {path: dir/, dest: /d2}
    - {path: dir, dest: /d3/}
    - {path: dir/, dest: /d4/}
    - {path: f.txt, dest: /f1}
    - {path: f.txt, dest: /f2/}
    - {path: f.txt, dest: /deep/er/f3}
    - {path: dir, dest: /owned, mode: 0600, uid: 1000, gid: 1001}
  run: |
    cat /d1/a /d2/sub/b /d3/dir/a /d4/a /f1 /f2/f.txt /deep/er/f3 > /seen-in-run
scratchy:
  from: {type: scratch}
  imports:
    - {path: /bin/busybox, dest: /bin/busybox, mode: 0755}
    - {path: f.txt, dest: /perm/f, mode: 0640, uid: 1234, gid: 5678}
    - {path: f.txt, dest: /perm/nosuid, mode: 04755}
  run: |
    #!/bin/busybox sh
    /bin/busybox stat -c '%a %u %g' /perm/f > /stat-in-run
src:
  ${BUSYBOX}
  run: |
    echo srcfile > /srcfile
    mkdir -p /srcdir/sub
    echo x > /srcdir/sub/x
use:
  ${BUSYBOX}
  imports:
    - stacker://src/srcfile
    - stacker://src/srcdir
    - {path: stacker://src/srcfile, dest: /got/}
    - {path: stacker://src/srcdir, dest: /gotdir}
    - {path: stacker://src/srcdir/, dest: /gotcontents/}
    - {path: stacker://src/srcfile, dest: /owned-grab, mode: 0600, uid: 7, gid: 8}
  run: |
    cat /stacker/imports/srcfile /stacker/imports/srcdir/sub/x > /seen-in-run
`,
    })
    r = await build(p)
    expectOk(r)
    ;[table, scratchy, use] = await Promise.all([
      umociUnpack(p.path('oci'), 'table', p.path('u/table')),
      umociUnpack(p.path('oci'), 'scratchy', p.path('u/scratchy')),
      umociUnpack(p.path('oci'), 'use', p.path('u/use')),
    ])
  })
  afterAll(async () => {
    if (p) await finishProject(p)
  })

  const read = (root: string, path: string) => readFile(join(root, path), 'utf8')

  it('follows the trailing-slash table for directories', async () => {
    // dir -> /d: contents at /d
    expect(await read(table, 'd1/a')).toBe('A\n')
    expect(await read(table, 'd1/sub/b')).toBe('B\n')
    expect(existsSync(join(table, 'd1/dir'))).toBe(false)
    // dir/ -> /d: contents at /d
    expect(await read(table, 'd2/a')).toBe('A\n')
    expect(await read(table, 'd2/sub/b')).toBe('B\n')
    // dir -> /d/: /d/dir/...
    expect(await read(table, 'd3/dir/a')).toBe('A\n')
    expect(await read(table, 'd3/dir/sub/b')).toBe('B\n')
    expect(existsSync(join(table, 'd3/a'))).toBe(false)
    // dir/ -> /d/: contents at /d
    expect(await read(table, 'd4/a')).toBe('A\n')
    expect(existsSync(join(table, 'd4/dir'))).toBe(false)
  })

  it('places files by dest: a name, a directory with a trailing slash, missing parents made', async () => {
    expect((await lstat(join(table, 'f1'))).isFile()).toBe(true)
    expect(await read(table, 'f1')).toBe('F\n')
    expect((await lstat(join(table, 'f2'))).isDirectory()).toBe(true)
    expect(await read(table, 'f2/f.txt')).toBe('F\n')
    expect(await read(table, 'deep/er/f3')).toBe('F\n')
  })

  it('makes dest imports visible to run, and keeps the rest of the base', async () => {
    expect(await read(table, 'seen-in-run')).toBe('A\nB\nA\nA\nF\nF\nF\n')
    expect((await lstat(join(table, 'bin/busybox'))).isFile()).toBe(true)
  })

  it('applies mode, uid and gid to every file of a dir import', async () => {
    for (const f of ['owned/a', 'owned/sub/b']) {
      const st = await lstat(join(table, f))
      expect(st.mode & 0o7777, f).toBe(0o600)
      expect([st.uid, st.gid], f).toEqual([1000, 1001])
    }
    expect((await lstat(join(table, 'owned/sub'))).uid).toBe(1000)
  })

  it('builds on scratch with an imported busybox and applies mode/uid/gid to files', async () => {
    const st = await lstat(join(scratchy, 'perm/f'))
    expect(st.mode & 0o7777).toBe(0o640)
    expect([st.uid, st.gid]).toEqual([1234, 5678])
    // The run saw the same thing.
    expect(await read(scratchy, 'stat-in-run')).toBe('640 1234 5678\n')
    // mode takes permission bits only: no setuid.
    expect((await lstat(join(scratchy, 'perm/nosuid'))).mode & 0o7777).toBe(0o755)
    expect((await lstat(join(scratchy, 'bin/busybox'))).mode & 0o777).toBe(0o755)
    expect(existsSync(join(scratchy, 'bin/sh'))).toBe(false)
  })

  it('imports stacker:// files and dirs, with and without dest', async () => {
    expect(await read(use, 'seen-in-run')).toBe('srcfile\nx\n')
    expect(await read(use, 'got/srcfile')).toBe('srcfile\n')
    expect(await read(use, 'gotdir/sub/x')).toBe('x\n')
    expect(await read(use, 'gotcontents/sub/x')).toBe('x\n')
    const grabbed = await lstat(join(use, 'owned-grab'))
    expect([grabbed.mode & 0o7777, grabbed.uid, grabbed.gid]).toEqual([0o600, 7, 8])
    expect(await read(use, 'owned-grab')).toBe('srcfile\n')
    // Only what was imported comes from src, not its whole filesystem.
    expect(existsSync(join(use, 'srcfile'))).toBe(false)
    expect(existsSync(join(use, 'srcdir'))).toBe(false)
  })

  it('leaves no /stacker mount point in the images', () => {
    for (const root of [table, scratchy, use]) expect(existsSync(join(root, 'stacker')), root).toBe(false)
  })

  it('a dest import is its own layer in the image', async () => {
    // busybox + 8 dest imports + the run's diff.
    expect((await readManifest(p.path('oci'), 'table')).layers).toHaveLength(10)
  })
})

it('keeps the owner and mode of the directories a dest import lands in', async () => {
  const p = await project({
    'f.txt': 'F\n',
    'stacker.yaml': `
base:
  ${BUSYBOX}
  build_only: true
  run: mkdir -p /home/u && chown 1000:1000 /home/u && chmod 700 /home/u
img:
  from: {type: built, tag: base}
  imports:
    - {path: f.txt, dest: /tmp/f.txt}
    - {path: f.txt, dest: /home/u/f.txt, uid: 1000, gid: 1000}
    - {path: f.txt, dest: /new/dir/f.txt}
`,
  })
  expectOk(await build(p))
  const rootfs = await umociUnpack(p.path('oci'), 'img', p.path('unpacked'))
  const meta = async (d: string) => {
    const st = await lstat(join(rootfs, d))
    return `${st.uid}:${st.gid} ${(st.mode & 0o7777).toString(8)}`
  }
  expect(await meta('tmp')).toBe('0:0 1777')
  expect(await meta('home/u')).toBe('1000:1000 700')
  expect(await meta('new/dir')).toBe('0:0 755')
  expect(await readFile(join(rootfs, 'home/u/f.txt'), 'utf8')).toBe('F\n')
})

describe('imports without dest', () => {
  it('are read-only under /stacker/imports and stale ones are gone on the next build', async () => {
    const p = await project({ 'a.txt': 'aaa\n', 'b.txt': 'bbb\n', 'dir/c': 'ccc\n' })
    const yaml = (imports: string[]) => `
imp:
  ${BUSYBOX}
  imports:
${imports.map((i) => `    - ${i}\n`).join('')}  run: |
    grep ' /stacker/imports ' /proc/mounts | sed 's/^/MOUNT: /'
    ls -a /stacker/imports | sed 's/^/LS: /'
    cat /stacker/imports/a.txt /stacker/imports/dir/c | sed 's/^/CAT: /'
    if touch /stacker/imports/new 2>/dev/null; then echo WRITABLE; else echo READONLY; fi
`
    await p.write('stacker.yaml', yaml(['a.txt', 'b.txt', 'dir']))
    const r1 = expectOk(await build(p))
    // `MOUNT: <source> /stacker/imports <fstype> <options> ...` (the xtrace line of sed does not match).
    const mountLine = /MOUNT: \S+ \/stacker\/imports \S+ (\S+)/.exec(r1.stdout)
    expect(mountLine, r1.stdout).not.toBeNull()
    expect(mountLine![1]!.split(',')).toContain('ro')
    expect(r1.stdout).toContain('READONLY')
    expect(r1.stdout).not.toContain('WRITABLE')
    expect(r1.stdout).toContain('LS: b.txt')
    expect(r1.stdout).toContain('CAT: aaa')
    expect(r1.stdout).toContain('CAT: ccc')

    await p.write('stacker.yaml', yaml(['a.txt', 'dir']))
    const r2 = expectOk(await build(p))
    expect(r2.stdout).toContain('LS: a.txt')
    expect(r2.stdout).toContain('LS: dir')
    expect(r2.stdout).not.toContain('b.txt')
    // Imports without dest are not part of the image, nor is their mount point.
    // The run changes nothing, so the image is the base alone: a leaked stub or import would add a layer.
    const layers = (await readManifest(p.path('oci'), 'imp')).layers
    const base = (await readManifest(fixtures().busyboxLayout, 'latest')).layers
    expect(layers.map((l) => l.digest)).toEqual(base.map((l) => l.digest))
    await finishProject(p)
  })

  it('checks a local file hash: a match passes, a mismatch or a malformed hash fails', async () => {
    const p = await project({ 'f.txt': 'hashed\n' })
    const yaml = (hash: string) => `
h:
  ${BUSYBOX}
  imports:
    - path: f.txt
      hash: ${hash}
  run: cat /stacker/imports/f.txt
`
    const good = sha256('hashed\n')
    // Case does not matter.
    await p.write('stacker.yaml', yaml(good.toUpperCase()))
    const ok = expectOk(await build(p))
    expect(ok.stdout).toContain('hashed')

    const wrong = sha256('something else')
    await p.write('stacker.yaml', yaml(wrong))
    const bad = await build(p)
    expectCleanError(bad, 'is different than the actual hash')
    expect(bad.stderr).toContain(`${wrong} != ${good}`)

    await p.write('stacker.yaml', yaml('foo'))
    expectCleanError(await build(p), 'Given hash foo is not valid')
    await finishProject(p)
  })

  it('a legacy `import:` warns it is deprecated and puts the content at /stacker', async () => {
    const p = await project({
      'f.txt': 'legacy\n',
      'stacker.yaml': `
old:
  ${BUSYBOX}
  import:
    - f.txt
  run: |
    cat /stacker/f.txt | sed 's/^/AT-STACKER: /'
`,
    })
    const r = expectOk(await build(p))
    expect(r.stderr).toContain("'import' directive used in layer 'old'")
    expect(r.stderr).toContain('is deprecated')
    expect(r.stdout).toContain('AT-STACKER: legacy')
    // Neither mount point leaks into the image.
    const layers = (await readManifest(p.path('oci'), 'old')).layers
    const top = await layerTarEntries(p.path('oci'), layers[layers.length - 1]!.digest)
    expect(top.map((e) => e.name).filter((n) => /^(\.\/)?\.?stacker/.test(n))).toEqual([])
    await finishProject(p)
  })

  it('rejects a nested list import and a missing local import with one clean error', async () => {
    const p = await project({
      'stacker.yaml': `
nested:
  ${BUSYBOX}
  imports:
    - - f.txt
  run: echo hi
`,
    })
    expectCleanError(await build(p), 'could not read imports entry')
    await p.write(
      'stacker.yaml',
      `
missing:
  ${BUSYBOX}
  imports:
    - does-not-exist.txt
  run: echo hi
`,
    )
    const r = await build(p)
    expectCleanError(r, p.path('does-not-exist.txt'))
    expect(r.stderr).toMatch(/no such file or directory|does not exist/)
    await finishProject(p)
  })
})

describe('http imports', () => {
  let p: TempProject
  let srv: HttpServer
  beforeAll(async () => {
    p = await tempProject({ 'www/remote.txt': 'remote content\n', 'www/other.txt': 'other\n', 'local.txt': 'l\n' })
    srv = await startHttpServer(p.path('www'))
  })
  afterAll(async () => {
    await srv?.stop()
    if (p) await finishProject(p)
  })

  const yaml = (imports: string) => `
web:
  ${BUSYBOX}
  imports:
${imports}
  run: |
    cat /stacker/imports/remote.txt | sed 's/^/GOT: /'
`

  it('downloads a file and checks its hash, also with dest', async () => {
    const hash = sha256('remote content\n')
    await p.write(
      'stacker.yaml',
      yaml(
        `    - path: ${srv.url}/remote.txt\n      hash: ${hash}\n    - {path: ${srv.url}/remote.txt, dest: /web/r.txt, hash: ${hash}}`,
      ),
    )
    const r = expectOk(await build(p))
    expect(r.stdout).toContain('GOT: remote content')
    const layers = (await readManifest(p.path('oci'), 'web')).layers
    const entries = await layerTarEntries(p.path('oci'), layers[1]!.digest, { withContent: true })
    const f = entries.find((e) => e.name.replace(/^\.?\//, '') === 'web/r.txt')
    expect(f?.content?.toString()).toBe('remote content\n')
  })

  it('a remote file that changed is fetched again and rebuilds the layer', async () => {
    await p.write('stacker.yaml', yaml(`    - ${srv.url}/remote.txt`))
    expectOk(await build(p))
    await p.write('www/remote.txt', 'remote content, longer now\n')
    const r = expectOk(await build(p))
    expect(r.stdout).toContain('GOT: remote content, longer now')
    await p.write('www/remote.txt', 'remote content\n')
  })

  it('fails when the downloaded content does not match the hash', async () => {
    const wrong = sha256('not it')
    await p.write('stacker.yaml', yaml(`    - path: ${srv.url}/other.txt\n      hash: ${wrong}`))
    const r = await build(p)
    expectCleanError(r, 'hash does not match')
    expect(r.stderr).toContain(wrong)
  })

  it('--require-hash refuses a remote import without hash, not local ones', async () => {
    await p.write('stacker.yaml', yaml(`    - ${srv.url}/remote.txt\n    - local.txt`))
    expectCleanError(
      await build(p, ['--require-hash']),
      `Remote import needs a hash in yaml for path: ${srv.url}/remote.txt`,
    )
    await p.write(
      'stacker.yaml',
      yaml(`    - path: ${srv.url}/remote.txt\n      hash: ${sha256('remote content\n')}\n    - local.txt`),
    )
    expectOk(await build(p, ['--require-hash']))
  })

  it('uses the cached copy when the server is gone', async () => {
    await srv.stop()
    await p.write('stacker.yaml', yaml(`    - path: ${srv.url}/remote.txt\n      hash: ${sha256('remote content\n')}`))
    const r = expectOk(await build(p, ['--no-cache']))
    expect(r.stderr).toContain('using cached copy')
    expect(r.stdout).toContain('GOT: remote content')
  })
})

describe('binds', () => {
  it('bind forms write through to the host, leave no mount point stub and always rebuild', async () => {
    const p = await project({ 'h1/keep': '', 'h2/keep': '', 'h3/keep': '' })
    await p.write(
      'stacker.yaml',
      `
b:
  ${BUSYBOX}
  binds:
    - ${p.path('h1')} -> /mnt/one
    - {source: ${p.path('h2')}}
    - ${p.path('h3')}
  run: |
    echo one > /mnt/one/out1
    echo two > ${p.path('h2')}/out2
    echo three > ${p.path('h3')}/out3
    echo RAN
`,
    )
    const r1 = expectOk(await build(p))
    expect(r1.stdout).toContain('RAN')
    expect(await readFile(p.path('h1/out1'), 'utf8')).toBe('one\n')
    expect(await readFile(p.path('h2/out2'), 'utf8')).toBe('two\n')
    expect(await readFile(p.path('h3/out3'), 'utf8')).toBe('three\n')

    const rootfs = await umociUnpack(p.path('oci'), 'b', p.path('u'))
    expect(existsSync(join(rootfs, 'mnt/one'))).toBe(false)
    // The busybox base has /tmp but nothing under it, so no part of the host path may appear.
    const firstComponent = p.dir.split('/').filter(Boolean)
    expect(existsSync(join(rootfs, firstComponent[0]!, firstComponent[1]!))).toBe(false)

    const r2 = expectOk(await build(p))
    expect(r2.stderr).toContain('rebuilding cached layer due to use of binds in stacker file')
    expect(r2.stderr).toContain('filesystem b built successfully')
    expect(r2.stderr).not.toContain('found cached layer b')
    expect(r2.stdout).toContain('RAN')
    await finishProject(p)
  })

  it('a missing bind source is an error', async () => {
    const p = await project()
    await p.write(
      'stacker.yaml',
      `
b:
  ${BUSYBOX}
  binds:
    - ${p.path('nope')} -> /mnt/nope
  run: echo RAN
`,
    )
    const r = await build(p)
    expectCleanError(r, 'bind mount source')
    expect(r.stdout).not.toContain('RAN')
    await finishProject(p)
  })
})
