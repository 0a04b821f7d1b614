import { readFileSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, realpath, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, isAbsolute, join, sep } from 'node:path'
import { execa } from 'execa'
import { afterEach } from 'vitest'

export interface TempProject {
  /** Absolute, symlink-free path of the project directory (no ':' in it). */
  dir: string
  /** `dir` joined with a relative path. */
  path(p: string): string
  /** Writes a file (making parent dirs); mode defaults to 0644. */
  write(p: string, content: string | Uint8Array, mode?: number): Promise<void>
  /** Unmounts whatever is still mounted under dir, then removes it. Idempotent. */
  cleanup(): Promise<void>
}

export type ProjectFile = string | Uint8Array | { content: string | Uint8Array; mode: number }

/**
 * A fresh directory under the system temp dir (outside any git repository, so builds there have no
 * git_version unless a test makes one) holding the given files, e.g. `{ 'stacker.yaml': '...' }`.
 */
export async function tempProject(files: Record<string, ProjectFile> = {}): Promise<TempProject> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), 'stacker-e2e-')))
  const path = (p: string): string => (isAbsolute(p) ? p : join(dir, p))
  const write = async (p: string, content: string | Uint8Array, mode = 0o644): Promise<void> => {
    const full = path(p)
    await mkdir(dirname(full), { recursive: true })
    await writeFile(full, content)
    await chmod(full, mode)
  }
  let done = false
  const project: TempProject = {
    dir,
    path,
    write,
    async cleanup() {
      if (done) return
      await unmountUnder(dir)
      await rm(dir, { recursive: true, force: true })
      done = true
    },
  }
  try {
    for (const [p, f] of Object.entries(files)) {
      if (typeof f === 'string' || f instanceof Uint8Array) await write(p, f)
      else await write(p, f.content, f.mode)
    }
  } catch (e) {
    await project.cleanup()
    throw e
  }
  return project
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)))
}

/** Mount points at or under dir in this process's mount namespace, deepest first. */
export function mountsUnder(dir: string): string[] {
  const prefix = dir.endsWith(sep) ? dir : dir + sep
  const out: string[] = []
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4]
    if (mp === undefined) continue
    const p = unescapeMountPath(mp)
    if (p === dir || p.startsWith(prefix)) out.push(p)
  }
  return out.sort((a, b) => b.length - a.length)
}

/** Unmounts everything under dir (lazily if busy). Returns what was mounted. */
export async function unmountUnder(dir: string): Promise<string[]> {
  const found = mountsUnder(dir)
  // A path can be mounted several times over; re-read until nothing is left or nothing changes.
  for (let round = 0; round < 10; round++) {
    const mps = mountsUnder(dir)
    if (mps.length === 0) break
    for (const mp of mps) {
      const r = await execa('umount', [mp], { reject: false })
      if (r.exitCode !== 0) await execa('umount', ['-l', mp], { reject: false })
    }
  }
  return [...new Set(found)]
}

/** Throws (failing the test) if anything is mounted at or under dir. */
export function assertNoMountsUnder(dir: string): void {
  const mps = mountsUnder(dir)
  if (mps.length > 0) throw new Error(`still mounted under ${dir}:\n  ${mps.join('\n  ')}`)
}

/**
 * A tempProject factory whose projects are all removed after each test: registers a vitest afterEach,
 * so call it at a test file's top level (or in a describe). With `checkMounts`, every project is first
 * checked to have nothing left mounted under it, failing the test otherwise; all are removed either way.
 */
export function projectsPerTest(
  opts: { checkMounts?: boolean } = {},
): (files?: Record<string, ProjectFile>) => Promise<TempProject> {
  const live: TempProject[] = []
  afterEach(async () => {
    let failure: unknown
    while (live.length) {
      const p = live.pop()!
      try {
        if (opts.checkMounts) assertNoMountsUnder(p.dir)
      } catch (e) {
        failure ??= e
      }
      await p.cleanup()
    }
    if (failure !== undefined) throw failure
  })
  return async (files = {}) => {
    const p = await tempProject(files)
    live.push(p)
    return p
  }
}

/** Asserts nothing is left mounted under the project, then removes it. */
export async function finishProject(p: TempProject): Promise<void> {
  assertNoMountsUnder(p.dir)
  await p.cleanup()
}
