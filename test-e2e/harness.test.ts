// Tests of the e2e helpers and fixtures themselves, so a failing e2e test points at stacker, not at the
// harness.
import { existsSync, readdirSync } from 'node:fs'
import { lstat, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execa } from 'execa'
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest'
import {
  assertNoMountsUnder,
  blobPath,
  fixtures,
  indexTags,
  initGitRepo,
  layerTarEntries,
  mountsUnder,
  parseUnsquashfsListing,
  readConfig,
  readIndex,
  readManifest,
  seedRegistry,
  skopeoInspect,
  STACKER_MAIN,
  stacker,
  startHttpServer,
  startRegistry,
  TEST_USER,
  tarFileEntries,
  tempProject,
  type TempProject,
  umociLs,
  umociUnpack,
  unsquashfsList,
  veritysetupVerify,
} from './helpers/index.js'
import { startRecording } from './helpers/corpus.js'
import { readCorpus, restore } from './helpers/replay.js'

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!()
})

async function project(files: Record<string, string> = {}): Promise<TempProject> {
  const p = await tempProject(files)
  cleanups.push(() => p.cleanup())
  return p
}

describe('fixtures', () => {
  // umoci hashes every file it unpacks (each of ~270 hardlinks), which takes seconds: unpack once.
  let shared: TempProject
  let busyboxRootfs: string
  let ubuntuRootfs: string
  beforeAll(async () => {
    shared = await tempProject()
    ;[busyboxRootfs, ubuntuRootfs] = await Promise.all([
      umociUnpack(fixtures().busyboxLayout, 'latest', shared.path('busybox')),
      umociUnpack(fixtures().ubuntuLayout, 'latest', shared.path('ubuntu')),
    ])
  })
  afterAll(() => shared?.cleanup())

  it('are provided by global-setup and exist', () => {
    const f = fixtures()
    expect(inject('fixtures')).toEqual(f)
    expect(f.BUSYBOX_OCI).toBe(`${f.busyboxLayout}:latest`)
    expect(existsSync(join(f.busyboxLayout, 'index.json'))).toBe(true)
    expect(existsSync(join(f.ubuntuLayout, 'index.json'))).toBe(true)
    expect(existsSync(f.busyboxTar)).toBe(true)
  })

  it('busybox unpacks with umoci and has sh hardlinked to busybox', async () => {
    const f = fixtures()
    expect(await umociLs(f.busyboxLayout)).toEqual(['latest'])
    const rootfs = busyboxRootfs
    const bb = await stat(join(rootfs, 'bin/busybox'))
    const sh = await lstat(join(rootfs, 'bin/sh'))
    expect(sh.isFile()).toBe(true)
    expect(sh.ino).toBe(bb.ino)
    expect(bb.nlink).toBeGreaterThan(100)
    expect((await stat(join(rootfs, 'usr/bin/env'))).ino).toBe(bb.ino)
    expect((await stat(join(rootfs, 'tmp'))).mode & 0o7777).toBe(0o1777)
    expect(await readFile(join(rootfs, 'etc/passwd'), 'utf8')).toMatch(/^root:x:0:0:root:\/root:\/bin\/sh$/m)
    expect(await readFile(join(rootfs, 'etc/resolv.conf'), 'utf8')).toBe('')
    for (const d of ['proc', 'sys', 'dev', 'root']) expect((await stat(join(rootfs, d))).isDirectory()).toBe(true)
    expect(existsSync(join(rootfs, 'etc/issue'))).toBe(false)
  })

  it('busybox runs in a chroot', async () => {
    const r = await execa('chroot', [busyboxRootfs, '/bin/sh', '-c', 'echo hi from $(basename $0) && ls /bin/ls'], {
      reject: false,
    })
    expect(r.stdout).toBe('hi from sh\n/bin/ls')
    expect(r.exitCode).toBe(0)
  })

  it('ubuntu surrogate has /etc/issue and a working /bin/bash', async () => {
    expect(await readFile(join(ubuntuRootfs, 'etc/issue'), 'utf8')).toContain('Ubuntu')
    const r = await execa('chroot', [ubuntuRootfs, '/bin/bash', '-c', 'echo $((6*7))'], { reject: false })
    expect(r.stdout).toBe('42')
  })

  it('skopeo and the plain JSON readers agree on the busybox image', async () => {
    const f = fixtures()
    const inspect = await skopeoInspect(f.busyboxLayout, 'latest')
    const index = await readIndex(f.busyboxLayout)
    const manifest = await readManifest(f.busyboxLayout, 'latest')
    const config = await readConfig(f.busyboxLayout, 'latest')
    expect(index.manifests).toHaveLength(1)
    expect(inspect.Digest).toBe(index.manifests[0]!.digest)
    expect(inspect.Layers).toEqual(manifest.layers.map((l) => l.digest))
    expect(manifest.layers).toHaveLength(1)
    expect(config.os).toBe('linux')
    expect(config.config?.Cmd).toEqual(['/bin/sh'])
    expect(config.rootfs.diff_ids).toHaveLength(1)
    expect(await indexTags(f.busyboxLayout)).toEqual(['latest'])
    await expect(readManifest(f.busyboxLayout, 'nope')).rejects.toThrow(/no tag nope .*tags: latest/)
    const cfg = await skopeoInspect(f.busyboxLayout, 'latest', { config: true })
    expect(cfg.rootfs.diff_ids).toEqual(config.rootfs.diff_ids)
  })

  it('layer entries list hardlinks, modes and owners', async () => {
    const f = fixtures()
    const manifest = await readManifest(f.busyboxLayout, 'latest')
    const entries = await layerTarEntries(f.busyboxLayout, manifest.layers[0]!.digest, { withContent: true })
    const byName = new Map(entries.map((e) => [e.name.replace(/^\.?\//, ''), e]))
    const files = entries.filter((e) => e.type === 'file' && e.size > 1000)
    expect(files).toHaveLength(1)
    const links = entries.filter((e) => e.type === 'link')
    expect(links.length).toBeGreaterThan(100)
    expect(links.every((l) => l.linkname === files[0]!.name)).toBe(true)
    expect(byName.get('tmp/')?.mode).toBe(0o1777)
    expect(byName.get('etc/passwd')?.content?.toString()).toContain('root:x:0:0')
    expect(entries.every((e) => e.uid === 0 && e.gid === 0)).toBe(true)
  })

  it('the tarball holds the same rootfs as the layout', async () => {
    const f = fixtures()
    const manifest = await readManifest(f.busyboxLayout, 'latest')
    const norm = (n: string): string => n.replace(/^\.?\//, '').replace(/\/$/, '')
    const layer = (await layerTarEntries(f.busyboxLayout, manifest.layers[0]!.digest)).map((e) => norm(e.name))
    const tar = (await tarFileEntries(f.busyboxTar)).map((e) => norm(e.name))
    const isRoot = (n: string): boolean => n === '' || n === '.'
    expect(new Set(tar.filter((n) => !isRoot(n)))).toEqual(new Set(layer.filter((n) => !isRoot(n))))
    expect(tar).toContain('bin/sh')
  })
})

describe('tempProject', () => {
  it('writes files and cleans up, unmounting what is mounted under it', async () => {
    const p = await tempProject({ 'stacker.yaml': 'a: {}\n', 'sub/x.txt': 'x' })
    try {
      expect(p.dir).not.toContain(':')
      expect(await readFile(p.path('sub/x.txt'), 'utf8')).toBe('x')
      if (process.getuid?.() === 0) {
        await execa('mkdir', ['-p', p.path('m/inner')])
        await execa('mount', ['-t', 'tmpfs', 'e2e', p.path('m')])
        await execa('mkdir', ['-p', p.path('m/inner')])
        await execa('mount', ['-t', 'tmpfs', 'e2e', p.path('m/inner')])
        expect(mountsUnder(p.dir)).toEqual([p.path('m/inner'), p.path('m')])
        expect(() => assertNoMountsUnder(p.dir)).toThrow(/still mounted/)
      }
    } finally {
      await p.cleanup()
    }
    expect(mountsUnder(p.dir)).toEqual([])
    expect(existsSync(p.dir)).toBe(false)
  })
})

describe('servers', () => {
  it('busybox httpd serves a file and stops', async () => {
    const p = await project({ 'www/hello.txt': 'hello over http\n' })
    const srv = await startHttpServer(p.path('www'))
    cleanups.push(() => srv.stop())
    const res = await fetch(`${srv.url}/hello.txt`)
    expect(res.status).toBe(200)
    expect(await res.text()).toBe('hello over http\n')
    await srv.stop()
    await expect(fetch(`${srv.url}/hello.txt`)).rejects.toThrow()
  })

  it('busybox httpd enforces basic auth when asked', async () => {
    const p = await project({ 'www/private/f': 'secret' })
    const srv = await startHttpServer(p.path('www'), {
      auth: { path: '/private', user: TEST_USER.user, password: TEST_USER.password },
    })
    cleanups.push(() => srv.stop())
    expect((await fetch(`${srv.url}/private/f`)).status).toBe(401)
    const auth = `Basic ${Buffer.from(`${TEST_USER.user}:${TEST_USER.password}`).toString('base64')}`
    const ok = await fetch(`${srv.url}/private/f`, { headers: { authorization: auth } })
    expect(ok.status).toBe(200)
    expect(await ok.text()).toBe('secret')
  })

  it('a registry starts, takes an image from skopeo and stops', async () => {
    const reg = await startRegistry()
    cleanups.push(() => reg.stop())
    expect(reg.host).toMatch(/^127\.0\.0\.1:\d+$/)
    const f = fixtures()
    const dest = await seedRegistry(f.busyboxLayout, 'latest', reg.host, 'busybox')
    expect(dest).toBe(`docker://${reg.host}/busybox:latest`)
    const tags = (await (await fetch(`${reg.url}/v2/busybox/tags/list`)).json()) as { tags: string[] }
    expect(tags.tags).toEqual(['latest'])
    const r = await execa('skopeo', ['inspect', '--tls-verify=false', dest], { reject: false })
    expect(JSON.parse(r.stdout).Layers).toEqual((await skopeoInspect(f.busyboxLayout, 'latest')).Layers)
    await reg.stop()
    expect(existsSync(reg.dir)).toBe(false)
    await expect(fetch(`${reg.url}/v2/`)).rejects.toThrow()
  })

  it('a registry with htpasswd refuses anonymous pushes and takes authenticated ones', async () => {
    const reg = await startRegistry({ htpasswd: TEST_USER.htpasswd })
    cleanups.push(() => reg.stop())
    expect((await fetch(`${reg.url}/v2/`)).status).toBe(401)
    const f = fixtures()
    await expect(seedRegistry(f.busyboxLayout, 'latest', reg.host, 'bb')).rejects.toThrow(/unauthorized|401/i)
    await seedRegistry(f.busyboxLayout, 'latest', reg.host, 'bb:v1', { creds: TEST_USER })
    const auth = `Basic ${Buffer.from(`${TEST_USER.user}:${TEST_USER.password}`).toString('base64')}`
    const tags = (await (await fetch(`${reg.url}/v2/bb/tags/list`, { headers: { authorization: auth } })).json()) as {
      tags: string[]
    }
    expect(tags.tags).toEqual(['v1'])
  })
})

describe('squashfs and verity readers', () => {
  it('unsquashfsList parses types, owners, devices and symlinks', async () => {
    const p = await project({ 'r/d/f': 'hi\n', 'r/sp ace': 'x' })
    await execa('ln', ['-s', 'f', p.path('r/d/l')])
    // chown clears setuid, so it goes first.
    await execa('chown', ['1000:1001', p.path('r/d/f')])
    await execa('chmod', ['4755', p.path('r/d/f')])
    if (process.getuid?.() === 0) await execa('mknod', [p.path('r/d/.wh.gone'), 'c', '0', '0'])
    await execa('mksquashfs', [p.path('r'), p.path('s.img'), '-quiet', '-noappend', '-no-progress'])
    const entries = await unsquashfsList(p.path('s.img'))
    const by = new Map(entries.map((e) => [e.path, e]))
    expect(by.get('/')?.type).toBe('directory')
    expect(by.get('/d/f')).toMatchObject({ type: 'file', mode: 0o4755, uid: 1000, gid: 1001, size: 3 })
    expect(by.get('/d/l')).toMatchObject({ type: 'symlink', linkname: 'f' })
    expect(by.get('/sp ace')).toMatchObject({ type: 'file', size: 1 })
    if (process.getuid?.() === 0) {
      expect(by.get('/d/.wh.gone')).toMatchObject({ type: 'character-device', major: 0, minor: 0 })
    }
    expect(parseUnsquashfsListing('drwxrwxrwt 0/0 3 2024-01-01 00:00 squashfs-root/tmp')[0]?.mode).toBe(0o1777)
  })

  it('veritysetupVerify accepts the right root hash and rejects a wrong one', async () => {
    const p = await project()
    const img = p.path('img')
    await writeFile(img, Buffer.alloc(64 * 1024, 7))
    const r = await execa('veritysetup', ['format', img, img, '--hash-offset=65536'], { reject: false })
    expect(r.exitCode).toBe(0)
    const root = /Root hash:\s+([0-9a-f]+)/.exec(r.stdout)?.[1]
    expect(root).toMatch(/^[0-9a-f]{64}$/)
    expect((await veritysetupVerify(img, root!, 65536)).ok).toBe(true)
    expect((await veritysetupVerify(img, '0'.repeat(64), 65536)).ok).toBe(false)
  })
})

describe('git helper', () => {
  it('makes a tagged repository that git describe reports', async () => {
    const p = await project({ 'stacker.yaml': 'x: {}\n' })
    const repo = await initGitRepo(p.dir, { tag: 'v0.9.1' })
    expect(repo.describe).toBe('v0.9.1')
    expect(repo.head).toMatch(/^[0-9a-f]{40}$/)
  })
})

describe('stacker CLI', () => {
  it('stacker() never throws, even when the process cannot start', async () => {
    const d = await mkdtemp(join(tmpdir(), 'stacker-e2e-'))
    await rm(d, { recursive: true })
    const r = await stacker(['--help'], { cwd: d })
    expect(r.exitCode).not.toBe(0)
    expect(r.command).toContain('stacker')
  })

  it.runIf(existsSync(STACKER_MAIN))('stacker --help exits 0 and lists the commands', async () => {
    const r = await stacker(['--help'])
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.stdout + r.stderr).toMatch(/build/)
  })

  it('blob paths follow the layout', () => {
    expect(blobPath('/l', 'sha256:abc')).toBe('/l/blobs/sha256/abc')
  })
})

describe('build corpus for the --jobs replay', () => {
  // a and b are independent unless they bind the same host dir; c waits for `parent`.
  const yaml = (bindB: string, parent: string) =>
    'a:\n  from: {type: oci, url: ${{BASE}}}\n  imports: [${{SRC}}/in.txt]\n  binds: [${{SRC}}/a -> /out]\n' +
    `b:\n  from: {type: oci, url: \${{BASE}}}\n  binds: [\${{SRC}}/${bindB} -> /out]\n` +
    `c:\n  from: {type: built, tag: ${parent}}\n`
  const origin = { file: 'harness.test.ts', test: 'corpus' }

  /** A project naming another temp dir (src) in a file and in its arguments, with outputs of an
   *  earlier build that a recording leaves out. */
  async function setup(src?: TempProject) {
    src ??= await project({ 'in.txt': 'in\n' })
    const p = await project({ 'stacker.yaml': yaml('b', 'a'), 'sub/ref': `${src.dir}/in.txt\n` })
    await p.write('.stacker/storage.type', 'overlay')
    await p.write('roots/.store/x', 'x')
    await p.write('oci/index.json', '{}')
    const args = ['build', '--substitute', `BASE=${fixtures().BUSYBOX_OCI}`, '--substitute', `SRC=${src.dir}`]
    return { p, src, args }
  }

  async function corpusDir(): Promise<string> {
    const corpus = await mkdtemp(join(tmpdir(), 'stacker-e2e-corpus-'))
    cleanups.push(() => rm(corpus, { recursive: true, force: true }))
    return corpus
  }

  it('records a successful build with every temp dir it names, once per content, and plans it', async () => {
    const corpus = await corpusDir()
    const { p, src, args } = await setup()
    const record = async (cwd: string, a: string[], exitCode: number) =>
      (await startRecording(corpus, a, { cwd, env: { X: 'y' }, input: '', origin }))?.finish(exitCode)
    await record(p.dir, args, 0)
    // The same inputs in another project dir are the same entry; a failed build is not kept, nor is
    // a build with --jobs recorded at all.
    const q = await setup(src)
    await record(q.p.dir, args, 0)
    await record(p.dir, [...args, '--substitute', 'Z=1'], 1)
    expect(await startRecording(corpus, [...args, '-j2'], { cwd: p.dir, env: {}, input: '', origin })).toBe(undefined)

    const { entries, errors } = readCorpus(corpus)
    expect(errors).toEqual([])
    expect(entries).toHaveLength(1)
    const e = entries[0]!
    expect(e.origins.map((o) => o.seq)).toEqual([0, 0])
    expect(e.recipe.roots.map((r) => r.path)).toEqual([p.dir, src.dir])
    expect(e.recipe.archived).toBe(true)
    expect(e.recipe.plan).toEqual({
      independent: { file: p.path('stacker.yaml'), layers: ['a', 'b'] },
      needsServer: [],
      readsState: [],
      outsideOutputs: [],
      stackerfiles: [p.path('stacker.yaml')],
    })
    expect(e.recipe.variantOf).toBe(null)

    const r = await restore(e)
    cleanups.push(() => r.cleanup())
    await r.reset()
    const [newP, newSrc] = [r.paths.get(p.dir)!, r.paths.get(src.dir)!]
    expect(newP).not.toBe(p.dir)
    expect(newP.length).toBe(p.dir.length)
    expect(r.cwd).toBe(newP)
    expect(r.args.at(-1)).toBe(`SRC=${newSrc}`)
    expect(r.env).toEqual({ X: 'y' })
    expect(await readFile(join(newP, 'sub/ref'), 'utf8')).toBe(`${newSrc}/in.txt\n`)
    expect(await readFile(join(newSrc, 'in.txt'), 'utf8')).toBe('in\n')
    expect(await readFile(join(newP, 'oci/index.json'), 'utf8')).toBe('{}')
    expect(existsSync(join(newP, '.stacker'))).toBe(false)
    expect(existsSync(join(newP, 'roots'))).toBe(false)
  })

  it('keeps only the plan of a build whose layers all wait for each other; lists registry bases', async () => {
    const corpus = await corpusDir()
    const { p, args } = await setup()
    const record = async () =>
      (await startRecording(corpus, args, { cwd: p.dir, env: {}, input: '', origin }))?.finish(0)
    // b binds what a binds, so it waits for a, and c for b: a chain.
    await p.write('stacker.yaml', yaml('a', 'b'))
    await record()
    await p.write(
      'stacker.yaml',
      'a:\n  from: {type: docker, url: "docker://127.0.0.1:1/x"}\nb:\n  from: {type: scratch}\n',
    )
    await record()
    const recipes = readCorpus(corpus).entries.map((e) => e.recipe)
    expect(recipes.map((x) => x.archived).sort()).toEqual([false, true])
    const chain = recipes.find((x) => !x.archived)!
    expect(chain.plan).toEqual({
      needsServer: [],
      readsState: [],
      outsideOutputs: [],
      stackerfiles: [p.path('stacker.yaml')],
    })
    expect(chain.roots.map((r) => r.archive)).toEqual([null, null])
    const remote = recipes.find((x) => x.archived)!
    expect(remote.plan).toMatchObject({ needsServer: ['a: base docker://127.0.0.1:1/x'] })
  })

  it('archives one build of a stackerfile for all substitution values, a separate one per other option', async () => {
    const corpus = await corpusDir()
    const { p, args } = await setup()
    const record = async (extra: string[], exitCode = 0) =>
      (await startRecording(corpus, [...args, ...extra], { cwd: p.dir, env: {}, input: '', origin }))?.finish(exitCode)
    // A failed build does not claim its variant: the next successful one is archived.
    await record(['--substitute', 'ROUND=0'], 1)
    await record(['--substitute', 'ROUND=1'])
    await record(['--substitute', 'ROUND=2'])
    await p.write('in-project.txt', 'changed\n')
    await record(['--substitute', 'ROUND=3'])
    await record(['--substitute', 'ROUND=1', '--layer-type', 'squashfs'])

    const { entries, errors } = readCorpus(corpus)
    expect(errors).toEqual([])
    const byRound = (round: string, layerType = false) =>
      entries.find(
        (e) => e.recipe.args.includes(`ROUND=${round}`) && e.recipe.args.includes('--layer-type') === layerType,
      )!
    expect(entries).toHaveLength(4)
    const first = byRound('1')
    expect(first.recipe.archived).toBe(true)
    expect(first.recipe.variantOf).toBe(null)
    for (const e of [byRound('2'), byRound('3')]) {
      expect(e.recipe).toMatchObject({ archived: false, variant: first.recipe.variant, variantOf: first.id })
      expect(e.recipe.roots.map((r) => r.archive)).toEqual([null, null])
      expect(readdirSync(e.dir).filter((f) => f.endsWith('.tar'))).toEqual([])
    }
    const other = byRound('1', true)
    expect(other.recipe).toMatchObject({ archived: true, variantOf: null })
    expect(other.recipe.variant).not.toBe(first.recipe.variant)
  })
})
