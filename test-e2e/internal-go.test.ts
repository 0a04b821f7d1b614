// The hidden `stacker internal-go` commands (upstream's bats helpers call
// `internal-go copy`, its atomfs-* files `internal-go atomfs mount|umount`): image copies between OCI
// layouts and a local registry in all four directions (manifest digests checked with skopeo and the
// layouts' index.json), nothing left behind by a failed copy, cp/chmod/chown and their argument
// checks, check-aa-profile's exit status, and atomfs mounts of squashfs and erofs builds: files read
// through the mount, shared layers, umount leaving no mount, loop device or record, and a layer whose
// blob no longer matches its verity root hash refused.
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { cp, lstat, mkdir, open, readFile, readlink, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  blobPath,
  expectOk,
  fixtures,
  manifestDescriptor,
  mountsUnder,
  type OciManifest,
  type Registry,
  readIndex,
  readManifest,
  type StackerResult,
  startRegistry,
  stacker,
  type TempProject,
  tempProject,
  umociUnpack,
} from './helpers/index.js'

let scratch: TempProject

beforeAll(async () => {
  scratch = await tempProject()
})

afterAll(async () => {
  await scratch?.cleanup()
})

function env(): Record<string, string> {
  // No auth file of this machine is read.
  return { HOME: scratch.path('home'), REGISTRY_AUTH_FILE: '', XDG_RUNTIME_DIR: '', XDG_CONFIG_HOME: '' }
}

function run(args: string[], cwd: string): Promise<StackerResult> {
  return stacker(args, { cwd, env: env() })
}

function errorLines(r: StackerResult): string[] {
  return r.stderr.split('\n').filter((l) => l.startsWith('error:'))
}

/** The raw manifest a registry holds under `ref`, and the digest of its bytes (skopeo, no TLS). */
async function remoteDigest(ref: string): Promise<string> {
  const r = await execa('skopeo', ['inspect', '--raw', '--tls-verify=false', ref], {
    reject: false,
    all: true,
    stripFinalNewline: false,
  })
  if (r.exitCode !== 0) throw new Error(`skopeo inspect ${ref} failed:\n${r.all}`)
  return `sha256:${createHash('sha256').update(r.stdout).digest('hex')}`
}

async function skopeoDigest(layout: string, tag: string): Promise<string> {
  const r = await execa('skopeo', ['inspect', `oci:${layout}:${tag}`], { reject: false, all: true })
  if (r.exitCode !== 0) throw new Error(`skopeo inspect oci:${layout}:${tag} failed:\n${r.all}`)
  return (JSON.parse(r.stdout) as { Digest: string }).Digest
}

async function sha256File(path: string): Promise<string> {
  return `sha256:${createHash('sha256')
    .update(await readFile(path))
    .digest('hex')}`
}

/** Every blob the manifest tagged `tag` names is in the layout and matches its digest. */
async function expectCompleteImage(layout: string, tag: string): Promise<void> {
  const m = await readManifest(layout, tag)
  for (const d of [m.config, ...m.layers]) expect(await sha256File(blobPath(layout, d.digest))).toBe(d.digest)
}

/** Flips one byte of a file in place. */
async function corrupt(path: string, offset: number): Promise<void> {
  const fh = await open(path, 'r+')
  try {
    const b = Buffer.alloc(1)
    await fh.read(b, 0, 1, offset)
    b[0] = (b[0] as number) ^ 0xff
    await fh.write(b, 0, 1, offset)
  } finally {
    await fh.close()
  }
}

describe('internal-go copy', () => {
  let reg: Registry
  let busybox: string
  let ubuntu: string

  beforeAll(async () => {
    reg = await startRegistry()
    busybox = (await manifestDescriptor(fixtures().busyboxLayout, 'latest')).digest
    ubuntu = (await manifestDescriptor(fixtures().ubuntuLayout, 'latest')).digest
  })

  afterAll(async () => {
    await reg?.stop()
  })

  it('oci -> oci creates the layout, keeps the manifest digest and replaces a tag of the same name', async () => {
    const p = await tempProject()
    try {
      const r = expectOk(await run(['internal-go', 'copy', `oci:${fixtures().BUSYBOX_OCI}`, 'oci:dest:busybox'], p.dir))
      expect(r.stdout).toContain('Copying blob sha256:')
      expect(r.stdout).toContain('Writing manifest to image destination')
      expect(r.stderr).toContain('Creating new OCI Layout at "dest"')
      const index = await readIndex(p.path('dest'))
      expect(index.manifests.map((m) => [m.annotations?.['org.opencontainers.image.ref.name'], m.digest])).toEqual([
        ['busybox', busybox],
      ])
      expect(await skopeoDigest(p.path('dest'), 'busybox')).toBe(busybox)
      await expectCompleteImage(p.path('dest'), 'busybox')

      // A reference may hold ':' (upstream's oci-import test); a second tag keeps the first.
      expectOk(await run(['internal-go', 'copy', `oci:${fixtures().BUSYBOX_OCI}`, 'oci:dest:busybox:0.1.1'], p.dir))
      expectOk(await run(['internal-go', 'copy', `oci:${fixtures().UBUNTU_OCI}`, 'oci:dest:busybox'], p.dir))
      const after = await readIndex(p.path('dest'))
      expect(after.manifests.map((m) => [m.annotations?.['org.opencontainers.image.ref.name'], m.digest])).toEqual([
        ['busybox:0.1.1', busybox],
        ['busybox', ubuntu],
      ])
      const rootfs = await umociUnpack(p.path('dest'), 'busybox', p.path('unpacked'))
      expect(await readFile(join(rootfs, 'etc', 'issue'), 'utf8')).toContain('Ubuntu')

      // A source layout with a single image needs no reference; an empty dir becomes a layout.
      await mkdir(p.path('empty'))
      expectOk(await run(['internal-go', 'copy', `oci:${fixtures().busyboxLayout}`, 'oci:empty:bb'], p.dir))
      expect(await skopeoDigest(p.path('empty'), 'bb')).toBe(busybox)
    } finally {
      await p.cleanup()
    }
  })

  it('oci -> docker -> oci, and docker -> docker, keep the manifest digest', async () => {
    const p = await tempProject()
    try {
      // A loopback registry may be plain http without any flag; the explicit flag works too.
      const pushed = expectOk(
        await run(
          ['internal-go', 'copy', `oci:${fixtures().BUSYBOX_OCI}`, `docker://${reg.host}/e2e/busybox:t1`],
          p.dir,
        ),
      )
      expect(pushed.stdout).toContain('Writing manifest to image destination')
      expect(await remoteDigest(`docker://${reg.host}/e2e/busybox:t1`)).toBe(busybox)
      expectOk(
        await run(
          [
            'internal-go',
            'copy',
            '--dest-tls-verify=false',
            `oci:${fixtures().UBUNTU_OCI}`,
            `docker://${reg.host}/e2e/ubuntu:t1`,
          ],
          p.dir,
        ),
      )
      expect(await remoteDigest(`docker://${reg.host}/e2e/ubuntu:t1`)).toBe(ubuntu)

      expectOk(await run(['internal-go', 'copy', `docker://${reg.host}/e2e/busybox:t1`, 'oci:pulled:bb'], p.dir))
      expect((await manifestDescriptor(p.path('pulled'), 'bb')).digest).toBe(busybox)
      expect(await skopeoDigest(p.path('pulled'), 'bb')).toBe(busybox)
      await expectCompleteImage(p.path('pulled'), 'bb')
      // By digest, too.
      expectOk(await run(['internal-go', 'copy', `docker://${reg.host}/e2e/busybox@${busybox}`, 'oci:pulled:d'], p.dir))
      expect((await manifestDescriptor(p.path('pulled'), 'd')).digest).toBe(busybox)

      expectOk(
        await run(
          [
            'internal-go',
            'copy',
            `docker://${reg.host}/e2e/busybox:t1`,
            `docker://localhost:${reg.host.split(':')[1]}/copied/bb:t2`,
          ],
          p.dir,
        ),
      )
      expect(await remoteDigest(`docker://${reg.host}/copied/bb:t2`)).toBe(busybox)
    } finally {
      await p.cleanup()
    }
  })

  it('verifies TLS when asked to, even for a loopback registry', async () => {
    const r = await run(
      [
        'internal-go',
        'copy',
        '--dest-tls-verify=true',
        `oci:${fixtures().BUSYBOX_OCI}`,
        `docker://${reg.host}/e2e/tls:t`,
      ],
      scratch.dir,
    )
    expect(r.exitCode).toBe(1)
    expect(errorLines(r)).toHaveLength(1)
    expect(r.stderr).toMatch(/TLS error/)
  })

  it('a failed copy leaves no layout, tag or blob behind', async () => {
    const p = await tempProject()
    try {
      await cp(fixtures().busyboxLayout, p.path('src'), { recursive: true })
      const m: OciManifest = await readManifest(p.path('src'), 'latest')
      const layer = blobPath(p.path('src'), (m.layers[0] as { digest: string }).digest)
      await corrupt(layer, (await stat(layer)).size - 10)

      const fresh = await run(['internal-go', 'copy', 'oci:src:latest', 'oci:dest:bb'], p.dir)
      expect(fresh.exitCode).toBe(1)
      expect(errorLines(fresh)).toEqual([
        expect.stringMatching(/^error: couldn't copy oci:src:latest to oci:dest:bb: .*corrupt/),
      ])
      expect(existsSync(p.path('dest'))).toBe(false)

      // Into an existing layout: index.json is untouched and no blob of the image appears.
      expectOk(await run(['internal-go', 'copy', `oci:${fixtures().UBUNTU_OCI}`, 'oci:dest:keep'], p.dir))
      const before = await readFile(p.path('dest/index.json'), 'utf8')
      const again = await run(['internal-go', 'copy', 'oci:src:latest', 'oci:dest:bb'], p.dir)
      expect(again.exitCode).toBe(1)
      expect(await readFile(p.path('dest/index.json'), 'utf8')).toBe(before)
      expect(existsSync(blobPath(p.path('dest'), (m.layers[0] as { digest: string }).digest))).toBe(false)

      // Nothing pushed under the tag either.
      const push = await run(['internal-go', 'copy', 'oci:src:latest', `docker://${reg.host}/e2e/corrupt:t`], p.dir)
      expect(push.exitCode).toBe(1)
      expect(errorLines(push)).toHaveLength(1)
      const head = await fetch(`${reg.url}/v2/e2e/corrupt/manifests/t`, { method: 'HEAD' })
      expect(head.status).toBe(404)

      const missing = await run(['internal-go', 'copy', `docker://${reg.host}/e2e/none:t`, 'oci:other:x'], p.dir)
      expect(missing.exitCode).toBe(1)
      expect(errorLines(missing)).toEqual([expect.stringMatching(/manifest unknown/)])
      expect(existsSync(p.path('other'))).toBe(false)
    } finally {
      await p.cleanup()
    }
  })

  it('refuses bad arguments with one error line', async () => {
    const cases: [string[], RegExp][] = [
      [['internal-go', 'copy', 'oci:a:b'], /^error: wrong number of args$/],
      [['internal-go', 'copy', 'a', 'b', 'c'], /^error: wrong number of args$/],
      [['internal-go', 'copy', `oci:${fixtures().BUSYBOX_OCI}`, 'oci:dest'], /^error: un-parsable oci dest oci:dest/],
      [['internal-go', 'copy', 'foo:bar', 'oci:dest:x'], /^error: unknown url scheme foo for foo:bar$/],
      [['internal-go', 'copy', 'nocolon', 'oci:dest:x'], /^error: bad image ref: nocolon$/],
      [['internal-go', 'copy', '--src-tls-verify=maybe', 'oci:a:b', 'oci:c:d'], /^error: invalid value "maybe"/],
    ]
    for (const [args, re] of cases) {
      const r = await run(args, scratch.dir)
      expect(r.exitCode, args.join(' ')).toBe(1)
      expect(errorLines(r), args.join(' ')).toEqual([expect.stringMatching(re)])
    }
    expect(existsSync(join(scratch.dir, 'dest'))).toBe(false)
  })
})

describe('internal-go cp, chmod, chown, check-aa-profile', () => {
  it('cp copies a file, replacing the destination, and keeps mode, owner and times', async () => {
    const p = await tempProject()
    try {
      await p.write('src/file', 'hello\n', 0o750)
      await execa('chown', ['1234:4321', p.path('src/file')])
      await utimes(p.path('src/file'), 1_000_000, 1_000_000)
      await p.write('dest', 'old, longer content\n')
      expectOk(await run(['internal-go', 'cp', 'src/file', 'dest'], p.dir))
      expect(await readFile(p.path('dest'), 'utf8')).toBe('hello\n')
      const st = await stat(p.path('dest'))
      expect([st.mode & 0o7777, st.uid, st.gid, st.mtimeMs]).toEqual([0o750, 1234, 4321, 1_000_000_000])

      await symlink('file', p.path('src/link'))
      expectOk(await run(['internal-go', 'cp', 'src/link', 'copied-link'], p.dir))
      expect(await readlink(p.path('copied-link'))).toBe('file')
    } finally {
      await p.cleanup()
    }
  })

  it('cp copies a directory tree, merging into an existing directory', async () => {
    const p = await tempProject()
    try {
      await p.write('tree/a/b/c', 'c\n', 0o600)
      await p.write('tree/top', 'top\n')
      await symlink('a/b/c', p.path('tree/to-c'))
      expectOk(await run(['internal-go', 'cp', 'tree', 'new/copy'], p.dir))
      expect(await readFile(p.path('new/copy/a/b/c'), 'utf8')).toBe('c\n')
      expect((await stat(p.path('new/copy/a/b/c'))).mode & 0o777).toBe(0o600)
      expect(await readlink(p.path('new/copy/to-c'))).toBe('a/b/c')

      await p.write('existing/kept', 'kept\n')
      expectOk(await run(['internal-go', 'cp', 'tree/', 'existing'], p.dir))
      expect(await readFile(p.path('existing/kept'), 'utf8')).toBe('kept\n')
      expect(await readFile(p.path('existing/top'), 'utf8')).toBe('top\n')
      expect((await lstat(p.path('existing/a/b'))).isDirectory()).toBe(true)

      const missing = await run(['internal-go', 'cp', 'nope', 'x'], p.dir)
      expect(missing.exitCode).toBe(1)
      expect(errorLines(missing)).toEqual(['error: cp: nope: no such file or directory'])
    } finally {
      await p.cleanup()
    }
  })

  it('chmod and chown set the mode and owner', async () => {
    const p = await tempProject({ f: 'x\n' })
    try {
      expectOk(await run(['internal-go', 'chmod', '4751', 'f'], p.dir))
      expect((await stat(p.path('f'))).mode & 0o7777).toBe(0o4751)
      expectOk(await run(['internal-go', 'chown', '1000:2000', 'f'], p.dir))
      expect([(await stat(p.path('f'))).uid, (await stat(p.path('f'))).gid]).toEqual([1000, 2000])
      // Without a group, the group stays.
      expectOk(await run(['internal-go', 'chown', '77', 'f'], p.dir))
      expect([(await stat(p.path('f'))).uid, (await stat(p.path('f'))).gid]).toEqual([77, 2000])

      for (const [args, re] of [
        [['chmod', 'rwx', 'f'], /^error: invalid mode "rwx"/],
        [['chown', 'root', 'f'], /^error: invalid owner "root"/],
        [['chmod', '644', 'missing'], /^error: chmod missing: no such file or directory$/],
      ] as [string[], RegExp][]) {
        const r = await run(['internal-go', ...args], p.dir)
        expect(r.exitCode, args.join(' ')).toBe(1)
        expect(errorLines(r)).toEqual([expect.stringMatching(re)])
      }
    } finally {
      await p.cleanup()
    }
  })

  it('cp, chmod and chown take exactly two arguments', async () => {
    for (const cmd of ['cp', 'chmod', 'chown'])
      for (const args of [[], ['one'], ['one', 'two', 'three']]) {
        const r = await run(['internal-go', cmd, ...args], scratch.dir)
        expect(r.exitCode, `${cmd} ${args.join(' ')}`).toBe(1)
        expect(errorLines(r)).toEqual(['error: wrong number of args'])
      }
  })

  it('check-aa-profile exits 52: AppArmor is not used', async () => {
    const r = await run(['internal-go', 'check-aa-profile', 'some-profile'], scratch.dir)
    expect(r.exitCode).toBe(52)
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringContaining('AppArmor')])
  })
})

describe('internal-go atomfs', () => {
  let p: TempProject
  const STACKERFILE = `base:
  from:
    type: oci
    url: \${{BUSYBOX_OCI}}
  run: echo base > /base
a:
  from:
    type: built
    tag: base
  run: echo a > /a
b:
  from:
    type: built
    tag: base
  run: |
    echo b > /b
    rm /bin/ls
`

  beforeAll(async () => {
    p = await tempProject({ 'stacker.yaml': STACKERFILE, 'noverity/stacker.yaml': STACKERFILE })
    const sub = ['--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`]
    expectOk(
      await run(['build', '--layer-type', 'tar', '--layer-type', 'squashfs', '--layer-type', 'erofs', ...sub], p.dir),
    )
    expectOk(await run(['build', '--layer-type', 'squashfs', '--no-verity', ...sub], p.path('noverity')))
  })

  afterAll(async () => {
    await p?.cleanup()
  })

  /** `losetup -a` lines whose backing file is under the project. */
  async function loops(): Promise<string[]> {
    const r = await execa('losetup', ['-a'], { reject: false, all: true })
    return r.stdout.split('\n').filter((l) => l.includes(p.dir))
  }

  async function expectNothingLeft(): Promise<void> {
    assertNoMountsUnder(p.dir)
    expect(await loops()).toEqual([])
    expect(existsSync(p.path('atomfs-metadata'))).toBe(false)
  }

  async function mnt(name: string): Promise<string> {
    await mkdir(p.path(name), { recursive: true })
    return p.path(name)
  }

  for (const type of ['squashfs', 'erofs'] as const) {
    it(`mounts the ${type} build read-only with verity checked; umount undoes everything`, async () => {
      try {
        const dir = await mnt(`m-${type}`)
        const layers = (await readManifest(p.path('oci'), `a-${type}`)).layers
        expect(layers.every((l) => l.annotations?.['io.stackeroci.stacker.atomfs_verity_root_hash'])).toBe(true)
        expectOk(await run(['internal-go', 'atomfs', 'mount', `a-${type}`, dir], p.dir))
        expect(await readFile(join(dir, 'a'), 'utf8')).toBe('a\n')
        expect(await readFile(join(dir, 'base'), 'utf8')).toBe('base\n')
        expect((await stat(join(dir, 'bin', 'sh'))).isFile()).toBe(true)
        await expect(writeFile(join(dir, 'new'), 'x')).rejects.toThrow(/EROFS/)
        expect(await loops()).toHaveLength(layers.length)

        expectOk(await run(['internal-go', 'atomfs', 'umount', dir], p.dir))
        await expectNothingLeft()
        // Repeating it is harmless.
        expectOk(await run(['internal-go', 'atomfs', 'umount', dir], p.dir))
      } finally {
        await unmountAll()
      }
    })
  }

  it('images share their common layers; a layer stays mounted while an image uses it', async () => {
    try {
      const a = await mnt('ma')
      const b = await mnt('mb')
      expectOk(await run(['internal-go', 'atomfs', 'mount', 'a-squashfs', a], p.dir))
      expectOk(await run(['internal-go', 'atomfs', 'mount', 'b-squashfs', b], p.dir))
      expect(existsSync(join(a, 'bin', 'ls'))).toBe(true)
      // base's two layers once, a's and b's own layer each.
      const layers = (await readManifest(p.path('oci'), 'a-squashfs')).layers.length
      expect(await loops()).toHaveLength(layers + 1)

      // From another directory: the mount itself says where its records are.
      expectOk(await run(['internal-go', 'atomfs', 'umount', a], scratch.dir))
      expect(existsSync(join(a, 'a'))).toBe(false)
      expect(await readFile(join(b, 'b'), 'utf8')).toBe('b\n')
      expect(await readFile(join(b, 'base'), 'utf8')).toBe('base\n')
      // b's whiteout hides what the shared layer has.
      expect(existsSync(join(b, 'bin', 'ls'))).toBe(false)
      expect(await loops()).toHaveLength(layers)

      expectOk(await run(['internal-go', 'atomfs', 'umount', b], p.dir))
      await expectNothingLeft()
    } finally {
      await unmountAll()
    }
  })

  it('mounts a --no-verity image', async () => {
    const q = p.path('noverity')
    try {
      await mkdir(join(q, 'm'))
      const layers = (await readManifest(join(q, 'oci'), 'a-squashfs')).layers
      expect(layers.some((l) => l.annotations?.['io.stackeroci.stacker.atomfs_verity_root_hash'])).toBe(false)
      expectOk(await run(['internal-go', 'atomfs', 'mount', 'a-squashfs', 'm'], q))
      expect(await readFile(join(q, 'm', 'a'), 'utf8')).toBe('a\n')
      expectOk(await run(['internal-go', 'atomfs', 'umount', 'm'], q))
      assertNoMountsUnder(q)
      expect(await loops()).toEqual([])
      expect(existsSync(join(q, 'atomfs-metadata'))).toBe(false)
    } finally {
      await unmountAll()
    }
  })

  it('refuses a layer whose blob does not match its verity root hash, and mounts nothing', async () => {
    // A copy of the output to tamper with (--oci-dir), so the other tests keep theirs.
    await cp(p.path('oci'), p.path('oci-copy'), { recursive: true })
    try {
      const m = await readManifest(p.path('oci-copy'), 'a-squashfs')
      const top = blobPath(p.path('oci-copy'), (m.layers[m.layers.length - 1] as { digest: string }).digest)
      await corrupt(top, 100)
      const dir = await mnt('tampered')
      const r = await run(['--oci-dir', 'oci-copy', 'internal-go', 'atomfs', 'mount', 'a-squashfs', dir], p.dir)
      expect(r.exitCode).toBe(1)
      expect(errorLines(r)).toEqual([
        expect.stringMatching(/^error: invalid root hash [0-9a-f]{64} for .*: verification failed$/),
      ])
      await expectNothingLeft()

      // A layer already mounted for another image is checked again through its loop device.
      const good = await mnt('good')
      expectOk(await run(['--oci-dir', 'oci-copy', 'internal-go', 'atomfs', 'mount', 'b-squashfs', good], p.dir))
      const base = blobPath(p.path('oci-copy'), (m.layers[0] as { digest: string }).digest)
      await corrupt(base, 100)
      const shared = await run(['--oci-dir', 'oci-copy', 'internal-go', 'atomfs', 'mount', 'a-squashfs', dir], p.dir)
      expect(shared.exitCode).toBe(1)
      expect(errorLines(shared)).toEqual([expect.stringMatching(/^error: invalid root hash /)])
      expect(mountsUnder(dir)).toEqual([])
      expect(await readFile(join(good, 'b'), 'utf8')).toBe('b\n')
      expectOk(await run(['internal-go', 'atomfs', 'umount', good], p.dir))
      await expectNothingLeft()
    } finally {
      await unmountAll()
    }
  })

  it('refuses what it cannot mount with one error line', async () => {
    const dir = await mnt('refused')
    await mkdir(p.path('busy'), { recursive: true })
    await execa('mount', ['-t', 'tmpfs', 'tmpfs', p.path('busy')])
    try {
      const cases: [string[], RegExp][] = [
        [
          ['mount', 'a', dir],
          /^error: a: layer sha256:[0-9a-f]+ is application\/vnd\.oci\.image\.layer\.v1\.tar\S*, not squashfs or erofs$/,
        ],
        [['mount', 'nope-squashfs', dir], /^error: reference "nope-squashfs" not found/],
        [['mount', 'a-squashfs', p.path('missing')], /^error: mountpoint .* does not exist$/],
        [['mount', 'a-squashfs'], /^error: wrong number of args for mount$/],
        [['umount'], /^error: wrong number of args for umount$/],
        [['umount', p.path('busy')], /^error: .*busy is not an atomfs mountpoint$/],
      ]
      for (const [args, re] of cases) {
        const r = await run(['internal-go', 'atomfs', ...args], p.dir)
        expect(r.exitCode, args.join(' ')).toBe(1)
        expect(errorLines(r), args.join(' ')).toEqual([expect.stringMatching(re)])
      }
      expect(mountsUnder(p.dir)).toEqual([p.path('busy')])
      expect(existsSync(p.path('atomfs-metadata'))).toBe(false)
    } finally {
      await execa('umount', [p.path('busy')], { reject: false })
    }
  })

  /** Whatever a failed test left mounted, records included, so the next test starts clean. */
  async function unmountAll(): Promise<void> {
    for (const mp of mountsUnder(p.dir)) {
      if (!mp.includes('/atomfs-metadata/')) await execa('umount', [mp], { reject: false })
    }
    for (const mp of mountsUnder(p.dir)) await execa('umount', [mp], { reject: false })
    await execa('rm', ['-rf', p.path('atomfs-metadata'), p.path('noverity/atomfs-metadata')], { reject: false })
  }
})
