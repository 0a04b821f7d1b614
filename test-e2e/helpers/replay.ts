// Replays corpus entries (helpers/corpus.ts) for replay/jobs.test.ts: restores an entry's inputs at
// fresh paths and compares the OCI layouts its builds write.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { execa } from 'execa'
import { type CorpusOrigin, type CorpusRecipe, ERRORS, ORIGINS, RECIPE, TIMING } from './corpus.js'
import { blobPath, type Descriptor, type OciIndex, type OciManifest, REF_NAME, tarFileEntries } from './oci.js'
import { stackerDirs, parseStackerArgs, type StackerArgs, type StackerDirs } from './stacker-args.js'
import { unmountUnder } from './temp-project.js'

export interface CorpusEntry {
  id: string
  dir: string
  recipe: CorpusRecipe
  /** Every recording of it, the earliest-numbered first. */
  origins: CorpusOrigin[]
}

/** The entries of a corpus dir, in id order, the recording errors written there, and how many builds
 *  were recorded in how many milliseconds. */
export function readCorpus(corpusDir: string): {
  entries: CorpusEntry[]
  errors: string[]
  recordings: { count: number; ms: number }
} {
  const entries: CorpusEntry[] = []
  const errors: string[] = []
  const recordings = { count: 0, ms: 0 }
  if (!existsSync(corpusDir)) return { entries, errors, recordings }
  for (const name of readdirSync(corpusDir).sort()) {
    const dir = join(corpusDir, name)
    if (name === TIMING) {
      for (const line of readFileSync(dir, 'utf8').split('\n').filter(Boolean)) {
        recordings.count++
        recordings.ms += Number(line)
      }
      continue
    }
    if (name === ERRORS) {
      for (const f of readdirSync(dir).sort()) errors.push(readFileSync(join(dir, f), 'utf8'))
      continue
    }
    if (name.startsWith('.') || !existsSync(join(dir, RECIPE))) continue
    const recipe = JSON.parse(readFileSync(join(dir, RECIPE), 'utf8')) as CorpusRecipe
    const origins = readdirSync(join(dir, ORIGINS))
      .map((f) => JSON.parse(readFileSync(join(dir, ORIGINS, f), 'utf8')) as CorpusOrigin)
      .sort((a, b) => a.seq - b.seq || a.file.localeCompare(b.file) || a.test.localeCompare(b.test))
    entries.push({ id: name, dir, recipe, origins })
  }
  return { entries, errors, recordings }
}

/** `file > test` of an entry's first recording, and how many more there were. */
export function entryLabel(e: CorpusEntry): string {
  const o = e.origins[0]
  const more = e.origins.length > 1 ? ` (+${e.origins.length - 1} more)` : ''
  return `${o ? `${o.file} > ${o.test}${o.seq > 0 ? ` [build ${o.seq + 1} in its dir]` : ''}` : '?'}${more} {${e.id.slice(0, 8)}}`
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')

/** An entry's inputs restored at fresh paths: the recorded command rewritten to use them. */
export interface Restored {
  /** Recorded root path -> its replay path. */
  paths: Map<string, string>
  args: string[]
  env: Record<string, string | undefined>
  input: string
  cwd: string
  parsed: StackerArgs
  dirs: StackerDirs
  /** Rewrites recorded paths to their replay paths. */
  rewrite(text: string): string
  /** Empties every root and extracts the recorded content again (a build may write into its binds). */
  reset(): Promise<void>
  /** Unmounts what is left under the roots and removes them. */
  cleanup(): Promise<void>
}

/**
 * Makes a fresh dir for each recorded root, next to where it was and with a name of the same length
 * (mkdtemp with the recorded name's prefix), so a recorded path and its replacement differ only in
 * their random part. Nothing is extracted until reset().
 */
export async function restore(e: CorpusEntry): Promise<Restored> {
  const paths = new Map<string, string>()
  const made: string[] = []
  const cleanup = async () => {
    for (const p of made) {
      await unmountUnder(p)
      await rm(p, { recursive: true, force: true })
    }
  }
  try {
    for (const r of e.recipe.roots) {
      const name = basename(r.path)
      const p = await mkdtemp(join(dirname(r.path), name.length > 6 ? name.slice(0, -6) : `${name}-`))
      made.push(p)
      paths.set(r.path, p)
    }
  } catch (err) {
    await cleanup()
    throw err
  }
  const re = new RegExp(
    [...paths.keys()]
      .sort((a, b) => b.length - a.length)
      .map((p) => `${escapeRe(p)}(?![A-Za-z0-9._-])`)
      .join('|'),
    'g',
  )
  const rewrite = (text: string) => text.replace(re, (m) => paths.get(m) ?? m)
  const env: Record<string, string | undefined> = {}
  for (const [k, v] of Object.entries(e.recipe.env)) env[k] = v === null ? undefined : rewrite(v)
  const args = e.recipe.args.map(rewrite)
  const cwd = rewrite(e.recipe.cwd)
  const parsed = parseStackerArgs(args)
  const dirs = stackerDirs(parsed, cwd, { ...process.env, ...env })
  return {
    paths,
    args,
    env,
    input: rewrite(e.recipe.input),
    cwd,
    parsed,
    dirs,
    rewrite,
    async reset() {
      for (const r of e.recipe.roots) {
        const p = paths.get(r.path) as string
        await unmountUnder(p)
        await rm(p, { recursive: true, force: true })
        // A root that did not exist when the build was recorded does not exist when it is replayed.
        if (r.archive === null) continue
        await mkdir(p)
        const t = await execa(
          'tar',
          [
            '--extract',
            '--file',
            join(e.dir, r.archive),
            '--directory',
            p,
            '--numeric-owner',
            '--same-owner',
            '--same-permissions',
            '--xattrs',
            '--xattrs-include=*',
          ],
          { reject: false, all: true },
        )
        if (t.exitCode !== 0) throw new Error(`extracting ${r.archive} of ${e.id} failed: ${t.all}`)
        await rewriteTree(p, rewrite)
      }
    },
    cleanup,
  }
}

// A blob of an OCI layout is named by its digest: rewriting one would make it corrupt.
const BLOB = /\/blobs\/[a-z0-9]+\/[0-9a-f]{32,}$/

/** Rewrites recorded paths in the text files under dir (up to 1 MiB, no NUL byte, not an OCI blob),
 *  keeping their times. */
async function rewriteTree(dir: string, rewrite: (s: string) => string): Promise<void> {
  for (const name of await readdir(dir)) {
    const p = join(dir, name)
    const st = await lstat(p)
    if (st.isDirectory()) await rewriteTree(p, rewrite)
    else if (st.isFile() && st.size <= 1024 * 1024 && !BLOB.test(p)) {
      const buf = await readFile(p)
      if (buf.includes(0)) continue
      const text = buf.toString('utf8')
      const out = rewrite(text)
      if (out === text) continue
      await writeFile(p, out)
      await utimes(p, st.atime, st.mtime)
    }
  }
}

/** The bytes of index.json and of every manifest and config it references, by digest. */
export interface LayoutJson {
  index: Buffer
  blobs: Map<string, Buffer>
  tags: string[]
}

export async function readLayoutJson(layout: string): Promise<LayoutJson> {
  const index = await readFile(join(layout, 'index.json'))
  const blobs = new Map<string, Buffer>()
  const parsed = JSON.parse(index.toString('utf8')) as OciIndex
  for (const m of parsed.manifests) {
    const mb = await readFile(blobPath(layout, m.digest))
    blobs.set(m.digest, mb)
    const manifest = JSON.parse(mb.toString('utf8')) as OciManifest
    blobs.set(manifest.config.digest, await readFile(blobPath(layout, manifest.config.digest)))
  }
  return { index, blobs, tags: parsed.manifests.map((m) => m.annotations?.[REF_NAME] ?? '?') }
}

/** Per tag, in index order: the manifest and what it points at. */
export interface ImageView {
  tag: string
  manifest: Descriptor
  config: Descriptor
  layers: Descriptor[]
  configJson: Record<string, unknown>
}

export async function imageViews(layout: string): Promise<ImageView[]> {
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as OciIndex
  const out: ImageView[] = []
  for (const m of index.manifests) {
    const manifest = JSON.parse(await readFile(blobPath(layout, m.digest), 'utf8')) as OciManifest
    out.push({
      tag: m.annotations?.[REF_NAME] ?? '?',
      manifest: m,
      config: manifest.config,
      layers: manifest.layers,
      configJson: JSON.parse(await readFile(blobPath(layout, manifest.config.digest), 'utf8')) as Record<
        string,
        unknown
      >,
    })
  }
  return out
}

const isTarLayer = (d: Descriptor) => /\.tar(\+gzip|\+zstd)?$/.test(d.mediaType)

/** A tar layer's entries by name: each field as a string, mtime and content included. */
export async function tarListing(layout: string, d: Descriptor): Promise<Map<string, Record<string, string>>> {
  const out = new Map<string, Record<string, string>>()
  const { createHash } = await import('node:crypto')
  for (const e of await tarFileEntries(blobPath(layout, d.digest), { withContent: true })) {
    out.set(e.name, {
      type: e.type,
      mode: String(e.mode),
      uid: String(e.uid),
      gid: String(e.gid),
      size: String(e.size),
      mtime: String(e.mtime),
      linkname: String(e.linkname),
      dev: `${e.devmajor}:${e.devminor}`,
      pax: JSON.stringify(e.pax ?? {}),
      content: createHash('sha256')
        .update(e.content ?? Buffer.alloc(0))
        .digest('hex'),
    })
  }
  return out
}

/** Differences between two layouts' images, described for a failure message (empty when the same). */
export async function describeDifferences(a: string, b: string, labels: [string, string]): Promise<string[]> {
  const [va, vb] = [await imageViews(a), await imageViews(b)]
  const out: string[] = []
  const tagsA = va.map((v) => v.tag)
  const tagsB = vb.map((v) => v.tag)
  if (tagsA.join('\n') !== tagsB.join('\n'))
    out.push(`tags: ${labels[0]} [${tagsA.join(', ')}], ${labels[1]} [${tagsB.join(', ')}]`)
  for (const x of va) {
    const y = vb.find((v) => v.tag === x.tag)
    if (!y || y.manifest.digest === x.manifest.digest) continue
    out.push(`${x.tag}: manifest ${x.manifest.digest} vs ${y.manifest.digest}`)
    if (x.config.digest !== y.config.digest) {
      for (const k of new Set([...Object.keys(x.configJson), ...Object.keys(y.configJson)])) {
        const [s, t] = [JSON.stringify(x.configJson[k]), JSON.stringify(y.configJson[k])]
        if (s !== t) out.push(`  config.${k}: ${s} vs ${t}`)
      }
    }
    for (let i = 0; i < Math.max(x.layers.length, y.layers.length); i++) {
      const [l, m] = [x.layers[i], y.layers[i]]
      if (l?.digest === m?.digest) continue
      out.push(
        `  layer ${i}: ${l?.digest ?? '-'} (${l?.mediaType ?? '-'}) vs ${m?.digest ?? '-'} (${m?.mediaType ?? '-'})`,
      )
      if (l && m && isTarLayer(l) && isTarLayer(m)) {
        const [ta, tb] = [await tarListing(a, l), await tarListing(b, m)]
        let shown = 0
        for (const name of new Set([...ta.keys(), ...tb.keys()])) {
          const [ea, eb] = [ta.get(name), tb.get(name)]
          const fields = Object.keys({ ...ea, ...eb }).filter((f) => ea?.[f] !== eb?.[f])
          if (fields.length === 0) continue
          if (shown++ < 10)
            out.push(
              `    ${name}: ${!ea ? `only in ${labels[1]}` : !eb ? `only in ${labels[0]}` : fields.map((f) => `${f} ${ea[f]} vs ${eb[f]}`).join(', ')}`,
            )
        }
        if (shown > 10) out.push(`    ... ${shown - 10} more entries differ`)
      }
    }
  }
  return out
}

/**
 * Compares `b` with `a` on what a second serial build `c` reproduced: every digest that is the same
 * in a and c (per tag and position) must be the same in b, and in tar layers that differ, every entry
 * field that is the same in a and c must be the same in b. Returns the differences found and what
 * could not be compared (the fields a and c disagree on).
 */
export async function compareStable(
  a: string,
  b: string,
  c: string,
): Promise<{ differences: string[]; unstable: string[] }> {
  const [va, vb, vc] = [await imageViews(a), await imageViews(b), await imageViews(c)]
  const differences: string[] = []
  const unstable: string[] = []
  const tags = (v: ImageView[]) => v.map((x) => x.tag).join(', ')
  if (tags(va) !== tags(vb)) differences.push(`tags [${tags(va)}] vs [${tags(vb)}]`)
  if (tags(va) !== tags(vc)) unstable.push(`tags [${tags(va)}] vs [${tags(vc)}] in two serial builds`)
  for (const x of va) {
    const y = vb.find((v) => v.tag === x.tag)
    const z = vc.find((v) => v.tag === x.tag)
    if (!y || !z) continue
    const stable = (what: string, p: string, q: string, r: string) => {
      if (p !== r) unstable.push(`${x.tag}: ${what}`)
      else if (p !== q) differences.push(`${x.tag}: ${what} ${p} vs ${q}`)
    }
    stable('manifest', x.manifest.digest, y.manifest.digest, z.manifest.digest)
    stable('config', x.config.digest, y.config.digest, z.config.digest)
    stable('layer count', String(x.layers.length), String(y.layers.length), String(z.layers.length))
    for (const k of new Set([...Object.keys(x.configJson), ...Object.keys(y.configJson)])) {
      const j = (v: ImageView) => JSON.stringify(v.configJson[k])
      stable(`config.${k}`, j(x), j(y), j(z))
    }
    for (const [i, l] of x.layers.entries()) {
      const m = y.layers[i]
      const n = z.layers[i]
      if (!m || !n) continue
      stable(`layer ${i} media type`, l.mediaType, m.mediaType, n.mediaType)
      if (l.digest === n.digest) {
        if (l.digest !== m.digest) differences.push(`${x.tag}: layer ${i} ${l.digest} vs ${m.digest}`)
        continue
      }
      if (!isTarLayer(l) || !isTarLayer(m) || !isTarLayer(n)) {
        unstable.push(`${x.tag}: layer ${i} (${l.mediaType}), not a tar to compare entries of`)
        continue
      }
      const [ta, tb, tc] = [await tarListing(a, l), await tarListing(b, m), await tarListing(c, n)]
      for (const [name, ea] of ta) {
        const ec = tc.get(name)
        if (!ec) {
          unstable.push(`${x.tag}: layer ${i} ${name} (present once)`)
          continue
        }
        const eb = tb.get(name)
        if (!eb) {
          differences.push(`${x.tag}: layer ${i} ${name} missing`)
          continue
        }
        // A file's size follows its content: content that differs between two serial builds may
        // have any size, even if those two happened to agree on it.
        const contentVaries = ea.content !== ec.content
        for (const f of Object.keys(ea)) {
          if (ea[f] !== ec[f] || (f === 'size' && contentVaries)) unstable.push(`${x.tag}: layer ${i} ${name} ${f}`)
          else if (ea[f] !== eb[f]) differences.push(`${x.tag}: layer ${i} ${name} ${f} ${ea[f]} vs ${eb[f]}`)
        }
      }
      for (const name of tb.keys()) {
        if (ta.has(name)) continue
        if (tc.has(name)) unstable.push(`${x.tag}: layer ${i} ${name} (present once)`)
        else differences.push(`${x.tag}: layer ${i} ${name} only in the parallel build`)
      }
    }
  }
  return { differences, unstable }
}
