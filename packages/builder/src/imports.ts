import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { chmod, lchown, lstat, mkdir, readdir, rename, rm, stat } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { sha256Digest, StackerError, pathExists } from '@stacker/core'
import type { ImportSpec, Layer } from '@stacker/stackerfile'
import type { ImportPart } from './cache.js'
import { builtIdentity, openChain, type BuildContext } from './context.js'
import { hashFile, hashTree } from './hashing.js'
import { copyTree } from './util.js'
import { RUN_SCRIPT } from './run.js'

export interface ResolvedImport {
  spec: ImportSpec
  part: ImportPart
  /** A local file or dir holding the content (absent for stacker:// until materialised). */
  local?: string
  stacker?: { layer: string; path: string }
}

function goFileMode(mode: number, isDir: boolean): string {
  const rwx = 'rwxrwxrwx'
  let s = isDir ? 'd' : '-'
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? rwx[i] : '-'
  return s
}

function checkHash(spec: ImportSpec, actualHex: string): void {
  if (spec.hash && spec.hash.toLowerCase() !== actualHex)
    throw new StackerError(
      'HASH',
      `The requested hash of ${spec.path} import is different than the actual hash: ${spec.hash} != ${actualHex}`,
      { pos: spec.pos },
    )
}

/** Works out what every import of `layer` is, fetching remote ones, without copying anything into
 *  the layer: the result feeds the cache key. */
export async function resolveImports(ctx: BuildContext, layer: Layer): Promise<ResolvedImport[]> {
  const out: ResolvedImport[] = []
  for (const spec of layer.imports) {
    const src = spec.source
    const destPart =
      spec.dest !== undefined ? { dest: `${spec.dest}|${spec.mode ?? ''}|${spec.uid ?? ''}|${spec.gid ?? ''}` } : {}
    if (src.kind === 'http') {
      const file = await download(ctx, spec)
      const hex = (await hashFile(file)).slice('sha256:'.length)
      out.push({ spec, local: file, part: { path: spec.path, kind: 'http', digest: hex, ...destPart } })
    } else if (src.kind === 'stacker') {
      const built = ctx.built.get(src.layer)
      if (!built)
        throw new StackerError('IMPORT', `couldn't find layer ${src.layer} for import ${spec.path}`, { pos: spec.pos })
      out.push({
        spec,
        stacker: { layer: src.layer, path: src.path },
        // The source layer's filesystem by content, so a rebuild of it that changed the file is seen.
        part: { path: spec.path, kind: 'stacker', digest: `${builtIdentity(built)}:${src.path}`, ...destPart },
      })
    } else if (src.kind === 'unsupported') {
      throw new StackerError('IMPORT', `unsupported url scheme ${src.scheme}`, { pos: spec.pos })
    } else {
      let st: Awaited<ReturnType<typeof stat>>
      try {
        st = await stat(spec.path)
      } catch {
        out.push({ spec, part: { path: spec.path, kind: 'missing', digest: '', ...destPart } })
        continue
      }
      if (st.isDirectory()) {
        const tree = await hashTree(spec.path, ctx.hashes)
        out.push({ spec, local: spec.path, part: { path: spec.path, kind: 'dir', digest: tree.digest, ...destPart } })
      } else {
        const content = (await ctx.hashes.fileDigest(spec.path)).slice('sha256:'.length)
        checkHash(spec, content)
        // Upstream hashes content plus the Go mode string, so a mode change is a change.
        const digest = sha256Digest(`${content}${goFileMode(st.mode, false)}`)
        out.push({ spec, local: spec.path, part: { path: spec.path, kind: 'file', digest, ...destPart } })
      }
    }
  }
  return out
}

/** Fetches an http(s) import into the download cache, reusing the cached copy when the server agrees
 *  or cannot be reached (upstream's offline mode), and checks `hash`. */
async function download(ctx: BuildContext, spec: ImportSpec): Promise<string> {
  const { logger } = ctx
  const url = spec.path
  const dir = join(ctx.s.dirs.stackerDir, 'downloads', createHash('sha256').update(url).digest('hex').slice(0, 32))
  const file = join(dir, basename(new URL(url).pathname) || 'index')
  if (await pathExists(file)) {
    let head: Response | undefined
    try {
      head = await fetch(url, { method: 'HEAD', signal: AbortSignal.timeout(15_000) })
    } catch {
      head = undefined
    }
    const remoteSum = head?.headers.get('x-checksum-sha256')?.toLowerCase()
    if (!head?.ok || (!remoteSum && !head.headers.get('content-length'))) {
      logger.info(`Couldn't obtain file info of ${url}, using cached copy`)
      return verifyDownloaded(spec, file)
    }
    const local = (await hashFile(file)).slice('sha256:'.length)
    if (remoteSum && remoteSum === local) {
      logger.info(`using cached copy of ${url}`)
      return verifyDownloaded(spec, file)
    }
    const len = head.headers.get('content-length')
    if (!remoteSum && len !== null && Number(len) === (await stat(file)).size) {
      logger.info(`matched content length of ${url}, taking a leap of faith and using cached copy`)
      return verifyDownloaded(spec, file)
    }
  }
  await mkdir(dir, { recursive: true })
  logger.info(`downloading ${url}`)
  let res: Response
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(600_000) })
  } catch (e) {
    throw new StackerError('IMPORT', `couldn't download ${url}: ${(e as Error).cause ?? (e as Error).message}`, {
      pos: spec.pos,
    })
  }
  if (!res.ok || !res.body)
    throw new StackerError('IMPORT', `couldn't download ${url}: ${res.status} ${res.statusText}`, { pos: spec.pos })
  const tmp = `${file}.part-${process.pid}`
  try {
    await pipeline(Readable.fromWeb(res.body as never), createWriteStream(tmp))
    await rename(tmp, file)
  } finally {
    await rm(tmp, { force: true })
  }
  return verifyDownloaded(spec, file)
}

async function verifyDownloaded(spec: ImportSpec, file: string): Promise<string> {
  if (!spec.hash) return file
  const actual = (await hashFile(file)).slice('sha256:'.length)
  if (actual !== spec.hash)
    throw new StackerError('HASH', `Downloaded file hash does not match. Expected: ${spec.hash} Actual: ${actual}`, {
      pos: spec.pos,
    })
  return file
}

/** Where an import with `dest` lands: the directory it is copied into, and the name inside it
 *  (undefined: the source's contents go straight into the directory). The table is in imports.test.ts. */
export function destPlacement(path: string, dest: string): { dir: string; name: string | undefined } {
  const srcSlash = path.endsWith('/')
  const destSlash = dest.endsWith('/')
  const dir = srcSlash || destSlash ? dest : dirname(dest)
  if (srcSlash) return { dir, name: undefined }
  return { dir, name: destSlash ? basename(path) : basename(dest) }
}

/** Copies a resolved import's content to `target` (a path that must not exist), fetching stacker://
 *  content from the source layer's filesystem. With `contents`, the entries of a dir go into `target`. */
export async function copyImport(
  ctx: BuildContext,
  imp: ResolvedImport,
  target: string,
  contents: boolean,
  opts: { link?: boolean } = {},
): Promise<void> {
  if (imp.local) {
    await copyTree(imp.local, target, { contents, ...(opts.link ? { link: true } : {}) })
    return
  }
  if (!imp.stacker) throw new StackerError('IMPORT', `couldn't find import ${imp.spec.path}`, { pos: imp.spec.pos })
  const src = ctx.built.get(imp.stacker.layer)
  if (!src) throw new StackerError('IMPORT', `couldn't find layer ${imp.stacker.layer}`)
  await openChain(ctx, src.entry.chain)
  const snap = await ctx.store.snapshot(src.entry.chain)
  try {
    const from = join(snap.target, imp.stacker.path)
    if (!(await pathExists(from)))
      throw new StackerError(
        'IMPORT',
        `couldn't import ${imp.spec.path}: no such file or directory in ${imp.stacker.layer}`,
        {
          pos: imp.spec.pos,
        },
      )
    await copyTree(from, target, { contents })
  } finally {
    await snap.release()
  }
}

/** Applies `mode` (permission bits only) and `uid`/`gid` to everything under `p`. */
export async function applyOwnership(p: string, spec: ImportSpec): Promise<void> {
  const walk = async (q: string) => {
    const st = await lstat(q)
    if (spec.uid !== undefined || spec.gid !== undefined) {
      if (spec.uid === undefined || spec.uid >= 0 || spec.gid !== undefined)
        await lchown(q, spec.uid ?? st.uid, spec.gid ?? st.gid)
    }
    if (spec.mode !== undefined && !st.isSymbolicLink() && !st.isDirectory()) await chmod(q, spec.mode & 0o777)
    if (st.isDirectory()) for (const n of await readdir(q)) await walk(join(q, n))
  }
  await walk(p)
}

/** Puts the imports without `dest` into `<stacker-dir>/imports/<layer>/`, seen at /stacker/imports. */
export async function stageImports(
  ctx: BuildContext,
  layer: Layer,
  imports: readonly ResolvedImport[],
): Promise<string> {
  const dir = join(ctx.s.dirs.stackerDir, 'imports', layer.name)
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  for (const imp of imports) {
    if (imp.spec.dest !== undefined) continue
    if (imp.part.kind === 'missing')
      throw new StackerError('IMPORT', `couldn't import ${imp.spec.path}: no such file or directory`, {
        pos: imp.spec.pos,
      })
    const trailing = imp.spec.path.endsWith('/')
    const name = basename(imp.stacker ? imp.stacker.path : (imp.local ?? imp.spec.path))
    if (trailing) await copyImport(ctx, imp, dir, true)
    else {
      const target = join(dir, name)
      await rm(target, { recursive: true, force: true })
      // The staged tree is only ever mounted read-only, so local files are hard-linked, not copied.
      await copyImport(ctx, imp, target, false, { link: true })
    }
  }
  // The run script is written here next; an imported file of that name must not be written through.
  await rm(join(dir, RUN_SCRIPT), { force: true })
  return dir
}

/** The image directory an import with `dest` is copied into (see destPlacement). */
export function destDirOf(imp: ResolvedImport): string {
  return destPlacement(imp.spec.path, imp.spec.dest as string).dir
}

/** Owner and permission bits of a directory of the base image, by its path in the image. */
export interface DirMeta {
  path: string
  mode: number
  uid: number
  gid: number
}

/** The directories on the way to `dir` (itself included) that exist in the filesystem at `root`. */
export async function baseDirMeta(root: string, dir: string): Promise<DirMeta[]> {
  const out: DirMeta[] = []
  let path = ''
  for (const c of dir.split('/').filter((x) => x !== '')) {
    path += `/${c}`
    let st: Awaited<ReturnType<typeof lstat>>
    try {
      st = await lstat(join(root, path))
    } catch {
      break
    }
    if (!st.isDirectory()) break
    out.push({ path, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid })
  }
  return out
}

/** Makes (or reuses) the content dir for an import with `dest`: its own layer, like an overlay_dir.
 *  `dir` is destDirOf(imp) with the base's symlinks resolved; `baseDirs` the directories on the way
 *  there that the base already has, whose owner and mode the layer keeps. */
export async function destImportContent(
  ctx: BuildContext,
  imp: ResolvedImport,
  dir: string,
  baseDirs: readonly DirMeta[] = [],
): Promise<string> {
  const spec = imp.spec
  const dest = spec.dest as string
  if (imp.part.kind === 'missing')
    throw new StackerError('IMPORT', `couldn't import ${spec.path}: no such file or directory`, { pos: spec.pos })
  const { name } = destPlacement(spec.path, dest)
  const id = `imp_${sha256Digest(JSON.stringify([imp.part, spec.mode, spec.uid, spec.gid, dest, spec.path, dir, baseDirs])).slice(7, 39)}`
  await ctx.store.ensureContent(id, async (root) => {
    const targetDir = join(root, dir)
    await mkdir(targetDir, { recursive: true })
    const target = name === undefined ? targetDir : join(targetDir, name)
    await copyImport(ctx, imp, target, name === undefined)
    await applyOwnership(target, spec)
    for (const d of baseDirs) {
      await lchown(join(root, d.path), d.uid, d.gid)
      await chmod(join(root, d.path), d.mode)
    }
  })
  return id
}
