import { mkdir, rm } from 'node:fs/promises'
import { execa } from 'execa'

export interface SquashfsEntry {
  /** Absolute path inside the image; the root is `/`. */
  path: string
  type: 'file' | 'directory' | 'symlink' | 'character-device' | 'block-device' | 'fifo' | 'socket'
  /** Permission bits including setuid/setgid/sticky. */
  mode: number
  uid: number
  gid: number
  /** Size for files and directories, link length for symlinks; undefined for devices. */
  size: number | undefined
  major: number | undefined
  minor: number | undefined
  linkname: string | undefined
}

const TYPES: Record<string, SquashfsEntry['type']> = {
  '-': 'file',
  d: 'directory',
  l: 'symlink',
  c: 'character-device',
  b: 'block-device',
  p: 'fifo',
  s: 'socket',
}

function parseMode(s: string): number {
  let m = 0
  const bit = (i: number, ch: string, v: number): void => {
    if (s[i] === ch) m |= v
  }
  bit(1, 'r', 0o400)
  bit(2, 'w', 0o200)
  bit(4, 'r', 0o040)
  bit(5, 'w', 0o020)
  bit(7, 'r', 0o004)
  bit(8, 'w', 0o002)
  const exec = (i: number, x: number, special: number, lower: string, upper: string): void => {
    const c = s[i]
    if (c === 'x' || c === lower) m |= x
    if (c === lower || c === upper) m |= special
  }
  exec(3, 0o100, 0o4000, 's', 'S')
  exec(6, 0o010, 0o2000, 's', 'S')
  exec(9, 0o001, 0o1000, 't', 'T')
  return m
}

// e.g. `crw-r--r-- 0/0                   0,  0 2026-11-27 17:58 squashfs-root/d/.wh.x`
const LINE = /^(\S)(\S{9}) (\d+)\/(\d+)\s+(?:(\d+),\s*(\d+)|(\d+)) \d{4}-\d\d-\d\d \d\d:\d\d squashfs-root(.*)$/

/** Parses `unsquashfs -lln` output (numeric owners). Whiteouts show as character devices 0,0. */
export function parseUnsquashfsListing(text: string): SquashfsEntry[] {
  const out: SquashfsEntry[] = []
  for (const line of text.split('\n')) {
    const m = LINE.exec(line)
    if (!m) continue
    const type = TYPES[m[1]!] ?? 'file'
    let path = m[8]!
    let linkname: string | undefined
    if (type === 'symlink') {
      const i = path.indexOf(' -> ')
      if (i >= 0) {
        linkname = path.slice(i + 4)
        path = path.slice(0, i)
      }
    }
    out.push({
      path: path === '' ? '/' : path,
      type,
      mode: parseMode(m[1]! + m[2]!),
      uid: Number(m[3]),
      gid: Number(m[4]),
      size: m[7] === undefined ? undefined : Number(m[7]),
      major: m[5] === undefined ? undefined : Number(m[5]),
      minor: m[6] === undefined ? undefined : Number(m[6]),
      linkname,
    })
  }
  return out
}

/** Lists a squashfs image (a layer blob) with `unsquashfs -lln`. Throws with its output on failure. */
export async function unsquashfsList(blobPath: string): Promise<SquashfsEntry[]> {
  const r = await execa('unsquashfs', ['-lln', blobPath], { reject: false, all: true })
  if (r.exitCode !== 0) throw new Error(`unsquashfs -lln ${blobPath} failed:\n${r.all}`)
  return parseUnsquashfsListing(r.stdout)
}

/**
 * `veritysetup verify <blob> <blob> <rootHash> --hash-offset=<hashOffset>`: checks a verity tree
 * appended to a filesystem image. Never throws; ok is false on a mismatch or any failure.
 */
export async function veritysetupVerify(
  blob: string,
  rootHash: string,
  hashOffset: number,
): Promise<{ ok: boolean; output: string }> {
  const r = await execa('veritysetup', ['verify', blob, blob, rootHash, `--hash-offset=${hashOffset}`], {
    reject: false,
    all: true,
  })
  return { ok: r.exitCode === 0, output: String(r.all ?? '') }
}

/** Extracts a squashfs blob into dest (replacing it) with `unsquashfs -d`; throws with its output on failure. */
export async function unsquashfsExtract(blob: string, dest: string): Promise<void> {
  await rm(dest, { recursive: true, force: true })
  const r = await execa('unsquashfs', ['-d', dest, blob], { reject: false, all: true })
  if (r.exitCode !== 0) throw new Error(`unsquashfs -d ${dest} ${blob} failed:\n${r.all}`)
}

/**
 * Mounts an erofs blob read-only through the kernel (a loop mount) at mnt, created if missing, runs fn
 * with the mount point and always unmounts, fn's failure included.
 */
export async function withErofsMount<T>(blob: string, mnt: string, fn: (mnt: string) => Promise<T>): Promise<T> {
  await mkdir(mnt, { recursive: true })
  const m = await execa('mount', ['-t', 'erofs', '-o', 'loop,ro', blob, mnt], { reject: false, all: true })
  if (m.exitCode !== 0) throw new Error(`mount -t erofs ${blob} failed:\n${m.all}`)
  try {
    return await fn(mnt)
  } finally {
    await execa('umount', [mnt])
  }
}
