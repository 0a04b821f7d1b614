// Global dir flags and the config file, inspect, grab, chroot, clean, logging and check (upstream's
// bats "args", "config", "basic", "grab", "chroot", "clean", "log", "check").
import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  expectOk,
  fixtures,
  indexTags,
  manifestDescriptor,
  readConfig,
  readManifest,
  stacker,
  type TempProject,
  tempProject,
} from './helpers/index.js'

/** A small project: a build_only layer and a tagged child, with the base url written in (no substitution). */
function stackerfile(): string {
  return `bo:
  from:
    type: oci
    url: ${fixtures().BUSYBOX_OCI}
  build_only: true
  run: echo from-bo > /bo-file
img:
  from: {type: built, tag: bo}
  run: |
    echo test > /test
    mkdir -p /some/dir && echo grabbed > /some/dir/grab-me
  environment:
    IMG_ENV: "1"
`
}

const projects: TempProject[] = []
async function project(files: Record<string, string> = { 'stacker.yaml': stackerfile() }): Promise<TempProject> {
  const p = await tempProject(files)
  projects.push(p)
  return p
}
afterEach(async () => {
  for (const p of projects) assertNoMountsUnder(p.dir)
  while (projects.length) await projects.pop()?.cleanup()
})

describe('storage dirs', () => {
  it('--work-dir puts .stacker, roots and oci inside it; --stacker-dir overrides', async () => {
    const p = await project()
    expectOk(await stacker(['--work-dir', p.path('wd'), 'build'], { cwd: p.dir }))
    expect((await readdir(p.path('wd'))).sort()).toEqual(['.stacker', 'oci', 'roots'])
    expect(await indexTags(p.path('wd/oci'))).toEqual(['img'])
    for (const d of ['.stacker', 'oci', 'roots']) expect(existsSync(p.path(d))).toBe(false)

    expectOk(await stacker(['--work-dir', p.path('wd2'), '--stacker-dir', p.path('sd'), 'build'], { cwd: p.dir }))
    expect((await readdir(p.path('wd2'))).sort()).toEqual(['oci', 'roots'])
    expect(existsSync(p.path('sd'))).toBe(true)
    expect(await indexTags(p.path('wd2/oci'))).toEqual(['img'])
  })

  it('--oci-dir, --roots-dir and --stacker-dir put each dir where asked, relative to the cwd', async () => {
    const p = await project()
    expectOk(await stacker(['--oci-dir', 'out/o', '--roots-dir', 'r', '--stacker-dir', 's', 'build'], { cwd: p.dir }))
    expect(await indexTags(p.path('out/o'))).toEqual(['img'])
    expect(existsSync(p.path('r'))).toBe(true)
    expect(existsSync(p.path('s'))).toBe(true)
    for (const d of ['.stacker', 'oci', 'roots']) expect(existsSync(p.path(d))).toBe(false)
  })

  it('--config sets the dirs; STACKER_*_DIR substitutions name them; a flag beats the file', async () => {
    const p = await project({
      'stacker.yaml': `dirs:
  from:
    type: oci
    url: ${fixtures().BUSYBOX_OCI}
  run: |
    echo "\${{STACKER_ROOTFS_DIR}} \${{STACKER_OCI_DIR}} \${{STACKER_STACKER_DIR}}" > /dirs
`,
    })
    await p.write(
      'conf.yaml',
      `stacker_dir: ${p.path('c/st')}\noci_dir: ${p.path('c/o')}\nrootfs_dir: ${p.path('c/r')}\n`,
    )
    expectOk(await stacker(['--config', 'conf.yaml', 'build'], { cwd: p.dir }))
    expect((await readdir(p.path('c'))).sort()).toEqual(['o', 'r', 'st'])
    for (const d of ['.stacker', 'oci', 'roots']) expect(existsSync(p.path(d))).toBe(false)
    expectOk(await stacker(['--config', 'conf.yaml', 'grab', 'dirs:/dirs'], { cwd: p.dir }))
    expect(await readFile(p.path('dirs'), 'utf8')).toBe(`${p.path('c/r')} ${p.path('c/o')} ${p.path('c/st')}\n`)
    expectOk(await stacker(['--config', 'conf.yaml', '--oci-dir', p.path('flag-oci'), 'build'], { cwd: p.dir }))
    expect(await indexTags(p.path('flag-oci'))).toEqual(['dirs'])
  })

  it("refuses ':' in a layer name and in --roots-dir", async () => {
    const p = await project({ 'stacker.yaml': `a:b:\n  from:\n    type: oci\n    url: ${fixtures().BUSYBOX_OCI}\n` })
    const r = await stacker(['build'], { cwd: p.dir })
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toContain("using ':' in the layer name (a:b) is forbidden")
    const q = await project()
    const s = await stacker(['--roots-dir', 'ro:ots', 'build'], { cwd: q.dir })
    expect(s.exitCode).toBe(1)
    expect(s.stderr).toContain('forbidden')
    expect(existsSync(q.path('ro:ots'))).toBe(false)
  })
})

describe('commands on a built project', () => {
  let p: TempProject
  beforeAll(async () => {
    p = await tempProject({ 'stacker.yaml': stackerfile() })
    expectOk(await stacker(['build'], { cwd: p.dir }))
  })
  afterAll(() => p?.cleanup())
  afterEach(() => assertNoMountsUnder(p.dir))

  it('inspect prints the tag, each layer, the annotations and the config', async () => {
    const r = expectOk(await stacker(['inspect'], { cwd: p.dir }))
    const m = await readManifest(p.path('oci'), 'img')
    const lines = r.stdout.split('\n')
    expect(lines[0]).toBe('img')
    m.layers.forEach((l, i) => {
      const hex = l.digest.replace(/^sha256:/, '').slice(0, 12)
      const line = lines[1 + i] ?? ''
      expect(line.startsWith(`\tlayer ${i}: ${hex}... (`)).toBe(true)
      expect(line.endsWith(`, ${l.mediaType})`)).toBe(true)
    })
    expect(lines[1 + m.layers.length]).toBe('Annotations:')
    expect(r.stdout).toContain('  io.stackeroci.stacker.stacker_version: ')
    const at = r.stdout.indexOf('\nImage config:\n')
    expect(at).toBeGreaterThan(0)
    const json = r.stdout
      .slice(at + '\nImage config:\n'.length)
      .split('\n')
      .map((l) => {
        if (l !== '' && !l.startsWith('  ')) throw new Error(`config line not indented: ${l}`)
        return l.slice(2)
      })
      .join('\n')
    expect(JSON.parse(json)).toEqual(await readConfig(p.path('oci'), 'img'))
    const one = expectOk(await stacker(['inspect', 'img'], { cwd: p.dir }))
    expect(one.stdout).toBe(r.stdout)
  })

  it('grab copies a file from a layer into the cwd, from a build_only layer too', async () => {
    expectOk(await stacker(['grab', 'img:/some/dir/grab-me'], { cwd: p.dir }))
    expect(await readFile(p.path('grab-me'), 'utf8')).toBe('grabbed\n')
    expectOk(await stacker(['grab', 'bo:/bo-file'], { cwd: p.dir }))
    expect(await readFile(p.path('bo-file'), 'utf8')).toBe('from-bo\n')
  })

  it('grab refuses an argument without layer:path', async () => {
    const r = await stacker(['grab', 'img'], { cwd: p.dir })
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toContain('invalid grab argument: img')
  })

  it('chroot runs stdin in the layer and says the chroot is temporary', async () => {
    const r = await stacker(['chroot', 'img'], { cwd: p.dir, input: '[ -f /test ] && echo yes\n' })
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.stdout).toContain('yes')
    expect(r.stderr).toContain('This chroot is temporary, any changes will be destroyed when it exits.')
    const bo = await stacker(['chroot', 'img'], { cwd: p.dir, input: 'cat /bo-file\n' })
    expect(bo.stdout).toContain('from-bo')
  })

  it('chroot with no tag uses the first layer of the file', async () => {
    const r = await stacker(['chroot'], { cwd: p.dir, input: '[ -f /bo-file ] && [ ! -f /test ] && echo first\n' })
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.stdout).toContain('first')
  })

  it("chroot exits with the command's status", async () => {
    const r = await stacker(['chroot', 'img'], { cwd: p.dir, input: 'exit 3\n' })
    expect(r.exitCode).toBe(3)
    const f = await stacker(['chroot', 'img'], { cwd: p.dir, input: '[ -f /no-such-file ]\n' })
    expect(f.exitCode).not.toBe(0)
  })

  it('chroot runs a given command with its arguments and the build environment', async () => {
    const r = await stacker(['chroot', 'img', '/bin/sh', '-c', 'echo "layer=$STACKER_LAYER_NAME"; exit 4'], {
      cwd: p.dir,
    })
    expect(r.stdout).toContain('layer=img')
    expect(r.exitCode).toBe(4)
  })

  it('changes made in a chroot do not persist', async () => {
    const before = (await manifestDescriptor(p.path('oci'), 'img')).digest
    const a = await stacker(['chroot', 'img'], { cwd: p.dir, input: 'echo x > /made-in-chroot && rm /test\n' })
    expect(a.exitCode, a.stderr).toBe(0)
    const b = await stacker(['chroot', 'img'], {
      cwd: p.dir,
      input: '[ -f /made-in-chroot ] && echo persisted; [ -f /test ] && echo intact\n',
    })
    expect(b.stdout).not.toContain('persisted')
    expect(b.stdout).toContain('intact')
    // The image is untouched too.
    expect((await manifestDescriptor(p.path('oci'), 'img')).digest).toBe(before)
  })

  it('chroot of an unknown layer fails', async () => {
    const r = await stacker(['chroot', 'nope'], { cwd: p.dir, input: 'true\n' })
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toContain('no layer nope in stackerfile')
  })
})

describe('clean', () => {
  it('removes roots, oci and .stacker and leaves no mounts', async () => {
    const p = await project()
    expectOk(await stacker(['build'], { cwd: p.dir }))
    for (const d of ['.stacker', 'oci', 'roots']) expect(existsSync(p.path(d))).toBe(true)
    expectOk(await stacker(['clean'], { cwd: p.dir }))
    for (const d of ['.stacker', 'oci', 'roots']) expect(existsSync(p.path(d))).toBe(false)
    expect((await readdir(p.dir)).sort()).toEqual(['stacker.yaml'])
    assertNoMountsUnder(p.dir)
    // Cleaning what is already clean is fine, and a rebuild works from nothing.
    expectOk(await stacker(['clean'], { cwd: p.dir }))
    const r = expectOk(await stacker(['build'], { cwd: p.dir }))
    expect(r.stderr).toContain('filesystem img built successfully')
  })
})

describe('logging', () => {
  it('--log-file takes the logs off stderr', async () => {
    const p = await project()
    const r = expectOk(await stacker(['--log-file', p.path('build.log'), 'build'], { cwd: p.dir }))
    const log = await readFile(p.path('build.log'), 'utf8')
    expect(log).toContain('filesystem img built successfully')
    expect(log).not.toContain('stacker version')
    expect(r.stderr).not.toContain('built successfully')
  })

  it('--quiet hides the logs but not the run output', async () => {
    const p = await project({
      'stacker.yaml': `q:\n  from:\n    type: oci\n    url: ${fixtures().BUSYBOX_OCI}\n  run: echo run-output\n`,
    })
    const r = expectOk(await stacker(['--quiet', 'build'], { cwd: p.dir }))
    expect(r.stderr).toBe('')
    expect(r.stdout).toContain('run-output')
    expect(await indexTags(p.path('oci'))).toEqual(['q'])
  })

  it('--debug logs the version first; --debug with --quiet fails', async () => {
    const p = await project()
    const r = expectOk(await stacker(['--debug', 'build'], { cwd: p.dir }))
    expect(r.stderr.split('\n')[0]).toMatch(/^stacker version \S+/)
    const both = await stacker(['--debug', '--quiet', 'build'], { cwd: p.dir })
    expect(both.exitCode).toBe(1)
    expect(both.stderr).toContain("debug and quiet don't make sense together")
  })

  it('--log-timestamp prefixes each line with an RFC3339 timestamp', async () => {
    const p = await project()
    const r = expectOk(await stacker(['--log-timestamp', 'build'], { cwd: p.dir }))
    const lines = r.stderr.split('\n').filter((l) => l !== '')
    expect(lines.length).toBeGreaterThan(2)
    const rfc3339 = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})) \S/
    for (const l of lines) {
      const m = rfc3339.exec(l)
      expect(m, l).not.toBeNull()
      expect(Number.isNaN(Date.parse(m?.[1] ?? ''))).toBe(false)
    }
    expect(r.stderr).toContain('filesystem img built successfully')
  })
})

describe('check', () => {
  it('exits 0 on this machine', async () => {
    const p = await project()
    const r = await stacker(['check'], { cwd: p.dir })
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.stderr).toContain('os/kernel: ')
    expect(r.stderr).toContain(p.path('roots'))
  })
})

describe('an --oci-dir that is not a layout', () => {
  it('says so in upstream words, and an empty dir becomes a layout', async () => {
    const p = await project()
    await writeFile(p.path('afile'), 'x')
    const file = await stacker(['--oci-dir', p.path('afile'), 'build'], { cwd: p.dir })
    expect(file.exitCode).toBe(1)
    expect(file.stderr).toContain(`error: parameter oci-dir="${p.path('afile')}" exists but is not a directory.`)
    await mkdir(p.path('notlayout'))
    await writeFile(p.path('notlayout/x'), 'x')
    const dir = await stacker(['--oci-dir', p.path('notlayout'), 'build'], { cwd: p.dir })
    expect(dir.exitCode).toBe(1)
    expect(dir.stderr).toContain(
      `error: parameter oci-dir="${p.path('notlayout')}" exists but does not look like an OCI Layout.`,
    )
    await mkdir(p.path('empty'))
    expectOk(await stacker(['--oci-dir', p.path('empty'), 'build'], { cwd: p.dir }))
    expect(existsSync(p.path('empty/index.json'))).toBe(true)
  })
})
