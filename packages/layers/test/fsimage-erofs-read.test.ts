// The TypeScript erofs reader against the kernel: images made by mkfs.erofs from trees with every
// kind of entry, in every layout this project and upstream write (and a few more mkfs.erofs 1.5
// can), extracted by extractErofs and compared with the kernel's mount of the same image.
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, openSync, closeSync, writeSync } from 'node:fs'
import {
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  symlink,
  truncate,
  writeFile,
} from 'node:fs/promises'
import { join } from 'node:path'
import { getAttribute, listAttributes, setAttribute } from '@napi-rs/xattr'
import { StackerError } from '@stacker/core'
import { MediaTypes } from '@stacker/oci'
import { describe, expect, it } from 'vitest'
import { ErofsImage } from '../src/fsimage/erofs-image.js'
import { extractErofs, extractFsImage, openFsImage, writeFsImage } from '../src/fsimage/index.js'
import { sealErofsSuperblock } from '../src/fsimage/superblock.js'
import { isRoot, sh, useTempDirs } from './fsimage-helpers.js'

const tempDir = useTempDirs()
const EROFS = MediaTypes.layerErofsLz4hc

interface Entry {
  path: string
  type: string
  mode: number
  uid: number
  gid: number
  mtimeNs: string
  size?: number
  sha256?: string
  target?: string
  rdev?: string
  xattrs?: Record<string, string>
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

/** Every entry below `root` (itself as '.'): type, mode, owner, mtime to the nanosecond, size and
 *  sha256 of files, link targets, device numbers, every xattr (hex); and the groups of paths that
 *  are one inode. */
async function listing(root: string): Promise<{ entries: Entry[]; links: string[][] }> {
  const entries: Entry[] = []
  const inodes = new Map<bigint, string[]>()
  const visit = async (rel: string) => {
    const path = rel === '' ? root : join(root, rel)
    const st = await lstat(path, { bigint: true })
    const mode = Number(st.mode)
    const e: Entry = {
      path: rel || '.',
      type: '',
      mode: mode & 0o7777,
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtimeNs: String(st.mtimeNs),
    }
    const names = (await listAttributes(path)).sort()
    if (names.length > 0) {
      e.xattrs = {}
      for (const n of names) e.xattrs[n] = (await getAttribute(path, n))?.toString('hex') ?? ''
    }
    if (st.isFile()) {
      e.type = 'file'
      e.size = Number(st.size)
      e.sha256 = await sha256File(path)
    } else if (st.isDirectory()) e.type = 'dir'
    else if (st.isSymbolicLink()) {
      e.type = 'symlink'
      e.target = await readlink(path)
    } else {
      e.type = st.isCharacterDevice() ? 'char' : st.isBlockDevice() ? 'block' : st.isFIFO() ? 'fifo' : 'other'
      const rdev = Number(st.rdev)
      e.rdev = `${(rdev >> 8) & 0xfff}:${(rdev & 0xff) | ((rdev >> 12) & 0xfff00)}`
    }
    if (!st.isDirectory() && st.nlink > 1n) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), e.path])
    entries.push(e)
    if (st.isDirectory())
      for (const name of (await readdir(path)).sort()) await visit(rel === '' ? name : `${rel}/${name}`)
  }
  await visit('')
  const links = [...inodes.values()].map((g) => g.sort()).sort((a, b) => (a[0]! < b[0]! ? -1 : 1))
  return { entries, links }
}

async function run(cmd: string, args: string[]): Promise<void> {
  const r = await sh(cmd, args)
  if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`)
}

/** Sets a time with nanoseconds, not following symlinks. */
async function touch(path: string, time: string): Promise<void> {
  await run('touch', ['-h', '-d', `@${time}`, path])
}

/** A POSIX ACL in the kernel's xattr form: user::rw- user:1000:r-- group::r-- mask::r-- other::r--. */
function acl(): Buffer {
  const entries: Array<[number, number, number]> = [
    [0x01, 6, 0xffffffff],
    [0x02, 4, 1000],
    [0x04, 4, 0xffffffff],
    [0x10, 4, 0xffffffff],
    [0x20, 4, 0xffffffff],
  ]
  const b = Buffer.alloc(4 + entries.length * 8)
  b.writeUInt32LE(2, 0)
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + i * 8)
    b.writeUInt16LE(perm, 6 + i * 8)
    b.writeUInt32LE(id, 8 + i * 8)
  })
  return b
}

/** A layer tree with every kind of entry erofs holds (sockets aside): data of many sizes around
 *  block boundaries, compressible, incompressible and mostly zeros; many small files in one
 *  directory; 254-byte names; deep directories; hard links (files, a symlink, a fifo); symlinks
 *  short and long; devices and fifos; overlayfs whiteouts and opaque dirs; user, trusted and
 *  security xattrs, shared ones and an ACL; setuid, setgid and sticky modes; owners beyond 16
 *  bits; times with nanoseconds, before 1970 and after 2106. Needs root. */
async function makeRichTree(dir: string): Promise<void> {
  await mkdir(join(dir, 'data'), { recursive: true })
  const text = Buffer.from('all work and no play makes jack a dull boy\n'.repeat(3000))
  for (const size of [0, 1, 100, 4095, 4096, 4097, 8191, 8192, 12289, 65536, 70000]) {
    await writeFile(join(dir, 'data', `text-${size}`), text.subarray(0, size))
    await writeFile(join(dir, 'data', `rand-${size}`), randomBytes(size))
  }
  // Mostly zeros, with data between the holes.
  const sparse = join(dir, 'data', 'sparse')
  await writeFile(sparse, randomBytes(100_000))
  const fd = openSync(sparse, 'r+')
  writeSync(fd, text.subarray(0, 50_000), 0, 50_000, 5_000_000)
  writeSync(fd, randomBytes(3000), 0, 3000, 9_000_000)
  closeSync(fd)
  await truncate(sparse, 12_000_000)
  const mixed: Buffer[] = []
  for (let i = 0; i < 40; i++) mixed.push(i % 3 === 0 ? randomBytes(50_000) : text.subarray(0, 60_000 + i))
  await writeFile(join(dir, 'data', 'mixed'), Buffer.concat(mixed))

  await mkdir(join(dir, 'many'))
  for (let i = 0; i < 2000; i++) {
    await writeFile(
      join(dir, 'many', `f${String(i).padStart(5, '0')}${'n'.repeat(i % 60)}`),
      `file ${i}\n`.repeat(i % 7),
    )
  }
  await mkdir(join(dir, 'long'))
  for (const n of [1, 2, 100, 200, 253, 254])
    await writeFile(join(dir, 'long', 'L'.repeat(n - 1) + String(n % 10)), `${n}\n`)
  await mkdir(join(dir, 'long', 'D'.repeat(254)))
  await writeFile(join(dir, 'long', 'D'.repeat(254), 'E'.repeat(254)), 'deep long\n')
  let deep = join(dir, 'deep')
  for (let i = 0; i < 40; i++) deep = join(deep, `level-${i}`)
  await mkdir(deep, { recursive: true })
  await writeFile(join(deep, 'bottom'), 'bottom\n')

  await mkdir(join(dir, 'links/sub'), { recursive: true })
  await writeFile(join(dir, 'links/a'), 'shared inode\n')
  await link(join(dir, 'links/a'), join(dir, 'links/b'))
  await link(join(dir, 'links/a'), join(dir, 'links/sub/c'))
  await writeFile(join(dir, 'links/big'), text)
  await link(join(dir, 'links/big'), join(dir, 'links/big2'))
  await symlink('a', join(dir, 'links/sym'))
  await link(join(dir, 'links/sym'), join(dir, 'links/sym-hard'))
  await run('mkfifo', [join(dir, 'links/fifo')])
  await link(join(dir, 'links/fifo'), join(dir, 'links/fifo-hard'))
  await symlink('/etc/passwd', join(dir, 'links/abs'))
  await symlink('../nowhere/at/all', join(dir, 'links/dangling'))
  await symlink(`${'x/'.repeat(1900)}end`, join(dir, 'links/long-target'))

  await mkdir(join(dir, 'dev'))
  await run('mknod', [join(dir, 'dev/null'), 'c', '1', '3'])
  await run('mknod', [join(dir, 'dev/loop0'), 'b', '7', '0'])
  await run('mknod', [join(dir, 'dev/bigminor'), 'c', '240', '70000'])
  await run('mkfifo', [join(dir, 'dev/pipe')])

  // Overlay whiteouts and opaque dirs, as a layer's content dir holds them.
  await mkdir(join(dir, 'ovl/opaque'), { recursive: true })
  await run('mknod', [join(dir, 'ovl/gone'), 'c', '0', '0'])
  await setAttribute(join(dir, 'ovl/opaque'), 'user.overlay.opaque', 'y')
  await writeFile(join(dir, 'ovl/opaque/new'), 'new\n')
  await mkdir(join(dir, 'ovl/trusted-opaque'))
  await setAttribute(join(dir, 'ovl/trusted-opaque'), 'trusted.overlay.opaque', 'y')

  await mkdir(join(dir, 'attrs'))
  await writeFile(join(dir, 'attrs/caps'), 'not a program\n')
  await setAttribute(
    join(dir, 'attrs/caps'),
    'security.capability',
    Buffer.from('AQAAAgAgAAAAAAAAAAAAAAAAAAA=', 'base64'),
  )
  await setAttribute(join(dir, 'attrs/caps'), 'user.note', 'hello')
  await setAttribute(join(dir, 'attrs'), 'user.dirnote', Buffer.from([0, 1, 2, 255]))
  await writeFile(join(dir, 'attrs/trusted'), 't\n')
  await setAttribute(join(dir, 'attrs/trusted'), 'trusted.thing', 'value')
  await writeFile(join(dir, 'attrs/many'), 'm\n')
  for (let i = 0; i < 20; i++) await setAttribute(join(dir, 'attrs/many'), `user.k${i}`, 'v'.repeat(i * 7))
  for (let i = 0; i < 5; i++) {
    await writeFile(join(dir, 'attrs', `shared-${i}`), `${i}\n`)
    await setAttribute(join(dir, 'attrs', `shared-${i}`), 'user.common', 'the same on several files')
  }
  await writeFile(join(dir, 'attrs/acl'), 'acl\n')
  await setAttribute(join(dir, 'attrs/acl'), 'system.posix_acl_access', acl())
  await symlink('caps', join(dir, 'attrs/link-with-xattr'))
  await setAttribute(join(dir, 'attrs/link-with-xattr'), 'trusted.onlink', 'l')

  await mkdir(join(dir, 'modes/tmp'), { recursive: true })
  await mkdir(join(dir, 'modes/sgid-dir'))
  await mkdir(join(dir, 'modes/locked'))
  await writeFile(join(dir, 'modes/locked/inside'), 'in a dir without write permission\n')
  for (const [name, mode] of [
    ['setuid', 0o4755],
    ['setgid', 0o2711],
    ['none', 0o000],
  ] as const) {
    await writeFile(join(dir, 'modes', name), `${name}\n`)
    await chmod(join(dir, 'modes', name), mode)
  }
  await chmod(join(dir, 'modes/tmp'), 0o1777)
  await chmod(join(dir, 'modes/sgid-dir'), 0o2775)
  await chmod(join(dir, 'modes/locked'), 0o555)
  await mkdir(join(dir, 'owners'))
  for (const [name, uid, gid] of [
    ['u1000', 1000, 1001],
    ['nobody', 65534, 65534],
    ['big', 100_000, 200_000],
  ] as const) {
    await writeFile(join(dir, 'owners', name), `${name}\n`)
    await chown(join(dir, 'owners', name), uid, gid)
  }
  await chmod(join(dir, 'modes/setuid'), 0o4755)

  const times: Array<[string, string]> = [
    ['data/text-0', '1000000000.123456789'],
    ['data/rand-1', '1000000000.5'],
    ['data/sparse', '1700000000.000000001'],
    ['links/a', '1600000000.999999999'],
    ['links/sym', '1600000001.000001000'],
    ['dev/null', '-1000.25'],
    ['dev/pipe', '-1'],
    ['owners/big', '5000000000.75'],
    ['ovl/gone', '1234567890.987654321'],
    ['modes/locked', '1111111111.111111111'],
    ['many', '1500000000'],
    ['.', '1400000000.4'],
  ]
  for (const [p, t] of times) await touch(join(dir, p), t)
}

/** Extracts `image` with extractErofs and with the kernel, and returns both listings. */
async function bothWays(image: string, opts: { nanosecondTimes?: 'touch' } = {}) {
  const target = await tempDir()
  const t0 = performance.now()
  await extractErofs(image, target, opts)
  const ms = performance.now() - t0
  const mnt = await tempDir()
  await run('mount', ['-t', 'erofs', '-o', 'ro,loop', image, mnt])
  try {
    return { ours: await listing(target), kernel: await listing(mnt), ms }
  } finally {
    await run('umount', [mnt])
  }
}

describe.skipIf(!isRoot)('extractErofs against the kernel (needs root: mknod, mount)', () => {
  it('gives what the kernel shows, in every layout mkfs.erofs 1.5 writes for these images', async () => {
    const src = join(await tempDir(), 'tree')
    await makeRichTree(src)
    const variants: Array<[string, string[]]> = [
      // Upstream stacker's: uncompressed, flat plain and inline.
      ['uncompressed', []],
      // This project's default, and its lz4hc levels.
      ['lz4', ['-zlz4']],
      ['lz4hc', ['-zlz4hc']],
      ['lz4hc 12', ['-zlz4hc,12']],
      // What else mkfs.erofs 1.5 can write for lz4: legacy indexes (without 0PADDING), big
      // pclusters, no inline data, only compact or only extended inodes.
      ['legacy indexes', ['-zlz4', '-Elegacy-compress']],
      ['legacy big pclusters', ['-zlz4hc', '-Elegacy-compress', '-C65536']],
      ['big pclusters', ['-zlz4hc', '-C65536']],
      ['lz4 big pclusters 16K', ['-zlz4', '-C16384']],
      ['no inline data', ['-Enoinline_data']],
      ['compact inodes', ['-zlz4', '-Eforce-inode-compact']],
      ['extended inodes', ['-Eforce-inode-extended']],
    ]
    // Compact inodes have 16-bit owners: mkfs.erofs refuses the 100000:200000 file in that form.
    const compactable = join(await tempDir(), 'tree')
    await run('cp', ['-a', '--no-target-directory', src, compactable])
    await chown(join(compactable, 'owners/big'), 60_000, 60_001)
    for (const [name, args] of variants) {
      const image = join(await tempDir(), 'image.erofs')
      const from = args.includes('-Eforce-inode-compact') ? compactable : src
      await run('mkfs.erofs', ['--quiet', ...args, image, from])
      const { ours, kernel } = await bothWays(image)
      expect(ours.entries.length, name).toBeGreaterThan(2000)
      expect(ours, name).toEqual(kernel)
      expect(ours.links.length, name).toBe(4)
    }
  }, 600_000)

  it('images writeFsImage makes, with and without SOURCE_DATE_EPOCH; the touch fallback for nanoseconds', async () => {
    const src = join(await tempDir(), 'tree')
    await makeRichTree(src)
    for (const opts of [{}, { sourceDateEpoch: 1_500_000_000 }, { compressionLevel: 0 }, { compressionLevel: 9 }]) {
      const r = await writeFsImage(src, await tempDir(), { kind: 'erofs', verity: true, ...opts })
      if (!r) throw new Error('no image')
      const { ours, kernel } = await bothWays(r.file)
      expect(ours, JSON.stringify(opts)).toEqual(kernel)
    }
    // One touch per entry: a small tree with every kind of entry and times before 1970 and after 2106.
    const small = join(await tempDir(), 'small')
    await mkdir(join(small, 'dir'), { recursive: true })
    await writeFile(join(small, 'dir/file'), 'f\n')
    await link(join(small, 'dir/file'), join(small, 'hard'))
    await symlink('dir/file', join(small, 'sym'))
    await run('mkfifo', [join(small, 'fifo')])
    await run('mknod', [join(small, 'whiteout'), 'c', '0', '0'])
    for (const [p, t] of [
      ['dir/file', '1000000000.123456789'],
      ['sym', '1600000001.000001001'],
      ['fifo', '-1000.25'],
      ['whiteout', '5000000000.000000007'],
      ['dir', '-1'],
      ['.', '1400000000.4'],
    ] as const)
      await touch(join(small, p), t)
    const image = join(await tempDir(), 'image.erofs')
    await run('mkfs.erofs', ['--quiet', '-zlz4', image, small])
    const { ours, kernel } = await bothWays(image, { nanosecondTimes: 'touch' })
    expect(ours.entries).toHaveLength(7)
    expect(ours).toEqual(kernel)
  }, 600_000)

  it('streams a 200 MB file in every compression mode this project uses', async () => {
    const src = join(await tempDir(), 'big')
    await mkdir(src)
    // Compressible but not trivially: runs of text between random blocks.
    const out = openSync(join(src, 'file'), 'w')
    const text = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz\n'.repeat(30_000))
    for (let written = 0; written < 200_000_000; ) {
      const piece = written % (3 << 20) === 0 ? randomBytes(1 << 20) : text.subarray(0, 1 << 20)
      const n = Math.min(piece.length, 200_000_000 - written)
      writeSync(out, piece, 0, n)
      written += n
    }
    closeSync(out)
    for (const args of [[], ['-zlz4'], ['-zlz4hc']]) {
      const image = join(await tempDir(), 'image.erofs')
      await run('mkfs.erofs', ['--quiet', ...args, image, src])
      const rssBefore = process.resourceUsage().maxRSS
      const { ours, kernel, ms } = await bothWays(image)
      const grewKiB = process.resourceUsage().maxRSS - rssBefore
      expect(ours, args.join(' ')).toEqual(kernel)
      expect(ours.entries.find((e) => e.path === 'file')?.size).toBe(200_000_000)
      // Data is streamed: extraction holds a few MiB, not the file.
      expect(grewKiB, `max RSS grew by ${grewKiB} KiB`).toBeLessThan(64 * 1024)
      console.log(`200 MB file, mkfs.erofs ${args.join(' ') || '(uncompressed)'}: extracted in ${ms.toFixed(0)} ms`)
    }
  }, 600_000)
})

/** The root directory's first dirent naming `name`: where its nid and name lie in the image. */
function findDirent(image: string, name: string): { nidPos: number; namePos: number } {
  const img = ErofsImage.open(image, { code: 'EXTRACT' })
  try {
    const root = img.inode(img.sb.rootNid)
    const [range] = img.flatRanges(root)
    const block = Buffer.from(img.view(range!.pos, Math.min(range!.length, img.sb.blksz)))
    const count = block.readUInt16LE(8) / 12
    for (let i = 0; i < count; i++) {
      const start = block.readUInt16LE(i * 12 + 8)
      if (block.subarray(start, start + name.length).toString() === name) {
        return { nidPos: range!.pos + i * 12, namePos: range!.pos + start }
      }
    }
    throw new Error(`no entry ${name}`)
  } finally {
    img.close()
  }
}

/** Writes `bytes` at `pos` in `image` and fixes the superblock checksum, so that what is wrong is
 *  only what the test means. */
function patch(image: string, pos: number, bytes: Buffer): void {
  const fd = openSync(image, 'r+')
  try {
    writeSync(fd, bytes, 0, bytes.length, pos)
    sealErofsSuperblock(fd, image, () => {})
  } finally {
    closeSync(fd)
  }
}

describe.skipIf(!isRoot)('malformed erofs images (needs root: mknod)', () => {
  it('fail with one EXTRACT error and leave the target empty', async () => {
    const src = join(await tempDir(), 'tree')
    await mkdir(join(src, 'dir'), { recursive: true })
    for (let i = 0; i < 50; i++) await writeFile(join(src, 'dir', `file-${i}`), `content ${i}\n`.repeat(i * 100))
    await writeFile(join(src, 'victim'), 'v\n')
    await writeFile(join(src, 'zzz'), 'last\n')
    const good = join(await tempDir(), 'good.erofs')
    await run('mkfs.erofs', ['--quiet', '-zlz4', good, src])
    const bytes = await readFile(good)

    const cases: Array<[string, (file: string) => Promise<void>, RegExp]> = [
      ['truncated', (f) => writeFile(f, bytes.subarray(0, Math.floor(bytes.length / 2))), /past the end of the image/],
      [
        'bad magic',
        async (f) => {
          const b = Buffer.from(bytes)
          b.writeUInt32LE(0x12345678, 1024)
          await writeFile(f, b)
        },
        /is not an erofs image/,
      ],
      [
        'bad checksum',
        async (f) => {
          const b = Buffer.from(bytes)
          b[1024 + 48] = b[1024 + 48]! ^ 0xff
          await writeFile(f, b)
        },
        /superblock checksum mismatch/,
      ],
      [
        'dirent out of range',
        async (f) => {
          await writeFile(f, bytes)
          const buf = Buffer.alloc(8)
          buf.writeBigUInt64LE(0xffffffffn)
          patch(f, findDirent(f, 'victim').nidPos, buf)
        },
        /entry "victim": malformed erofs image: inode 4294967295 is out of range/,
      ],
      [
        'name with /',
        async (f) => {
          await writeFile(f, bytes)
          patch(f, findDirent(f, 'victim').namePos + 2, Buffer.from('/'))
        },
        /malformed erofs image: directory inode \d+, block at 0: entry \d+ has a name with "\/" or NUL/,
      ],
    ]
    for (const [name, make, message] of cases) {
      const file = join(await tempDir(), `${name.replaceAll(' ', '-').replace('/', 'slash')}.erofs`)
      await make(file)
      const target = join(await tempDir(), 'target')
      const err = await extractFsImage(file, target, { mediaType: EROFS }).catch((e: unknown) => e)
      expect(err, name).toBeInstanceOf(StackerError)
      expect((err as StackerError).code, name).toBe('EXTRACT')
      expect((err as StackerError).message, name).toMatch(message)
      expect((err as StackerError).message.split('\n'), name).toHaveLength(1)
      expect(await readdir(target), name).toEqual([])
    }

    // A corrupt compressed extent: the file's data is garbled where the kernel would fail too.
    const image = join(await tempDir(), 'garbled.erofs')
    const g = Buffer.from(bytes)
    const img = ErofsImage.open(good, { code: 'EXTRACT' })
    let at = 0
    try {
      const dir = img.inode(img.sb.rootNid)
      for (const block of img.dirents(dir))
        for (const e of block) {
          if (e.name.toString() !== 'dir') continue
          for (const b of img.dirents(img.inode(e.nid)))
            for (const f of b) {
              const inode = img.inode(f.nid)
              if (f.name.toString() === 'file-49') at = [...img.extents(inode)][0]!.pos + 4090
            }
        }
    } finally {
      img.close()
    }
    expect(at).toBeGreaterThan(0)
    g.fill(0xff, at, at + 6)
    await writeFile(image, g)
    const target = join(await tempDir(), 'target')
    const err = await extractFsImage(image, target, { mediaType: EROFS }).catch((e: unknown) => e)
    expect((err as StackerError).code).toBe('EXTRACT')
    expect((err as StackerError).message).toMatch(/entry "dir\/file-49": malformed erofs image: LZ4/)
    expect(await readdir(target)).toEqual([])
  })

  it('refuses layouts it does not read, naming them', async () => {
    const src = join(await tempDir(), 'tree')
    await mkdir(src)
    await writeFile(join(src, 'f'), 'x'.repeat(100_000))
    for (const [args, what] of [
      [['-zlz4hc', '-Eztailpacking'], 'ztailpacking'],
      [['--chunksize=8192'], 'chunk'],
    ] as const) {
      const image = join(await tempDir(), 'image.erofs')
      await run('mkfs.erofs', ['--quiet', ...args, image, src])
      const target = await tempDir()
      await expect(extractErofs(image, target)).rejects.toMatchObject({
        code: 'EXTRACT',
        message: expect.stringContaining(what),
      })
    }
  })
})

describe.skipIf(!isRoot)('openFsImage of erofs without the kernel', () => {
  it('the unsquashfs method extracts with extractErofs, giving what kmount shows', async () => {
    const src = join(await tempDir(), 'tree')
    await makeRichTree(src)
    const r = await writeFsImage(src, await tempDir(), { kind: 'erofs', verity: true })
    if (!r) throw new Error('no image')
    const open = (method: 'unsquashfs' | 'kmount') =>
      openFsImage(r.file, join(tempRoot, method), {
        mediaType: r.mediaType,
        verityRootHash: r.verityRootHash!,
        policy: [method],
      })
    const tempRoot = await tempDir()
    const x = await open('unsquashfs')
    const k = await open('kmount')
    try {
      expect([x.method, k.method]).toEqual(['extract', 'kmount'])
      expect(await listing(x.dir)).toEqual(await listing(k.dir))
    } finally {
      await x.release()
      await k.release()
    }
  }, 300_000)
})
