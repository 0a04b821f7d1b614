import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { type SourcePos, StackerError, silentLogger } from '@stacker/core'
import { hostGoArch, hostGoOs } from './layer.js'
import type { Layer, LoadOptions, Stackerfile, StackerfileSet } from './model.js'
import { type ParsedStackerfile, parseStackerfileText } from './parse.js'
import { substitute } from './substitute.js'
import { errnoCode, goIoError, hasScheme, urlScheme } from './util.js'

function isUrl(p: string): boolean {
  const s = urlScheme(p)
  return s === 'http' || s === 'https'
}

async function readSource(pathOrUrl: string): Promise<string> {
  if (isUrl(pathOrUrl)) {
    let resp: Response
    try {
      resp = await fetch(pathOrUrl)
    } catch (e) {
      const why = e instanceof Error ? ((e.cause as Error | undefined)?.message ?? e.message) : String(e)
      throw new StackerError('STACKERFILE', `stackerfile: couldn't download ${pathOrUrl}: ${why}`, { cause: e })
    }
    if (resp.status !== 200) {
      await resp.body?.cancel()
      throw new StackerError(
        'STACKERFILE',
        `stackerfile: couldn't download ${pathOrUrl}: ${`${resp.status} ${resp.statusText}`.trim()}`,
      )
    }
    return await resp.text()
  }
  try {
    return await readFile(pathOrUrl, 'utf8')
  } catch (e) {
    throw new StackerError('STACKERFILE', `couldn't read stacker file: ${goIoError(e, 'open', pathOrUrl)}`, {
      cause: e,
    })
  }
}

/**
 * Reads one stackerfile (a local path, made absolute against the cwd, or an http(s) URL fetched with
 * GET), substitutes it and parses it. Does not load its prerequisites. Throws StackerError:
 * STACKERFILE (with a position when the problem is inside the file) or SUBSTITUTION.
 */
export async function loadStackerfile(pathOrUrl: string, opts: LoadOptions): Promise<Stackerfile> {
  return loadParsed(pathOrUrl, opts)
}

async function loadParsed(pathOrUrl: string, opts: LoadOptions): Promise<ParsedStackerfile> {
  const url = isUrl(pathOrUrl)
  const path = url || hasScheme(pathOrUrl) ? pathOrUrl : resolve(pathOrUrl)
  const raw = await readSource(path)
  const logger = opts.logger ?? silentLogger
  const text = substitute(raw, opts.substitutions, logger, { file: path })
  return parseStackerfileText(text, {
    path,
    referenceDir: url ? process.cwd() : dirname(path),
    requireHash: opts.requireHash ?? false,
    logger,
    os: opts.os ?? hostGoOs(),
    arch: opts.arch ?? hostGoArch(),
  })
}

/**
 * Loads the given stackerfiles and, recursively, their `config.prerequisites`. Each file is read
 * once. Fails on a missing prerequisite (`couldn't find prerequisite %s`), a prerequisite cycle
 * (naming it) and a layer name defined twice across all loaded files.
 */
export async function loadStackerfiles(paths: readonly string[], opts: LoadOptions): Promise<StackerfileSet> {
  const files = new Map<string, ParsedStackerfile>()
  const stack: string[] = []

  const visit = async (path: string, via: SourcePos | undefined): Promise<void> => {
    const onStack = stack.indexOf(path)
    if (onStack >= 0) {
      const chain = [...stack.slice(onStack), path].join(' -> ')
      throw new StackerError('STACKERFILE', `prerequisite cycle: ${chain}`, via ? { pos: via } : {})
    }
    if (files.has(path)) return
    let sf: ParsedStackerfile
    try {
      sf = await loadParsed(path, opts)
    } catch (e) {
      const code = errnoCode((e as { cause?: unknown }).cause)
      if (via && (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR')) {
        throw new StackerError('STACKERFILE', `couldn't find prerequisite ${path}`, { pos: via, cause: e })
      }
      throw e
    }
    files.set(path, sf)
    stack.push(path)
    for (const [i, pre] of sf.prerequisites.entries()) await visit(pre, sf.prerequisitePositions[i])
    stack.pop()
  }
  for (const p of paths) await visit(isUrl(p) || hasScheme(p) ? p : resolve(p), undefined)

  const owner = new Map<string, string>()
  for (const [path, sf] of files) {
    for (const name of sf.fileOrder) {
      const other = owner.get(name)
      if (other !== undefined) {
        throw new StackerError('STACKERFILE', `duplicate layer name: both ${other} and ${path} have ${name}`, {
          pos: sf.layers.get(name)!.pos,
        })
      }
      owner.set(name, path)
    }
  }

  const order = fileBuildOrder(files)
  return {
    files,
    order,
    findLayer(name: string): Layer | undefined {
      const path = owner.get(name)
      return path === undefined ? undefined : files.get(path)?.layers.get(name)
    },
  }
}

/** Topological order, prerequisites first; among files that are ready together, the smallest path first. */
function fileBuildOrder(files: ReadonlyMap<string, Stackerfile>): Stackerfile[] {
  const pending = new Map<string, Set<string>>()
  for (const [path, sf] of files) pending.set(path, new Set(sf.prerequisites.filter((p) => files.has(p))))
  const order: Stackerfile[] = []
  while (pending.size > 0) {
    let next: string | undefined
    for (const [path, deps] of pending) {
      if (deps.size === 0 && (next === undefined || path < next)) next = path
    }
    if (next === undefined) {
      // Loading rejects prerequisite cycles, so this only guards the invariant.
      const [dependent, deps] = [...pending].sort(([a], [b]) => (a < b ? -1 : 1))[0]!
      const prereq = [...deps].sort()[0]!
      throw new StackerError('DEPENDENCY', `edge from ${prereq} to ${dependent} makes a cycle`, {
        detail: { missing: [] },
      })
    }
    pending.delete(next)
    for (const deps of pending.values()) deps.delete(next)
    order.push(files.get(next)!)
  }
  return order
}
