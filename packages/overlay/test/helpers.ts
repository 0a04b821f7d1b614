import { execFileSync } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { expect } from 'vitest'
import { listMounts } from '../src/index.js'
import { removeTree } from '../src/mounts.js'

export const isRoot = process.getuid?.() === 0

export async function tempDir(prefix = 'stacker-overlay-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix))
}

/** Asserts nothing is left mounted under `dir`, then removes it (unmounting first if the
 *  assertion failed, so one failing test does not leak mounts into the next). */
export async function cleanDir(dir: string | undefined): Promise<void> {
  if (!dir) return
  const left = await listMounts(dir)
  await removeTree(dir)
  await rm(dir, { recursive: true, force: true })
  expect(left).toEqual([])
}

export function mknodWhiteout(path: string): void {
  execFileSync('mknod', [path, 'c', '0', '0'])
}
