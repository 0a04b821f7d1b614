import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach } from 'vitest'

/** A fresh temp dir removed after the current test. */
export function useTempDirs(): () => Promise<string> {
  const dirs: string[] = []
  afterEach(async () => {
    await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })))
  })
  return async () => {
    const d = await mkdtemp(join(tmpdir(), 'stacker-oci-test-'))
    dirs.push(d)
    return d
  }
}

export interface RunResult {
  stdout: string
  stderr: string
  exitCode: number
}

/** Runs a tool; never throws. */
export function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: opts.cwd, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 127) : 0
      resolve({ stdout: String(stdout), stderr: String(stderr), exitCode: code })
    })
  })
}

export interface TarEntry {
  name: string
  type: 'file' | 'dir'
  content?: string
  mode?: number
}

/** A minimal deterministic ustar archive (mtime 0, uid/gid 0). */
export function makeTar(entries: TarEntry[]): Buffer {
  const blocks: Buffer[] = []
  for (const e of entries) {
    const body = Buffer.from(e.content ?? '', 'utf8')
    const h = Buffer.alloc(512)
    const name = e.type === 'dir' && !e.name.endsWith('/') ? `${e.name}/` : e.name
    h.write(name, 0, 100, 'utf8')
    const octal = (n: number, width: number) => `${n.toString(8).padStart(width - 1, '0')}\0`
    h.write(octal(e.mode ?? (e.type === 'dir' ? 0o755 : 0o644), 8), 100)
    h.write(octal(0, 8), 108)
    h.write(octal(0, 8), 116)
    h.write(octal(e.type === 'file' ? body.length : 0, 12), 124)
    h.write(octal(0, 12), 136)
    h.write('        ', 148)
    h.write(e.type === 'dir' ? '5' : '0', 156)
    h.write('ustar\0', 257)
    h.write('00', 263)
    let sum = 0
    for (const b of h) sum += b
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148)
    blocks.push(h)
    if (e.type === 'file') {
      blocks.push(body)
      const pad = (512 - (body.length % 512)) % 512
      if (pad) blocks.push(Buffer.alloc(pad))
    }
  }
  blocks.push(Buffer.alloc(1024))
  return Buffer.concat(blocks)
}

export async function* chunks(buf: Buffer, size: number): AsyncGenerator<Uint8Array> {
  for (let off = 0; off < buf.length; off += size) yield buf.subarray(off, off + size)
}
