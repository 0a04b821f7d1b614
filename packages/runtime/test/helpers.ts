import { execFileSync } from 'node:child_process'
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type RunOptions, runContainer } from '../src/index.js'

export const isRoot = process.getuid?.() === 0

export async function tempDir(prefix = 'stacker-runtime-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix))
}

export async function removeDir(dir: string | undefined): Promise<void> {
  if (dir) await rm(dir, { recursive: true, force: true })
}

/** A minimal rootfs: static busybox and its applet symlinks in /bin, nothing else. */
export async function makeBusyboxRootfs(dir: string): Promise<string> {
  await mkdir(join(dir, 'bin'), { recursive: true })
  await copyFile('/bin/busybox', join(dir, 'bin/busybox'))
  execFileSync('chroot', [dir, '/bin/busybox', '--install', '-s', '/bin'])
  return dir
}

export interface Captured {
  exitCode: number
  output: string
  chunks: number
}

/** Runs a shell script in the rootfs with piped output and returns what it printed. */
export async function sh(
  base: Pick<RunOptions, 'rootfs' | 'stateDir'> & Partial<RunOptions>,
  script: string,
): Promise<Captured> {
  const decoder = new TextDecoder()
  let output = ''
  let chunks = 0
  const r = await runContainer({
    env: ['PATH=/bin'],
    stdio: 'pipe',
    ...base,
    args: ['/bin/sh', '-c', script],
    onOutput: (c) => {
      chunks++
      output += decoder.decode(c, { stream: true })
    },
  })
  return { exitCode: r.exitCode, output, chunks }
}

export function runcList(stateDir: string): string {
  return execFileSync('runc', ['--root', stateDir, 'list', '-q'], { encoding: 'utf8' })
}
