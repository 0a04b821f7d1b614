// The build corpus: while the e2e suite runs, stacker() records each successful `build` or
// `recursive-build` that leaves --jobs to its default (the command line, the environment it adds and a
// copy of the input files), so replay/jobs.test.ts can build every recorded stackerfile again with
// `--jobs 1` and with the default and compare the outputs. A test that adds a stackerfile is covered
// without being listed anywhere.
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { appendFile, lstat, mkdir, readdir, readFile, readlink, rename, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve, sep } from 'node:path'
import { execa } from 'execa'
import type { BuildPlan } from './build-plan.js'
import { isBuildCommand, parseStackerArgs, stackerDirs } from './stacker-args.js'

/** A regular file bigger than this is left out of a recording (and the recording is then not replayed). */
export const FILE_CAP = 64 * 1024 * 1024
/** Past this many bytes of regular files in one recording, further files are left out. */
export const RECORDING_CAP = 256 * 1024 * 1024

/** A directory a recorded build read or wrote, restored at a fresh path by the replay. */
export interface CorpusRoot {
  /** Absolute path at recording time. */
  path: string
  /** The tar of its content in the entry dir; null when the path did not exist (the build made it)
   *  or the entry is not archived. */
  archive: string | null
}

/** What a corpus entry replays: `recipe.json` of an entry dir. */
export interface CorpusRecipe {
  args: string[]
  /** What the test added to the environment; null removes a variable. */
  env: Record<string, string | null>
  input: string
  cwd: string
  /** roots[0] holds cwd; the others are temp dirs the command line, environment or inputs name. */
  roots: CorpusRoot[]
  /** Inputs not recorded, with why. A recording with any is not replayed (it is listed as such). */
  left: Array<{ path: string; reason: string }>
  /** What the replay needs to know, found when the build started; error when the stackerfiles
   *  could not be read although the build succeeded. */
  plan: BuildPlan | { error: string }
  /** Whether the roots' content is kept: only when the plan finds something to replay (two
   *  independent layers) or failed, and no other entry is a variant of the same build. */
  archived: boolean
  /** Names the build without the values of its substitutions and its other inputs' content (see
   *  variantKey); null when the plan failed or finds nothing to replay. */
  variant: string | null
  /** The entry already archived for the same variant, which the replay builds instead of this one. */
  variantOf: string | null
}

/** One test's use of an entry: `origins/*.json`. */
export interface CorpusOrigin {
  /** The test file, relative to the repository root's test-e2e dir. */
  file: string
  test: string
  /** How many successful recorded builds the same project dir had before this one, in that test's worker. */
  seq: number
}

export const RECIPE = 'recipe.json'
export const ORIGINS = 'origins'
/** Recording failures, one JSON file each, in the corpus dir: the replay fails while there are any. */
export const ERRORS = 'errors'
/** Milliseconds each recording took, one line per recorded build, successful or not. */
export const TIMING = 'timing.log'
/** One file per variant (see variantKey) in the corpus dir, holding the id of the entry archived for it. */
export const VARIANTS = 'variants'

// The e2e helpers make every temp dir with this prefix (tempProject, registries, servers, tests' own
// mkdtemp calls), so a path that names one of them is a path into a test's inputs.
const TMP_PREFIX = join(tmpdir(), 'stacker-e2e-')
const TMP_REF = new RegExp(`${TMP_PREFIX.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}[A-Za-z0-9._-]+`, 'g')

/** The temp dirs (top level under the system tmp dir) that `text` names. */
export function tempDirRefs(text: string): string[] {
  return [...new Set(text.match(TMP_REF) ?? [])]
}

/** The top-level temp dir holding `p`, or p itself when it is not under one. */
function rootOf(p: string): string {
  if (!p.startsWith(TMP_PREFIX)) return p
  const i = p.indexOf(sep, TMP_PREFIX.length)
  return i < 0 ? p : p.slice(0, i)
}

interface Listing {
  /** Relative paths to archive ('.' first), in walk order. */
  members: string[]
  /** One line per member: what the dedupe key hashes (no times). */
  lines: string[]
  refs: string[]
  left: Array<{ path: string; reason: string }>
}

async function fileDigest(path: string, size: number): Promise<{ digest: string; text: string | undefined }> {
  if (size <= 1024 * 1024) {
    const buf = await readFile(path)
    const text = buf.includes(0) ? undefined : buf.toString('utf8')
    return { digest: createHash('sha256').update(buf).digest('hex'), text }
  }
  const h = createHash('sha256')
  for await (const c of createReadStream(path)) h.update(c as Buffer)
  return { digest: h.digest('hex'), text: undefined }
}

/**
 * Lists what a root holds, leaving out the build's stacker and roots dirs, stacker's state dirs of other
 * builds (a stacker dir has `storage.type`, a roots dir `.store`), mounts and sockets. Files that vanish
 * while being read are left out: a test may be changing its project while a build runs.
 */
async function walk(root: string, outputs: ReadonlySet<string>, budget: { bytes: number }): Promise<Listing> {
  const out: Listing = { members: [], lines: [], refs: [], left: [] }
  const top = await lstat(root)
  const links = new Map<string, string>()
  const visit = async (abs: string, rel: string): Promise<void> => {
    let st: Awaited<ReturnType<typeof lstat>>
    try {
      st = await lstat(abs)
    } catch {
      return
    }
    const meta = `${rel}\0${st.mode}\0${st.uid}\0${st.gid}`
    if (st.isDirectory()) {
      if (rel !== '.' && outputs.has(abs)) return
      if (st.dev !== top.dev) {
        out.left.push({ path: abs, reason: 'a mount point' })
        return
      }
      let names: string[]
      try {
        names = (await readdir(abs)).sort()
      } catch {
        return
      }
      if (rel !== '.' && (names.includes('storage.type') || names.includes('.store'))) return
      out.members.push(rel)
      out.lines.push(meta)
      for (const n of names) await visit(join(abs, n), rel === '.' ? n : `${rel}/${n}`)
    } else if (st.isFile()) {
      // A hard link of a file already listed costs nothing more (tar stores it as a link).
      const seen = links.get(`${st.dev}:${st.ino}`)
      if (seen !== undefined) {
        out.members.push(rel)
        out.lines.push(`${meta}\0${seen}`)
        return
      }
      if (st.size > FILE_CAP || budget.bytes + st.size > RECORDING_CAP) {
        out.left.push({ path: abs, reason: `${st.size} bytes, over the recording's size cap` })
        return
      }
      let d: Awaited<ReturnType<typeof fileDigest>>
      try {
        d = await fileDigest(abs, st.size)
      } catch {
        return
      }
      budget.bytes += st.size
      if (st.nlink > 1) links.set(`${st.dev}:${st.ino}`, d.digest)
      if (d.text !== undefined) out.refs.push(...tempDirRefs(d.text))
      out.members.push(rel)
      out.lines.push(`${meta}\0${d.digest}`)
    } else if (st.isSymbolicLink()) {
      let target: string
      try {
        target = await readlink(abs)
      } catch {
        return
      }
      out.refs.push(...tempDirRefs(resolve(abs, '..', target)))
      out.members.push(rel)
      out.lines.push(`${meta}\0${target}`)
    } else if (st.isSocket()) {
      out.left.push({ path: abs, reason: 'a socket' })
    } else {
      out.members.push(rel)
      out.lines.push(`${meta}\0${st.rdev}`)
    }
  }
  await visit(root, '.')
  return out
}

/** Replaces each root's path by a placeholder, so one stackerfile recorded from two dirs is one entry. */
function normalize(text: string, roots: readonly string[]): string {
  return text.replace(TMP_REF, (m) => {
    const i = roots.indexOf(m)
    return i < 0 ? m : `<root${i}>`
  })
}

/**
 * What makes builds variants of one another: the same stackerfiles (text before substitution, temp
 * dir names normalized), the same command and options, substitution names and environment; only
 * the substitutions' values and the content of the other inputs may differ (a test rebuilding after
 * changing an imported file, the same stackerfile built once per round). --jobs decides what runs
 * at once from the stackerfiles' layers and options, so one of them is replayed for all.
 */
async function variantKey(
  parsed: ReturnType<typeof parseStackerArgs>,
  env: Record<string, string | null>,
  roots: readonly string[],
  stackerfiles: readonly string[],
): Promise<string> {
  const files: Array<[string, string]> = []
  for (const f of stackerfiles) files.push([normalize(f, roots), normalize(await readFile(f, 'utf8'), roots)])
  const options = [...parsed.options]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, vs]) => [k, vs.map((v) => (k === '--substitute' ? v.split('=')[0] : normalize(v, roots)))])
  return createHash('sha256')
    .update(
      JSON.stringify({
        command: parsed.command,
        globals: [...parsed.globals].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, normalize(v, roots)]),
        options,
        env: Object.entries(env)
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([k, v]) => [k, v === null ? null : normalize(v, roots)]),
        files,
      }),
    )
    .digest('hex')
    .slice(0, 32)
}

export interface Recording {
  /** Keeps the recording if the build succeeded, drops it otherwise. Never throws. */
  finish(exitCode: number): Promise<void>
}

// Successful recordings per project dir in this worker, for CorpusOrigin.seq.
const recordedIn = new Map<string, number>()

async function reportError(corpusDir: string, args: readonly string[], e: unknown): Promise<void> {
  await mkdir(join(corpusDir, ERRORS), { recursive: true })
  const msg = e instanceof Error ? (e.stack ?? e.message) : String(e)
  await writeFile(
    join(corpusDir, ERRORS, `${randomBytes(8).toString('hex')}.json`),
    `${JSON.stringify({ args, error: msg }, null, 2)}\n`,
  )
}

/**
 * Starts recording a stacker invocation, before it runs: returns undefined for commands the corpus
 * does not hold (not a build, or --jobs given). A failure to record is written to the corpus's errors
 * dir, never thrown: the replay reports it, the test that ran the build is not failed for it.
 */
export async function startRecording(
  corpusDir: string,
  args: readonly string[],
  opts: { cwd: string; env: Record<string, string | undefined>; input: string; origin: Omit<CorpusOrigin, 'seq'> },
): Promise<Recording | undefined> {
  const parsed = parseStackerArgs(args)
  // --order-only builds nothing, so there is nothing to compare.
  if (!isBuildCommand(parsed) || parsed.options.has('--jobs') || parsed.options.has('--order-only')) return undefined
  const started = performance.now()
  let rec: Recording
  try {
    rec = await snapshot(corpusDir, args, opts, parsed)
  } catch (e) {
    await reportError(corpusDir, args, e)
    return undefined
  }
  const before = performance.now() - started
  return {
    async finish(exitCode) {
      const t = performance.now()
      await rec.finish(exitCode)
      // What recording adds to the e2e run, summed up by the replay's summary.
      await appendFile(join(corpusDir, TIMING), `${Math.round(before + performance.now() - t)}\n`).catch(() => {})
    },
  }
}

async function snapshot(
  corpusDir: string,
  args: readonly string[],
  opts: { cwd: string; env: Record<string, string | undefined>; input: string; origin: Omit<CorpusOrigin, 'seq'> },
  parsed: ReturnType<typeof parseStackerArgs>,
): Promise<Recording> {
  const cwd = resolve(opts.cwd)
  // Recording copies the cwd's temp dir; a build elsewhere (the repository, say) has no bounded inputs.
  if (!cwd.startsWith(TMP_PREFIX)) throw new Error(`the build runs in ${cwd}, not in a ${TMP_PREFIX}* temp dir`)
  const env: Record<string, string | null> = {}
  for (const [k, v] of Object.entries(opts.env)) env[k] = v ?? null
  const dirs = stackerDirs(parsed, cwd, { ...process.env, ...opts.env })
  // The build's cache and filesystem store are left out, so the replay builds every layer; its OCI
  // layout is kept: the build adds to what it holds and may read it (an image put there as a base).
  const outputs = new Set([dirs.stackerDir, dirs.rootsDir])

  // roots[0] holds cwd; then every temp dir the command line, the environment or a recorded file
  // names (an import source in another temp dir, a CA file), transitively.
  const roots: string[] = []
  const pending = [
    cwd,
    ...[...args, ...Object.values(env), opts.input].flatMap((v) => (v === null ? [] : tempDirRefs(v))),
  ]
  const listings = new Map<string, Listing | null>()
  const budget = { bytes: 0 }
  while (pending.length > 0) {
    const root = rootOf(pending.shift() as string)
    if (roots.includes(root)) continue
    roots.push(root)
    const kind = await lstat(root).then(
      (st) => (st.isDirectory() ? 'dir' : 'other'),
      () => 'absent',
    )
    if (kind === 'other') throw new Error(`${root} is named by the build and is not a directory`)
    const l = kind === 'dir' ? await walk(root, outputs, budget) : null
    listings.set(root, l)
    if (l) pending.push(...l.refs)
  }

  const key = createHash('sha256')
    .update(
      JSON.stringify({
        args: args.map((a) => normalize(a, roots)),
        env: Object.entries(env).map(([k, v]) => [k, v === null ? null : normalize(v, roots)]),
        input: normalize(opts.input, roots),
        cwd: normalize(cwd, roots),
        roots: roots.map((r) => listings.get(r)?.lines.map((l) => normalize(l, roots)) ?? null),
      }),
    )
    .digest('hex')
    .slice(0, 32)
  const entryDir = join(corpusDir, key)
  let staged: string | undefined
  let recipe: CorpusRecipe | undefined
  let variant: string | null = null
  const exists = await lstat(entryDir).then(
    () => true,
    () => false,
  )
  if (!exists) {
    staged = join(corpusDir, `.tmp-${randomBytes(8).toString('hex')}`)
    await mkdir(join(staged, ORIGINS), { recursive: true })
    // Loaded only by workers that record a build: it brings in the builder.
    const { planBuild } = await import('./build-plan.js')
    const plan = await planBuild(parsed, cwd, { ...process.env, ...opts.env }, roots).catch((e: unknown) => ({
      error: e instanceof Error ? e.message : String(e),
    }))
    variant =
      'error' in plan || plan.independent === undefined ? null : await variantKey(parsed, env, roots, plan.stackerfiles)
    // A variant already kept is not archived again (finish() settles a race between two builds).
    const variantOf =
      variant === null ? null : await readFile(join(corpusDir, VARIANTS, variant), 'utf8').catch(() => null)
    const archived = ('error' in plan || plan.independent !== undefined) && variantOf === null
    recipe = {
      args: [...args],
      env,
      input: opts.input,
      cwd,
      roots: [],
      left: [],
      plan,
      archived,
      variant,
      variantOf,
    }
    for (const [i, root] of roots.entries()) {
      const l = listings.get(root)
      if (!l || !archived) {
        recipe.roots.push({ path: root, archive: null })
        continue
      }
      const archive = `root-${i}.tar`
      const list = join(staged, `root-${i}.list`)
      await writeFile(list, l.members.map((m) => `${m}\0`).join(''))
      const t = await execa(
        'tar',
        [
          '--create',
          '--file',
          join(staged, archive),
          '--directory',
          root,
          '--null',
          '--no-recursion',
          '--files-from',
          list,
          '--numeric-owner',
          '--sparse',
          '--xattrs',
          '--xattrs-include=*',
        ],
        { reject: false, all: true },
      )
      await rm(list)
      // Exit 1 is "a file changed as it was read": a test may be writing its project while a build runs.
      if (t.exitCode !== 0 && t.exitCode !== 1) throw new Error(`tar of ${root} failed: ${t.all}`)
      recipe.roots.push({ path: root, archive })
      recipe.left.push(...l.left)
    }
    await writeFile(join(staged, RECIPE), `${JSON.stringify(recipe, null, 2)}\n`)
  }

  return {
    async finish(exitCode) {
      try {
        if (exitCode !== 0) return
        const seq = recordedIn.get(cwd) ?? 0
        recordedIn.set(cwd, seq + 1)
        if (staged !== undefined && recipe?.archived && variant !== null) {
          // The first successful build of a variant keeps its archive; a later one, recorded while
          // the first was running, keeps only its recipe.
          await mkdir(join(corpusDir, VARIANTS), { recursive: true })
          try {
            await writeFile(join(corpusDir, VARIANTS, variant), key, { flag: 'wx' })
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
            const variantOf = await readFile(join(corpusDir, VARIANTS, variant), 'utf8')
            for (const r of recipe.roots) if (r.archive !== null) await rm(join(staged, r.archive))
            recipe = {
              ...recipe,
              archived: false,
              variantOf,
              roots: recipe.roots.map((r) => ({ ...r, archive: null })),
              left: [],
            }
            await writeFile(join(staged, RECIPE), `${JSON.stringify(recipe, null, 2)}\n`)
          }
        }
        if (staged !== undefined) {
          try {
            await rename(staged, entryDir)
            staged = undefined
          } catch (e) {
            // Another worker recorded the same entry first.
            const code = (e as NodeJS.ErrnoException).code
            if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e
          }
        }
        const origin: CorpusOrigin = { ...opts.origin, seq }
        await mkdir(join(entryDir, ORIGINS), { recursive: true })
        await writeFile(
          join(entryDir, ORIGINS, `${randomBytes(8).toString('hex')}.json`),
          `${JSON.stringify(origin)}\n`,
        )
      } catch (e) {
        await reportError(corpusDir, args, e).catch(() => {})
      } finally {
        if (staged !== undefined) await rm(staged, { recursive: true, force: true })
      }
    },
  }
}
