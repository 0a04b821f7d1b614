// erofs layers record what tar layers record: with SOURCE_DATE_EPOCH, times later than it are
// clamped to it and older ones kept, in whole seconds; a file name erofs cannot hold is refused
// with one line naming it.
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { execa } from 'execa'
import { describe, expect, it } from 'vitest'
import {
  blobPath,
  expectOk,
  fixtures,
  layerTarEntries,
  projectsPerTest,
  readManifest,
  type StackerResult,
  stacker,
  type TempProject,
  withErofsMount,
} from './helpers/index.js'

const SDE = 1_700_000_000
const BUSYBOX = `from: {type: oci, url: "\${{BUSYBOX_OCI}}"}`

const project = projectsPerTest({ checkMounts: true })

function build(p: TempProject, args: string[]): Promise<StackerResult> {
  return stacker(['build', '--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`, ...args], {
    cwd: p.dir,
    env: { SOURCE_DATE_EPOCH: String(SDE) },
  })
}

/** Sets a time with nanoseconds, which node's utimes cannot. */
async function touch(path: string, time: string): Promise<void> {
  await execa('touch', ['-h', '-d', `@${time}`, path])
}

/** Every entry below `root` (paths relative, no leading `/`) with its mtime in nanoseconds. */
async function mtimes(root: string): Promise<Map<string, bigint>> {
  const out = new Map<string, bigint>()
  const visit = async (rel: string): Promise<void> => {
    for (const name of (await readdir(join(root, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name
      const st = await lstat(join(root, r), { bigint: true })
      out.set(r, st.mtimeNs)
      if (st.isDirectory()) await visit(r)
    }
  }
  await visit('')
  return out
}

describe('erofs layers', () => {
  it('clamp mtimes to SOURCE_DATE_EPOCH as the tar layer of the same build does', async () => {
    const p = await project({
      'old/a': 'a\n',
      'old/sub/b': 'b\n',
      'stacker.yaml': `e:
  ${BUSYBOX}
  imports:
    - {path: old, dest: /old}
  run: |
    echo new > /new
    ln -s new /new-link
    ln -s /old/a /old-link && touch -h -d @1200000000 /old-link
    mkdir /olddir && touch -d @1100000000 /olddir
    rm /etc/hostname
`,
    })
    // Imports keep their times to the nanosecond: older than SDE, with a fraction to drop.
    await touch(p.path('old/a'), '1000000000.7')
    await touch(p.path('old/sub/b'), '1000000001.3')
    await touch(p.path('old/sub'), '1000000002.9')
    await touch(p.path('old'), '1000000003.5')
    expectOk(await build(p, ['--layer-type', 'tar', '--layer-type', 'erofs']))

    const oci = p.path('oci')
    const tarLayers = (await readManifest(oci, 'e')).layers
    const erofsLayers = (await readManifest(oci, 'e-erofs')).layers
    // The base, the imports with dest, the run step.
    expect(erofsLayers).toHaveLength(tarLayers.length)
    const fromTar = new Map<string, bigint>()
    const fromErofs = new Map<string, bigint>()
    for (const [i, layer] of tarLayers.entries()) {
      for (const e of await layerTarEntries(oci, layer.digest)) {
        // Whiteouts are 0:0 char devices under the deleted name in erofs.
        const name = e.name
          .replace(/^\.\//, '')
          .replace(/\/$/, '')
          .replace(/(^|\/)\.wh\.([^/]+)$/, '$1$2')
        if (name !== '.' && name !== '') fromTar.set(`${i}:${name}`, BigInt(e.mtime!) * 1_000_000_000n)
      }
      const blob = blobPath(oci, erofsLayers[i]!.digest)
      for (const [k, v] of await withErofsMount(blob, p.path('mnt'), mtimes)) fromErofs.set(`${i}:${k}`, v)
    }
    expect(fromErofs).toEqual(fromTar)
    const s = (n: number) => BigInt(n) * 1_000_000_000n
    const t = (path: string) => [...fromErofs].find(([k]) => k.endsWith(`:${path}`))?.[1]
    expect(t('old/a')).toBe(s(1_000_000_000))
    expect(t('old/sub/b')).toBe(s(1_000_000_001))
    expect(t('old/sub')).toBe(s(1_000_000_002))
    expect(t('old-link')).toBe(s(1_200_000_000))
    expect(t('olddir')).toBe(s(1_100_000_000))
    expect(t('new')).toBe(s(SDE))
    expect(t('new-link')).toBe(s(SDE))
    expect(t('etc/hostname')).toBe(s(SDE))
  })

  it('refuses a 255-byte file name in one line naming it; squashfs keeps it', async () => {
    const long = 'n'.repeat(255)
    const p = await project({ 'stacker.yaml': `long:\n  ${BUSYBOX}\n  run: mkdir -p /d && echo x > /d/${long}\n` })
    const r = await build(p, ['--layer-type', 'erofs'])
    expect(r.exitCode, r.stderr).toBe(1)
    expect(r.stderr.trim().split('\n').at(-1)).toBe(
      `error: erofs cannot hold the 255-byte file name of d/${long} (this mkfs.erofs stores at most 254 bytes); use another --layer-type, such as squashfs or tar`,
    )
    expect(r.stderr.split('\n').filter((l) => l.startsWith('error:'))).toHaveLength(1)
    expectOk(await build(p, ['--layer-type', 'squashfs']))
  })
})
