import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { finished } from 'node:stream/promises'
import { getAttribute, listAttributes } from '@napi-rs/xattr'
import { type Digest, Hasher } from '@stacker/core'
import tarStream from 'tar-stream'
import type { BlobSink } from '../src/tar/index.js'

export const isRoot = process.getuid?.() === 0

export async function tempDir(prefix = 'stacker-tar-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix))
}

export async function removeDir(dir: string | undefined): Promise<void> {
  if (dir) await rm(dir, { recursive: true, force: true })
}

export function mknodSync(path: string, kind: 'c' | 'b' | 'p', major = 0, minor = 0, mode = 0o644): void {
  const args = ['-m', mode.toString(8), path, kind]
  if (kind !== 'p') args.push(String(major), String(minor))
  execFileSync('mknod', args)
}

/** A sink that writes to a file and hashes what it gets, as a blob store would. */
export function fileSink(path: string): BlobSink & { state: () => 'open' | 'committed' | 'aborted' } {
  const out = createWriteStream(path)
  out.on('error', () => {}) // a write still in flight when abort() destroys the stream
  const h = new Hasher()
  let state: 'open' | 'committed' | 'aborted' = 'open'
  return {
    state: () => state,
    async write(chunk) {
      h.update(chunk)
      if (!out.write(chunk)) await new Promise((r) => out.once('drain', r))
    },
    async commit(): Promise<{ digest: Digest; size: number }> {
      out.end()
      await finished(out)
      state = 'committed'
      return { digest: h.digest(), size: h.size }
    },
    async abort() {
      out.destroy()
      await rm(path, { force: true })
      state = 'aborted'
    },
  }
}

export interface NodeInfo {
  type: string
  mode: number
  uid: number
  gid: number
  mtime: number
  size?: number
  sha256?: string
  link?: string
  rdev?: number
  xattrs?: string[]
  /** For a multiply-linked inode: the first path (in sorted order) that names it. */
  sameAs?: string
}

/** A comparable picture of a tree: every path below root with its metadata and content hash. */
export async function snapshot(root: string): Promise<Record<string, NodeInfo>> {
  const out: Record<string, NodeInfo> = {}
  const inodes = new Map<string, string>()
  async function walk(dir: string, prefix: string): Promise<void> {
    const names = (await readdir(dir)).sort()
    for (const name of names) {
      const path = join(dir, name)
      const rel = prefix + name
      const st = await lstat(path)
      const info: NodeInfo = {
        type: st.isDirectory()
          ? 'dir'
          : st.isFile()
            ? 'file'
            : st.isSymbolicLink()
              ? 'symlink'
              : st.isCharacterDevice()
                ? 'char'
                : st.isBlockDevice()
                  ? 'block'
                  : st.isFIFO()
                    ? 'fifo'
                    : 'other',
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtime: Math.floor(st.mtimeMs / 1000),
      }
      if (info.type === 'symlink') {
        info.link = await readlink(path)
        delete (info as { mode?: number }).mode // symlink modes are not meaningful on Linux
      } else {
        const names = (await listAttributes(path)).sort()
        const xs: string[] = []
        for (const n of names) xs.push(`${n}=${(await getAttribute(path, n))?.toString('hex')}`)
        if (xs.length) info.xattrs = xs
      }
      if (info.type === 'file') {
        info.size = st.size
        info.sha256 = createHash('sha256')
          .update(await readFile(path))
          .digest('hex')
      }
      if (info.type === 'char' || info.type === 'block') info.rdev = st.rdev
      if (info.type !== 'dir' && st.nlink > 1) {
        const id = `${st.dev}:${st.ino}`
        const first = inodes.get(id)
        if (first) info.sameAs = first
        else inodes.set(id, rel)
      }
      out[rel] = info
      if (info.type === 'dir') await walk(path, `${rel}/`)
    }
  }
  await walk(root, '')
  return out
}

export interface RawEntry {
  name: string
  type?: tarStream.Headers['type']
  linkname?: string
  mode?: number
  uid?: number
  gid?: number
  body?: string | Buffer
  pax?: Record<string, string>
  mtime?: Date
}

/** A tar built with tar-stream, which writes whatever names it is given: for hostile inputs. */
export async function makeTar(entries: RawEntry[]): Promise<Buffer> {
  const pack = tarStream.pack()
  const chunks: Buffer[] = []
  pack.on('data', (c: Buffer) => chunks.push(c))
  const done = new Promise((resolve, reject) => {
    pack.on('end', resolve)
    pack.on('error', reject)
  })
  for (const e of entries) {
    const body = e.body === undefined ? undefined : Buffer.from(e.body)
    const header: tarStream.Headers = {
      name: e.name,
      type: e.type ?? 'file',
      mode: e.mode ?? (e.type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: e.mtime ?? new Date(1_600_000_000_000),
      size: body?.length ?? 0,
    }
    if (e.linkname !== undefined) header.linkname = e.linkname
    if (e.pax) header.pax = e.pax
    await new Promise<void>((resolve, reject) => {
      pack.entry(header, body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve()))
    })
  }
  pack.finalize()
  await done
  return Buffer.concat(chunks)
}

/** Parses a tar with tar-stream (an independent reader) and returns its headers in order. */
export async function listTar(data: Buffer): Promise<tarStream.Headers[]> {
  const ex = tarStream.extract()
  const headers: tarStream.Headers[] = []
  const done = (async () => {
    for await (const entry of ex) {
      headers.push(entry.header)
      entry.resume()
    }
  })()
  ex.end(data)
  await done
  return headers
}

/** Every path below root, for asserting that nothing appeared outside a target. */
export async function listAll(root: string): Promise<string[]> {
  const out: string[] = []
  async function walk(dir: string, prefix: string): Promise<void> {
    for (const name of (await readdir(dir)).sort()) {
      const st = await lstat(join(dir, name))
      out.push(prefix + name)
      if (st.isDirectory()) await walk(join(dir, name), `${prefix}${name}/`)
    }
  }
  await walk(root, '')
  return out
}

export async function* chunksOf(data: Buffer, size = 7000): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size)
}
