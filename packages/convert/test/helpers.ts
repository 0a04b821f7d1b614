import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { memoryLogger, StackerError } from '@stacker/core'
import { type Layer, parseStackerfileText, substitute } from '@stacker/stackerfile'
import { parse as parseYaml } from 'yaml'
import { afterEach } from 'vitest'
import { type Conversion, convertDockerfile } from '../src/index.js'

const dirs: string[] = []
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

export interface Converted extends Conversion {
  /** The context (and output) directory. */
  dir: string
  /** The stackerfile as `stacker build --substitute-file <subs> --substitute <extra>` reads it. */
  load(extra?: Record<string, string>): Map<string, Layer>
  /** `line: message` of each warning. */
  messages: string[]
}

/** Converts `dockerfile` with a build context holding `files` (path -> content). */
export async function convert(dockerfile: string, files: Record<string, string | Uint8Array> = {}): Promise<Converted> {
  const dir = await mkdtemp(join(tmpdir(), 'stacker-convert-'))
  dirs.push(dir)
  for (const [p, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, p)), { recursive: true })
    await writeFile(join(dir, p), content)
  }
  const c = await convertDockerfile({
    text: dockerfile,
    file: 'Dockerfile',
    contextDir: dir,
    outputDir: dir,
    os: 'linux',
    arch: 'amd64',
  })
  return {
    ...c,
    dir,
    messages: c.warnings.map((w) => `${w.line}: ${w.message}`),
    load: (extra = {}) => loadConverted(c, dir, extra),
  }
}

/** The substitution list of a build with the substitutions file and `extra` on the command line. */
export function substitutions(subsFile: string, extra: Record<string, string> = {}): string[] {
  const fromFile = (parseYaml(subsFile, { version: '1.1' }) ?? {}) as Record<string, unknown>
  const out = Object.entries(extra).map(([k, v]) => `${k}=${v}`)
  for (const [k, v] of Object.entries(fromFile)) if (!(k in extra)) out.push(`${k}=${String(v)}`)
  out.push('STACKER_ROOTFS_DIR=/r', 'STACKER_STACKER_DIR=/s', 'STACKER_OCI_DIR=/o', 'STACKER_WORK_DIR=')
  return out
}

export function loadConverted(c: Conversion, dir: string, extra: Record<string, string> = {}): Map<string, Layer> {
  const logger = memoryLogger()
  const path = join(dir, 'stacker.yaml')
  try {
    const text = substitute(c.stackerYaml, substitutions(c.substitutions, extra), logger, { file: path })
    const sf = parseStackerfileText(text, { path, referenceDir: dir, logger, os: 'linux', arch: 'amd64' })
    return new Map(sf.layers)
  } catch (e) {
    if (e instanceof StackerError)
      throw new Error(`${e.describe()}\n${logger.lines().join('\n')}\n--- stacker.yaml:\n${c.stackerYaml}`)
    throw e
  }
}

/** The error converting `dockerfile` gives, as its one-line message. */
export async function convertError(dockerfile: string): Promise<string> {
  try {
    await convert(dockerfile)
  } catch (e) {
    if (e instanceof StackerError) return `${e.code}: ${e.message}`
    throw e
  }
  throw new Error('the conversion succeeded')
}
