import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  chown,
  lstat,
  lutimes,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises'
import { link } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { getAttribute, listAttributes, setAttribute } from '@napi-rs/xattr'
import { afterEach, expect } from 'vitest'
import { mountPointsUnder } from '../src/fsimage/index.js'

export const isRoot = process.getuid?.() === 0

export interface RunResult {
  stdout: string
  stderr: string
  exitCode: number
}

/** Runs a tool; never throws. */
export function sh(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: opts.env ?? process.env, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 127) : 0
      resolve({ stdout: String(stdout), stderr: String(stderr), exitCode: code })
    })
  })
}

/** A fresh temp dir per call; after each test, checks that nothing is left mounted or attached to
 *  a loop device below any of them, then removes them. */
export function useTempDirs(): () => Promise<string> {
  const dirs: string[] = []
  afterEach(async () => {
    const taken = dirs.splice(0)
    const leftovers: string[] = []
    for (const d of taken) leftovers.push(...(await mountPointsUnder(d)))
    const loops = isRoot ? (await sh('losetup', ['-a'])).stdout : ''
    for (const d of leftovers.reverse()) await sh('umount', ['-l', d])
    await Promise.all(taken.map((d) => rm(d, { recursive: true, force: true })))
    expect(leftovers, 'mounts left behind').toEqual([])
    for (const d of taken) expect(loops, 'loop devices left behind').not.toContain(d)
  })
  return async () => {
    const d = await mkdtemp(join(tmpdir(), 'stacker-fsimage-test-'))
    dirs.push(d)
    return d
  }
}

export const OLD_TIME = 1_000_000_000
export const NEW_TIME = 1_900_000_000

/** Deterministic pseudo-random bytes (sha256 counter mode), so images of the tree are comparable. */
export function pseudoRandom(size: number, seed: string): Buffer {
  const out = Buffer.alloc(size)
  for (let off = 0, i = 0; off < size; i++) {
    off += createHash('sha256').update(`${seed}:${i}`).digest().copy(out, off)
  }
  return out
}

/** A layer content dir in overlayfs format: files, a hardlink, symlinks, a whiteout (0:0 char
 *  device), an opaque dir, xattrs, ownership, and one overlay bookkeeping xattr that must not end
 *  up in images. Times are fixed: OLD_TIME for some entries, NEW_TIME for the rest. Needs root. */
export async function makeLayerTree(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'a.txt'), 'hello\n')
  await setAttribute(join(dir, 'a.txt'), 'user.test', 'value')
  await writeFile(join(dir, 'big.bin'), pseudoRandom(300_000, 'big'))
  await writeFile(join(dir, 'text.txt'), 'the quick brown fox\n'.repeat(20_000))
  await mkdir(join(dir, 'sub/deeper'), { recursive: true })
  await writeFile(join(dir, 'sub/owned.txt'), 'owned\n', { mode: 0o640 })
  await chown(join(dir, 'sub/owned.txt'), 1000, 1001)
  await writeFile(join(dir, 'sub/deeper/x'), '')
  await link(join(dir, 'a.txt'), join(dir, 'sub/hardlink'))
  await symlink('a.txt', join(dir, 'rel-link'))
  await symlink('/nonexistent/target', join(dir, 'dangling'))
  await mkdir(join(dir, 'empty'))
  await mkdir(join(dir, 'opq'))
  await setAttribute(join(dir, 'opq'), 'user.overlay.opaque', 'y')
  await writeFile(join(dir, 'opq/new.txt'), 'new\n')
  await setAttribute(join(dir, 'sub'), 'user.overlay.impure', 'y')
  const mknod = await sh('mknod', [join(dir, 'sub/gone'), 'c', '0', '0'])
  if (mknod.exitCode !== 0) throw new Error(`mknod: ${mknod.stderr}`)
  await writeFile(join(dir, 'name with spaces & "quotes"'), 'odd\n')
  for (const p of ['a.txt', 'sub/owned.txt', 'empty', 'dangling']) await lutimes(join(dir, p), OLD_TIME, OLD_TIME)
  for (const p of ['big.bin', 'text.txt', 'sub/deeper/x', 'sub/deeper', 'rel-link', 'opq/new.txt', 'opq', 'sub/gone']) {
    await lutimes(join(dir, p), NEW_TIME, NEW_TIME)
  }
  for (const p of ['name with spaces & "quotes"', 'sub', '.']) await lutimes(join(dir, p), NEW_TIME, NEW_TIME)
}

export interface EntrySnapshot {
  path: string
  type: string
  mode: number
  uid: number
  gid: number
  mtime?: number
  size?: number
  sha256?: string
  target?: string
  rdev?: string
  hardlinkOf?: string
  xattrs?: Record<string, string>
}

/** Everything an overlay lower dir's content is made of, per entry, sorted by path. `times`
 *  includes mtimes (whole seconds) for entries below the root. */
export async function snapshotTree(root: string, opts: { times?: boolean } = {}): Promise<EntrySnapshot[]> {
  const out: EntrySnapshot[] = []
  const inodes = new Map<number, string>()
  const visit = async (rel: string) => {
    const path = rel === '' ? root : join(root, rel)
    const st = await lstat(path)
    const e: EntrySnapshot = { path: rel || '.', type: '', mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }
    if (opts.times && rel !== '') e.mtime = Math.floor(st.mtimeMs / 1000)
    if (!st.isSymbolicLink()) {
      const names = (await listAttributes(path)).filter((n) => n.startsWith('user.')).sort()
      if (names.length > 0) {
        e.xattrs = {}
        for (const n of names) e.xattrs[n] = String(await getAttribute(path, n))
      }
    }
    if (st.isFile()) {
      e.type = 'file'
      const first = st.nlink > 1 ? inodes.get(st.ino) : undefined
      if (first) e.hardlinkOf = first
      else {
        if (st.nlink > 1) inodes.set(st.ino, e.path)
        e.size = st.size
        e.sha256 = createHash('sha256')
          .update(await readFile(path))
          .digest('hex')
      }
    } else if (st.isDirectory()) e.type = 'dir'
    else if (st.isSymbolicLink()) {
      e.type = 'symlink'
      e.target = await readlink(path)
    } else if (st.isCharacterDevice()) {
      e.type = 'char'
      e.rdev = `${Math.floor(st.rdev / 256)}:${st.rdev % 256}`
    } else e.type = 'other'
    out.push(e)
    if (st.isDirectory())
      for (const name of (await readdir(path)).sort()) await visit(rel === '' ? name : `${rel}/${name}`)
  }
  await visit('')
  return out
}

/** The snapshot an image of makeLayerTree's tree must show: without bookkeeping xattrs. */
export function withoutBookkeeping(snap: EntrySnapshot[]): EntrySnapshot[] {
  return snap.map((e) => {
    if (!e.xattrs) return e
    const xattrs = Object.fromEntries(Object.entries(e.xattrs).filter(([k]) => k !== 'user.overlay.impure'))
    const { xattrs: _, ...rest } = e
    return Object.keys(xattrs).length > 0 ? { ...rest, xattrs } : rest
  })
}
