import { existsSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { basename, join, posix, relative } from 'node:path'
import { archiveKind, globContext } from './context-files.js'
import { execForm, argumentWords, flagsOf, hasHeredocs, type Instr } from './dockerfile.js'
import { expandText } from './expand.js'
import type { ImportOut, LayerOut, Stage } from './model.js'
import { isLoopbackRegistry, layerForImport } from './stages.js'
import { addStep, type ConvertState, stepContext } from './state.js'
import { textOf } from './words.js'

// COPY and ADD: imports with `dest`, following Docker's placement rules; `--from` a stage or an
// image; ADD of URLs and of archives.

export async function copyInstruction(st: ConvertState, instr: Instr): Promise<void> {
  const stage = st.stage
  const kw = instr.keyword
  const isAdd = kw === 'ADD'
  if (hasHeredocs(instr)) {
    st.warn(`${kw} with a here-document is not converted: stacker imports only files`)
    return
  }
  let from: string | undefined
  let chown: string | undefined
  let chmod: string | undefined
  let checksum: string | undefined
  for (const f of flagsOf(instr)) {
    const v = f.value ?? ''
    if (f.name === 'from') from = expandText(st, v, stage, `${kw} --from=${v}`)
    else if (f.name === 'chown') chown = expandText(st, v, stage, `${kw} --chown=${v}`)
    else if (f.name === 'chmod') chmod = expandText(st, v, stage, `${kw} --chmod=${v}`)
    else if (f.name === 'checksum') checksum = expandText(st, v, stage, `${kw} --checksum=${v}`)
    else if (f.name === 'link') continue
    else st.warn(`${kw} --${f.name}${f.value === null ? '' : `=${v}`} is not converted; the copy ignores it`)
  }
  const raw = execForm(instr) ?? argumentWords(instr)
  const words = raw.map((w) => expandText(st, w, stage, `${kw} ${w}`))
  const destWord = words.pop() ?? ''
  if (words.length === 0) st.fail(`${kw} requires at least two arguments`)
  const wd = textOf(stage.workdir)
  const dirDest = destWord === '.' || destWord === '' || destWord.endsWith('/')
  const destPath = posix
    .join('/', destWord.startsWith('/') ? destWord : posix.join(wd, destWord))
    .replace(/(.)\/+$/, '$1')

  const owner = ownerOf(st, kw, chown)
  let mode: number | undefined
  if (chmod !== undefined) {
    if (/^[0-7]{1,4}$/.test(chmod)) {
      mode = Number.parseInt(chmod, 8)
      if (mode > 0o777)
        st.warn(
          `${kw} --chmod=${chmod}: stacker sets permission bits only; ${chmod} loses its setuid/setgid/sticky bits`,
        )
    } else st.warn(`${kw} --chmod=${chmod}: only octal modes are converted; the files keep their modes`)
  }

  const layer = layerForImport(st, stage)
  const add = (imp: ImportOut, destDir: string) => {
    layer.imports.push({ ...imp, ...owner, ...(mode !== undefined ? { mode } : {}) })
    noteDir(stage, destDir)
  }

  if (from !== undefined) {
    const src = sourceStage(st, from, stage)
    for (const w of words) {
      if (/[*?[]/.test(w)) st.warn(`${kw} --from=${from} ${w}: wildcards in another stage's paths are not expanded`)
      const path = posix.join('/', w)
      const contents = w.endsWith('/') || w.endsWith('/.') || src.knownDirs?.has(path) === true
      if (words.length > 1 || dirDest || isKnownDir(stage, destPath)) {
        if (contents)
          add({ path: `stacker://${src.layer}${path === '/' ? '' : path}/`, dest: [asDir(destPath)] }, destPath)
        else
          add({ path: `stacker://${src.layer}${path}`, dest: [posix.join(destPath, posix.basename(path))] }, destPath)
      } else add({ path: `stacker://${src.layer}${path}`, dest: [destPath] }, posix.dirname(destPath))
    }
    return
  }

  const sources: Array<{ word: string; abs: string | undefined; url?: string }> = []
  for (const w of words) {
    if (/^https?:\/\//.test(w)) {
      if (!isAdd) st.fail("source can't be a URL for COPY")
      sources.push({ word: w, abs: undefined, url: w })
    } else if (/^git@|^git:\/\/|\.git(#|$)/.test(w)) {
      st.warn(`${kw} ${w}: git sources are not converted`)
    } else {
      const rel = posix.normalize(w.replace(/^\/+/, ''))
      if (rel === '..' || rel.startsWith('../')) {
        st.warn(`${kw} ${w}: the path is outside the build context; Docker refuses it, and it is not converted`)
        continue
      }
      if (/[*?[]/.test(rel)) {
        const matches = await globContext(st.o.contextDir, rel)
        st.warn(
          `${kw} ${w}: the wildcard was expanded now, to ${matches.length} path${matches.length === 1 ? '' : 's'}; files added to the context later are not imported`,
        )
        for (const m of matches) sources.push({ word: m, abs: join(st.o.contextDir, m) })
      } else sources.push({ word: w, abs: join(st.o.contextDir, rel) })
    }
  }
  const intoDir = sources.length > 1 || words.length > 1 || dirDest || isKnownDir(stage, destPath)
  if (words.length > 1 && !dirDest)
    st.fail(`When using ${kw} with more than one source file, the destination must be a directory and end with a /`)

  for (const s of sources) {
    if (s.url !== undefined) {
      let name = 'index.html'
      try {
        const base = posix.basename(new URL(s.url).pathname)
        if (base && base !== '/') name = base
      } catch {
        st.fail(`invalid URL ${s.url}`)
      }
      const imp: ImportOut = { path: s.url, dest: [intoDir ? posix.join(destPath, name) : destPath], mode: 0o600 }
      if (checksum !== undefined) {
        const m = /^sha256:([0-9a-fA-F]{64})$/.exec(checksum)
        if (m?.[1]) imp.hash = m[1].toLowerCase()
        else st.warn(`${kw} --checksum=${checksum}: only sha256 checksums are converted`)
      }
      layer.imports.push({ ...imp, ...owner, ...(mode !== undefined ? { mode } : {}) })
      noteDir(stage, intoDir ? destPath : posix.dirname(destPath))
      continue
    }
    const abs = s.abs as string
    const path = importPath(st, abs)
    let info: Awaited<ReturnType<typeof stat>> | undefined
    try {
      info = await stat(abs)
    } catch {
      st.warn(`${kw} ${s.word}: not found in the build context ${st.o.contextDir}; converted as a file`)
    }
    if (info?.isDirectory()) {
      if (mode !== undefined)
        st.warn(
          `${kw} --chmod=${chmod} ${s.word}: stacker applies the mode to the files only, Docker also to the directories`,
        )
      add({ path: `${path}/`, dest: [asDir(destPath)] }, destPath)
      warnDirImport(st, kw, s.word, abs)
      continue
    }
    const kind = isAdd && info?.isFile() ? await archiveKind(abs) : undefined
    if (kind !== undefined) {
      extractArchive(st, stage, layer, { kw, word: s.word, path, dest: destPath, line: instr.line, kind })
      continue
    }
    if (intoDir) add({ path, dest: [posix.join(destPath, basename(abs))] }, destPath)
    else add({ path, dest: [destPath] }, posix.dirname(destPath))
  }
}

function ownerOf(st: ConvertState, kw: string, chown: string | undefined): { uid: number; gid: number } {
  if (chown === undefined || chown === '') return { uid: 0, gid: 0 }
  const [u = '', g] = chown.split(':')
  const id = (s: string) => (/^[0-9]+$/.test(s) ? Number(s) : s === 'root' ? 0 : undefined)
  const uid = id(u)
  const gid = g === undefined ? uid : id(g)
  if (uid === undefined || gid === undefined) {
    st.warn(
      `${kw} --chown=${chown}: stacker imports take numeric ids, and names are looked up in the image; the files are owned by 0:0 (write --chown=UID:GID)`,
    )
    return { uid: uid ?? 0, gid: gid ?? 0 }
  }
  return { uid, gid }
}

function sourceStage(st: ConvertState, from: string, stage: Stage): { layer: string; knownDirs?: Set<string> } {
  const lower = from.toLowerCase()
  const named = st.stages.find((s) => s.name === lower && s !== stage)
  const byIndex = /^[0-9]+$/.test(from) ? st.stages[Number(from)] : undefined
  const src = named ?? (byIndex && byIndex !== stage ? byIndex : undefined)
  if (src) {
    src.used = true
    return { layer: src.layerName, knownDirs: src.knownDirs }
  }
  if (/^[0-9]+$/.test(from)) st.fail(`invalid stage index ${from}`)
  // An image: a layer of its own to copy from, as Docker pulls it.
  const url = `docker://${from}`
  const have = st.extra.find((l) => l.from.type === 'docker' && textOf(l.from.url) === url)
  if (have) return { layer: have.name }
  const name = st.uniqueName(`image-${from.replace(/[^A-Za-z0-9_-]+/g, '-')}`)
  st.extra.push({
    name,
    from: { type: 'docker', url: [url], insecure: isLoopbackRegistry([from]) },
    buildOnly: true,
    imports: [],
    steps: [],
    scopes: [],
    buildEnv: [],
    run: [],
  })
  return { layer: name }
}

/** Extracts an ADDed archive: the base of a stage that starts from scratch with it (`FROM scratch`,
 *  `ADD rootfs.tar.gz /`), else a step that untars it from /stacker/imports. */
function extractArchive(
  st: ConvertState,
  stage: Stage,
  layer: LayerOut,
  a: { kw: string; word: string; path: string; dest: string; line: number; kind: string },
): void {
  const { kw, word, path, dest, line } = a
  if (
    stage.layers.length === 1 &&
    layer.from.type === 'scratch' &&
    layer.imports.length === 0 &&
    layer.steps.length === 0 &&
    dest === '/' &&
    (a.kind === '' || a.kind === '-z')
  ) {
    // A tar base. A local path in `from` would be read relative to the directory stacker runs in, so
    // the archive comes through a layer of its own, by an import relative to the stackerfile.
    const holder = st.uniqueName(`archive-${basename(path).replace(/[^A-Za-z0-9_.-]+/g, '-')}`)
    const file = `/archive/${basename(path)}`
    st.extra.push({
      name: holder,
      from: { type: 'scratch' },
      buildOnly: true,
      imports: [{ path, dest: [file] }],
      steps: [],
      scopes: [],
      buildEnv: [],
      run: [],
    })
    layer.from = { type: 'tar', url: `stacker://${holder}${file}` }
    return
  }
  layer.imports.push({ path })
  st.warn(`${kw} ${word}: the archive is extracted by a run step, which needs a shell and tar in the image`)
  const name = basename(path)
  addStep(
    stage,
    {
      note: `${st.o.file}:${line}: ${kw}`,
      argv: [
        '/bin/sh',
        '-c',
        `mkdir -p "$1" && tar -x${a.kind.slice(1)}f "/stacker/imports/$2" -C "$1"`,
        'sh',
        dest,
        name,
      ],
      ctx: { ...stepContext(stage), user: undefined },
    },
    true,
  )
}

function importPath(st: ConvertState, abs: string): string {
  const rel = relative(st.o.outputDir, abs)
  return rel === '' ? '.' : rel
}

function warnDirImport(st: ConvertState, kw: string, word: string, abs: string): void {
  if (!st.dockerignoreWarned && existsSync(join(st.o.contextDir, '.dockerignore'))) {
    st.dockerignoreWarned = true
    st.warn(`${kw} ${word}: .dockerignore is not applied; directories are imported with everything in them`)
  }
  if (relative(abs, st.o.outputDir).startsWith('..')) return
  st.warn(
    `${kw} ${word}: the directory holds the stackerfile; a build run in it also finds stacker's .stacker, roots and oci directories there (build from elsewhere, or set --stacker-dir, --roots-dir and --oci-dir outside it)`,
  )
}

function noteDir(stage: Stage, dir: string): void {
  for (let d = dir; ; d = posix.dirname(d)) {
    stage.knownDirs.add(d)
    stage.importDests.push(d)
    if (d === '/' || d === '.') break
  }
}

function isKnownDir(stage: Stage, p: string): boolean {
  return stage.knownDirs.has(p)
}

/** A directory path as an import `dest` that means "into it". */
function asDir(p: string): string {
  return p.endsWith('/') ? p : `${p}/`
}
