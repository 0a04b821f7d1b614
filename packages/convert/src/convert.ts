import { existsSync } from 'node:fs'
import { open, readdir, stat } from 'node:fs/promises'
import { basename, join, posix, relative } from 'node:path'
import { StackerError } from '@stacker/core'
import { hostGoArch, hostGoOs } from '@stacker/stackerfile'
import {
  argumentText,
  argumentWords,
  dockerfileError,
  execForm,
  flagsOf,
  hasHeredocs,
  type Instr,
  pairs,
  parseDockerfile,
} from './dockerfile.js'
import { renderStep, type Step, type StepContext, stepArgs, USER_FUNCTIONS } from './shell.js'
import {
  type ArgRef,
  argsOf,
  concat,
  expandWord,
  isLiteral,
  type Lookup,
  splitWords,
  type Template,
  textOf,
  WordError,
} from './words.js'
import { DOLLAR_SENTINEL, IMAGE_LAYER, renderOutput } from './yaml-out.js'

export interface ConvertOptions {
  /** The Dockerfile's text. */
  readonly text: string
  /** The Dockerfile as the user named it: messages say `<file>:<line>: ...`. */
  readonly file: string
  /** Absolute build context: COPY and ADD sources are looked up here. */
  readonly contextDir: string
  /** Absolute directory of the stackerfile to write: import paths are written relative to it. */
  readonly outputDir: string
  /** The platform of a build without `--platform` (default: this machine, in Go's names). */
  readonly os?: string
  readonly arch?: string
}

/** Something of the Dockerfile that the stackerfile does not say, or says differently. */
export interface ConversionWarning {
  readonly line: number
  readonly message: string
}

export interface Conversion {
  /** The stackerfile. */
  readonly stackerYaml: string
  /** The substitutions file: `IMAGE` and the defaults of the build arguments. */
  readonly substitutions: string
  readonly warnings: readonly ConversionWarning[]
}

/** The name the last stage's layer gets; the substitutions file sets it (upstream's convert does). */
export const IMAGE_KEY = 'IMAGE'
export const IMAGE_DEFAULT = 'app'

/** Substitutions every stacker build has; a Dockerfile text that spells them must be escaped too. */
const BUILTIN_SUBSTITUTIONS = ['STACKER_ROOTFS_DIR', 'STACKER_STACKER_DIR', 'STACKER_OCI_DIR', 'STACKER_WORK_DIR']

/** The PATH stacker (and Docker, for an image without one) starts a build container with. */
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** Directories nearly every base image has: a COPY to one of them without a trailing `/` means
 *  "into it", as Docker decides by looking at the image. */
const KNOWN_DIRS = [
  '/',
  '/bin',
  '/sbin',
  '/etc',
  '/home',
  '/lib',
  '/opt',
  '/root',
  '/tmp',
  '/usr',
  '/usr/bin',
  '/usr/sbin',
  '/usr/lib',
  '/usr/local',
  '/usr/local/bin',
  '/usr/local/sbin',
  '/usr/local/lib',
  '/usr/share',
  '/var',
  '/var/lib',
  '/var/log',
  '/srv',
]

/** Docker's automatic platform build arguments: they need an `ARG` in a stage, not a value. */
const PLATFORM_ARGS = [
  'TARGETPLATFORM',
  'TARGETOS',
  'TARGETARCH',
  'TARGETVARIANT',
  'BUILDPLATFORM',
  'BUILDOS',
  'BUILDARCH',
  'BUILDVARIANT',
]

export type FromOut =
  | { type: 'docker'; url: Template; insecure: boolean }
  | { type: 'scratch' }
  | { type: 'built'; tag: string }
  | { type: 'tar'; url: string }

export interface ImportOut {
  path: string
  dest?: Template
  mode?: number
  uid?: number
  gid?: number
  hash?: string
}

/** One stacker layer of the output. */
export interface LayerOut {
  name: string
  from: FromOut
  os?: string
  arch?: string
  buildOnly: boolean
  imports: ImportOut[]
  steps: Step[]
  /** Build arguments in scope at each step, for the steps' `unset`. */
  scopes: Array<ReadonlyMap<string, ArgRef>>
  /** Config, on the layer of the last stage only. */
  config?: LayerConfig
  /** Filled by finish(). */
  buildEnv: Array<[string, Template]>
  run: string[]
}

export interface LayerConfig {
  environment: Array<[string, Template]>
  labels: Array<[string, Template]>
  annotations: Array<[string, string]>
  volumes: Template[]
  workingDir?: Template
  runtimeUser?: Template
  entrypoint?: string[]
  cmd?: string[]
}

interface Stage {
  index: number
  line: number
  /** `AS` name, lower-cased as Docker compares them. */
  name: string | undefined
  /** The name of its (last) stacker layer. */
  layerName: string
  layers: LayerOut[]
  /** The current layer has a RUN-like step: a COPY after it needs the next layer. */
  effectful: boolean
  parent: Stage | undefined
  /** The image at the root of its chain, for messages. */
  externalRef: string | undefined
  externalLine: number
  platform: { os: string; arch: string } | undefined
  args: Map<string, ArgRef>
  env: Array<[string, Template]>
  labels: Array<[string, Template]>
  annotations: Array<[string, string]>
  volumes: Template[]
  workdir: Template
  workdirSet: boolean
  user: Template | undefined
  shell: string[]
  cmd: string[] | null | undefined
  entrypoint: string[] | undefined
  cmdSet: boolean
  knownDirs: Set<string>
  /** RUN steps somewhere in its chain: the image has a shell. */
  hasRun: boolean
  workdirLines: Array<{ line: number; dir: string }>
  importDests: string[]
  used: boolean
}

class Converter {
  readonly #o: ConvertOptions
  readonly #warnings: ConversionWarning[] = []
  readonly #stages: Stage[] = []
  readonly #extra: LayerOut[] = []
  readonly #globalArgs = new Map<string, ArgRef>()
  /** Every declared build argument and the defaults it was declared with. */
  readonly #argDefaults = new Map<string, Set<string | undefined>>()
  readonly #argOrder: string[] = []
  readonly #names = new Set<string>()
  #escape = '\\'
  #line = 0
  readonly #platform: { os: string; arch: string }

  constructor(o: ConvertOptions) {
    this.#o = o
    this.#platform = { os: o.os ?? hostGoOs(), arch: o.arch ?? hostGoArch() }
  }

  warn(message: string, line = this.#line): void {
    this.#warnings.push({ line, message })
  }

  fail(message: string, line = this.#line): never {
    throw dockerfileError(this.#o.file, line, message)
  }

  async run(): Promise<Conversion> {
    const parsed = parseDockerfile(this.#o.text, this.#o.file)
    this.#escape = parsed.escape
    for (const instr of parsed.instructions) {
      this.#line = instr.line
      await this.#instruction(instr)
    }
    const last = this.#stages[this.#stages.length - 1]
    if (!last) this.fail('No source image provided with `FROM`', 1)
    this.#finish(last)
    this.#finishLast(last)
    const layers = [...this.#extra, ...this.#stages.flatMap((s) => s.layers)]
    // A build argument called IMAGE keeps its name; the image's name takes another.
    const imageKey = [IMAGE_KEY, `${IMAGE_KEY}_NAME`, `STACKER_${IMAGE_KEY}`].find((k) => !this.#argOrder.includes(k))
    if (imageKey !== IMAGE_KEY)
      this.warn(`the Dockerfile has a build argument ${IMAGE_KEY}: the image's name is the substitution ${imageKey}`, 0)
    this.#warnings.sort((a, b) => a.line - b.line)
    return {
      ...renderOutput({
        layers,
        imageKey: imageKey ?? IMAGE_KEY,
        imageDefault: imageDefault(layers),
        args: this.#argOrder.map((name) => ({ name, defaults: [...(this.#argDefaults.get(name) ?? [])] })),
        reserved: [imageKey ?? IMAGE_KEY, ...BUILTIN_SUBSTITUTIONS],
        warn: (m) => this.warn(m, 0),
      }),
      warnings: this.#warnings,
    }
  }

  /** The stage being converted; #instruction lets only FROM and ARG come before the first. */
  get #stage(): Stage {
    return this.#stages[this.#stages.length - 1] as Stage
  }

  async #instruction(instr: Instr): Promise<void> {
    if (instr.keyword !== 'FROM' && instr.keyword !== 'ARG' && this.#stages.length === 0)
      this.fail(`${instr.keyword} must come after FROM`)
    switch (instr.keyword) {
      case 'FROM':
        return this.#from(instr)
      case 'ARG':
        return this.#arg(instr)
      case 'ENV':
        return this.#env(instr)
      case 'LABEL':
        return this.#label(instr)
      case 'MAINTAINER':
        return this.#maintainer(instr)
      case 'RUN':
        return this.#run(instr)
      case 'COPY':
      case 'ADD':
        return this.#copy(instr)
      case 'WORKDIR':
        return this.#workdir(instr)
      case 'USER':
        return this.#user(instr)
      case 'VOLUME':
        return this.#volume(instr)
      case 'EXPOSE':
        return this.#expose(instr)
      case 'CMD':
      case 'ENTRYPOINT':
        return this.#command(instr)
      case 'SHELL':
        return this.#shell(instr)
      case 'STOPSIGNAL':
        return this.warn(
          `STOPSIGNAL ${argumentText(instr)} is not converted: stacker.yaml cannot set the image's stop signal`,
        )
      case 'HEALTHCHECK':
        return this.warn('HEALTHCHECK is not converted: OCI images and stacker.yaml have no health check')
      case 'ONBUILD':
        return this.warn(`ONBUILD ${argumentText(instr)} is not converted: OCI images have no build triggers`)
      default:
        this.fail(`unknown instruction: ${instr.keyword}`)
    }
  }

  // ---- expansion ----------------------------------------------------------------------------

  #lookup(stage: Stage | undefined): Lookup {
    return (name) => {
      if (stage) {
        const env = stage.env.findLast(([k]) => k === name)
        if (env) return env[1]
        const a = stage.args.get(name)
        return a ? [a] : undefined
      }
      const a = this.#globalArgs.get(name)
      if (a) return [a]
      // FROM lines see Docker's platform arguments without an ARG.
      return PLATFORM_ARGS.includes(name) ? [this.#platformArg(name, undefined)] : undefined
    }
  }

  /** Expands a word as Docker does for the instruction, warning about what the result cannot say. */
  #expand(word: string, stage: Stage | undefined, what: string): Template {
    let r: ReturnType<typeof expandWord>
    try {
      r = expandWord(word, this.#lookup(stage), this.#escape)
    } catch (e) {
      if (e instanceof WordError) this.fail(`failed to process ${JSON.stringify(word)}: ${e.message}`)
      throw e
    }
    for (const v of r.undefinedVars) {
      if (v === 'PATH' && stage) {
        this.warn(
          `${what}: $PATH is the base image's in Docker, which convert cannot see: the default PATH (${DEFAULT_PATH}) is used`,
        )
      } else {
        this.warn(
          `${what}: ${v} is not set by this Dockerfile and is taken as empty (Docker would take it from the base image's environment, if set there)`,
        )
      }
    }
    const fixed = r.fixedArgs.filter((a) => !PLATFORM_ARGS.includes(a))
    if (fixed.length)
      this.warn(
        `${what}: ${fixed.join(', ')} used with a modifier or pattern is replaced by its default; --substitute ${fixed[0]}=... will not change this value`,
      )
    if (r.undefinedVars.includes('PATH') && stage) {
      // The expansion above took PATH as empty; redo it with the default, as stacker's builds start.
      const withPath: Lookup = (n) => (n === 'PATH' ? [DEFAULT_PATH] : this.#lookup(stage)(n))
      return expandWord(word, withPath, this.#escape).value
    }
    return r.value
  }

  /** Expands a word that must be known now (a path to look at, an id): build arguments take their
   *  defaults, with a warning. */
  #expandText(word: string, stage: Stage | undefined, what: string): string {
    const t = this.#expand(word, stage, what)
    const args = argsOf(t).filter((a) => !PLATFORM_ARGS.includes(a))
    if (args.length)
      this.warn(
        `${what}: ${args.join(', ')} is replaced by its default here; --substitute ${args[0]}=... will not change it`,
      )
    return textOf(t)
  }

  // ---- FROM ---------------------------------------------------------------------------------

  async #from(instr: Instr): Promise<void> {
    const prev = this.#stages[this.#stages.length - 1]
    if (prev) this.#finish(prev)
    const words = argumentWords(instr)
    const image = words[0] ?? ''
    const name = words.length === 3 ? words[2]?.toLowerCase() : undefined
    const ref = this.#expand(image, undefined, `FROM ${image}`)
    const refText = textOf(ref)
    if (refText === '') this.fail(`base name (${image}) should not be blank`)
    const index = this.#stages.length
    const parent = this.#stages.find((s) => s.name === refText.toLowerCase())
    if (parent && !isLiteral(ref))
      this.warn(
        `FROM ${image}: names stage ${parent.name} with the build arguments' defaults; overriding them does not change it`,
      )

    let platform: { os: string; arch: string } | undefined
    for (const f of flagsOf(instr)) {
      if (f.name !== 'platform') continue
      const p = this.#expandText(f.value ?? '', undefined, `FROM --platform=${f.value}`)
      const [os, arch, variant] = p.split('/')
      if (!os || !arch) this.fail(`invalid platform ${JSON.stringify(p)}: expected os/arch[/variant]`)
      if (variant) this.warn(`FROM --platform=${p}: stacker.yaml has no platform variant; ${variant} is dropped`)
      if (os !== this.#platform.os || arch !== this.#platform.arch) platform = { os, arch }
    }

    const layerName = this.#uniqueName(name ?? `stage-${index}`)
    const stage: Stage = parent
      ? this.#childStage(parent, index, instr.line, name, layerName)
      : this.#rootStage(index, instr.line, name, layerName)
    if (parent) {
      parent.used = true
      if (platform) this.warn(`FROM --platform on a stage (${refText}) is ignored: the stage keeps its own platform`)
    }
    stage.platform = platform ?? parent?.platform
    let from: FromOut
    if (parent) from = { type: 'built', tag: parent.layerName }
    else if (refText.toLowerCase() === 'scratch' && isLiteral(ref)) from = { type: 'scratch' }
    else {
      from = { type: 'docker', url: concat('docker://', ref), insecure: isLoopbackRegistry(ref) }
      stage.externalRef = refText
      stage.externalLine = instr.line
    }
    stage.layers.push(this.#newLayer(layerName, from, stage))
    this.#stages.push(stage)
  }

  #uniqueName(want: string): string {
    let name = want
    for (let i = 2; this.#names.has(name); i++) name = `${want}-${i}`
    this.#names.add(name)
    return name
  }

  #rootStage(index: number, line: number, name: string | undefined, layerName: string): Stage {
    return {
      index,
      line,
      name,
      layerName,
      layers: [],
      effectful: false,
      parent: undefined,
      externalRef: undefined,
      externalLine: line,
      platform: undefined,
      args: new Map(),
      env: [],
      labels: [],
      annotations: [],
      volumes: [],
      workdir: ['/'],
      workdirSet: false,
      user: undefined,
      shell: ['/bin/sh', '-c'],
      cmd: undefined,
      entrypoint: undefined,
      cmdSet: false,
      knownDirs: new Set(KNOWN_DIRS),
      hasRun: false,
      workdirLines: [],
      importDests: [],
      used: false,
    }
  }

  #childStage(p: Stage, index: number, line: number, name: string | undefined, layerName: string): Stage {
    return {
      ...this.#rootStage(index, line, name, layerName),
      parent: p,
      externalRef: p.externalRef,
      externalLine: p.externalLine,
      env: [...p.env],
      labels: [...p.labels],
      annotations: [...p.annotations],
      volumes: [...p.volumes],
      workdir: p.workdir,
      workdirSet: p.workdirSet,
      user: p.user,
      shell: [...p.shell],
      cmd: p.cmd,
      entrypoint: p.entrypoint,
      knownDirs: new Set(p.knownDirs),
      hasRun: p.hasRun,
    }
  }

  #newLayer(name: string, from: FromOut, stage: Stage): LayerOut {
    const l: LayerOut = { name, from, buildOnly: true, imports: [], steps: [], scopes: [], buildEnv: [], run: [] }
    if (stage.platform) {
      l.os = stage.platform.os
      l.arch = stage.platform.arch
    }
    return l
  }

  #currentLayer(stage: Stage): LayerOut {
    return stage.layers[stage.layers.length - 1] as LayerOut
  }

  /** The layer a COPY goes into: a new one when a RUN came after the current one's imports, since a
   *  layer's imports are in place before its run script starts. */
  #layerForImport(stage: Stage): LayerOut {
    const cur = this.#currentLayer(stage)
    if (!stage.effectful) return cur
    // The layer so far keeps a numbered name; the stage's name moves to the new last layer.
    cur.name = this.#uniqueName(`${stage.layerName}.${stage.layers.length}`)
    const next = this.#newLayer(stage.layerName, { type: 'built', tag: cur.name }, stage)
    stage.layers.push(next)
    stage.effectful = false
    return next
  }

  #addStep(stage: Stage, step: Step, effectful: boolean): void {
    const layer = this.#currentLayer(stage)
    layer.steps.push(step)
    layer.scopes.push(new Map(stage.args))
    if (effectful) stage.effectful = true
    if (step.mkdirAs === undefined) stage.hasRun = true
  }

  #context(stage: Stage): StepContext {
    return { env: [...stage.env], unset: [], cwd: stage.workdir, user: isRoot(stage.user) ? undefined : stage.user }
  }

  // ---- ARG, ENV, LABEL, MAINTAINER ----------------------------------------------------------

  #arg(instr: Instr): void {
    const stage = this.#stages[this.#stages.length - 1]
    for (const word of splitWords(argumentText(instr), this.#escape)) {
      const eq = word.indexOf('=')
      const name = eq < 0 ? word : word.slice(0, eq)
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) this.fail(`invalid build argument name ${JSON.stringify(name)}`)
      let def: string | undefined
      if (eq >= 0) def = this.#argDefault(word.slice(eq + 1), stage, name)
      else if (stage) def = this.#globalArgs.get(name)?.def
      if (PLATFORM_ARGS.includes(name) && eq < 0) def = this.#platformArg(name, stage)
      const ref: ArgRef = { arg: name, def }
      if (stage) stage.args.set(name, ref)
      else this.#globalArgs.set(name, ref)
      if (!PLATFORM_ARGS.includes(name)) {
        if (!this.#argDefaults.has(name)) {
          this.#argDefaults.set(name, new Set())
          this.#argOrder.push(name)
        }
        this.#argDefaults.get(name)?.add(def)
      }
    }
  }

  #argDefault(raw: string, stage: Stage | undefined, name: string): string {
    const t = this.#expand(raw, stage, `ARG ${name}`)
    const refs = argsOf(t).filter((a) => !PLATFORM_ARGS.includes(a))
    if (refs.length)
      this.warn(
        `ARG ${name}: its default refers to ${refs.join(', ')}, whose default is written in; --substitute ${refs[0]}=... does not change ${name}`,
      )
    return textOf(t)
  }

  #platformArg(name: string, stage: Stage | undefined): string {
    const p = stage?.platform ?? this.#platform
    const host = this.#platform
    switch (name) {
      case 'TARGETPLATFORM':
        return `${p.os}/${p.arch}`
      case 'TARGETOS':
        return p.os
      case 'TARGETARCH':
        return p.arch
      case 'BUILDPLATFORM':
        return `${host.os}/${host.arch}`
      case 'BUILDOS':
        return host.os
      case 'BUILDARCH':
        return host.arch
      default:
        return ''
    }
  }

  /** The pairs of ENV or LABEL, names expanded. */
  #pairs(instr: Instr, stage: Stage): Array<{ name: string; raw: string }> {
    let list: Array<{ name: string; raw: string }>
    try {
      list = pairs(instr, this.#escape)
    } catch (e) {
      this.fail((e as Error).message)
    }
    return list.map((p) => ({ name: this.#expandText(p.name, stage, `${instr.keyword} ${p.name}`), raw: p.raw }))
  }

  #env(instr: Instr): void {
    const stage = this.#stage
    for (const { name, raw } of this.#pairs(instr, stage)) {
      const value = this.#expand(raw, stage, `ENV ${name}`)
      const i = stage.env.findIndex(([k]) => k === name)
      if (i >= 0) stage.env[i] = [name, value]
      else stage.env.push([name, value])
    }
  }

  #label(instr: Instr): void {
    const stage = this.#stage
    for (const { name, raw } of this.#pairs(instr, stage)) {
      const value = this.#expand(raw, stage, `LABEL ${name}`)
      const i = stage.labels.findIndex(([k]) => k === name)
      if (i >= 0) stage.labels[i] = [name, value]
      else stage.labels.push([name, value])
    }
  }

  #maintainer(instr: Instr): void {
    const stage = this.#stage
    const key = 'org.opencontainers.image.authors'
    const i = stage.annotations.findIndex(([k]) => k === key)
    const v = argumentText(instr)
    if (i >= 0) stage.annotations[i] = [key, v]
    else stage.annotations.push([key, v])
    this.warn(
      `MAINTAINER is written as the annotation ${key}, as upstream's convert does; Docker sets the config's author, which stacker sets itself`,
    )
  }

  // ---- RUN ----------------------------------------------------------------------------------

  #run(instr: Instr): void {
    const stage = this.#stage
    for (const f of flagsOf(instr)) this.#runFlag(f.name, f.value ?? '')
    const exec = execForm(instr)
    const note = `${this.#o.file}:${instr.line}: RUN`
    let step: Step
    if (exec) {
      if (exec.length === 0) this.fail('RUN requires at least one argument')
      step = { note, argv: exec, ctx: this.#context(stage) }
    } else {
      const text = argumentText(instr)
      if (text.trim() === '') this.fail('RUN requires at least one argument')
      step = hasHeredocs(instr) ? this.#heredocStep(stage, text, note) : this.#shellStep(stage, text, note)
    }
    this.#addStep(stage, step, true)
  }

  #shellStep(stage: Stage, cmd: string, note: string): Step {
    return { note, argv: [...stage.shell, cmd], ctx: this.#context(stage) }
  }

  #heredocStep(stage: Stage, text: string, note: string): Step {
    const lines = text.split('\n')
    const m = /^<<(-?)(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_.-]+))$/.exec((lines[0] ?? '').trim())
    // A here-document after a command (`cat <<EOF > f`) is shell syntax: the shell reads it.
    if (!m) return this.#shellStep(stage, text, note)
    const chomp = m[1] === '-'
    const delim = m[2] ?? m[3] ?? m[4] ?? ''
    const body: string[] = []
    for (const l of lines.slice(1)) {
      const line = chomp ? l.replace(/^\t+/, '') : l
      if (line === delim) break
      body.push(line)
    }
    const data = body.length ? `${body.join('\n')}\n` : ''
    // A lone here-document is the script: run by its #! line if it has one, else by the shell.
    if (data.startsWith('#!')) return { note, argv: [], script: data, ctx: this.#context(stage) }
    return this.#shellStep(stage, data, note)
  }

  #runFlag(name: string, value: string): void {
    if (name === 'mount') {
      const type = /(?:^|,)type=([^,]*)/.exec(value)?.[1] ?? 'bind'
      if (type === 'cache')
        this.warn(`RUN --mount=${value}: stacker has no cache mounts; the step runs without the cache`)
      else if (type === 'secret' || type === 'ssh')
        this.warn(`RUN --mount=${value}: stacker has no ${type} mounts; the step runs without it`)
      else this.warn(`RUN --mount=${value}: this mount is not converted; the step runs without it`)
    } else if (name === 'network') {
      if (value !== 'default')
        this.warn(`RUN --network=${value}: stacker runs build steps with the host network; the option is dropped`)
    } else this.warn(`RUN --${name}=${value} is not converted`)
  }

  // ---- WORKDIR, USER, VOLUME, EXPOSE, SHELL, CMD, ENTRYPOINT --------------------------------

  #workdir(instr: Instr): void {
    const stage = this.#stage
    const raw = argumentText(instr)
    const t = this.#expand(raw, stage, `WORKDIR ${raw}`)
    const text = textOf(t)
    let dir: Template
    if (text.startsWith('/')) dir = isLiteral(t) ? [posix.normalize(text)] : t
    else if (isLiteral(t) && isLiteral(stage.workdir)) dir = [posix.join(textOf(stage.workdir), text)]
    else dir = concat(stage.workdir, textOf(stage.workdir).endsWith('/') ? '' : '/', t)
    stage.workdir = dir
    stage.workdirSet = true
    const dirText = textOf(dir)
    stage.knownDirs.add(dirText)
    if (dirText !== '/') {
      stage.workdirLines.push({ line: instr.line, dir: dirText })
      this.#addStep(
        stage,
        { note: `${this.#o.file}:${instr.line}: WORKDIR`, argv: [], ctx: this.#context(stage), mkdirAs: dir },
        // Made as root, the directory is the same whenever it is made; made for a USER, a COPY into
        // it afterwards must find it already owned by that user.
        !isRoot(stage.user),
      )
    }
  }

  #user(instr: Instr): void {
    const stage = this.#stage
    const words = argumentWords(instr)
    if (words.length !== 1) this.fail('USER requires exactly one argument')
    stage.user = this.#expand(words[0] as string, stage, `USER ${words[0]}`)
  }

  #volume(instr: Instr): void {
    const stage = this.#stage
    const words = execForm(instr) ?? argumentWords(instr)
    for (const w of words) {
      const t = this.#expand(w, stage, `VOLUME ${w}`)
      if (textOf(t) === '') this.fail('VOLUME specified can not be an empty string')
      if (!stage.volumes.some((v) => textOf(v) === textOf(t))) stage.volumes.push(t)
    }
  }

  #expose(instr: Instr): void {
    const stage = this.#stage
    const ports = argumentWords(instr).map((w) => this.#expandText(w, stage, `EXPOSE ${w}`))
    this.warn(
      `EXPOSE ${ports.join(' ')} is not converted: stacker.yaml cannot set the image's ExposedPorts; publish the ports when running the container`,
    )
  }

  #shell(instr: Instr): void {
    const stage = this.#stage
    const exec = execForm(instr)
    if (!exec || exec.length === 0) this.fail('SHELL requires the arguments to be in JSON form')
    stage.shell = exec
  }

  #command(instr: Instr): void {
    const stage = this.#stage
    const argv = execForm(instr) ?? [...stage.shell, argumentText(instr)]
    if (instr.keyword === 'CMD') {
      stage.cmd = argv
      stage.cmdSet = true
    } else {
      stage.entrypoint = argv
      if (!stage.cmdSet) stage.cmd = null
    }
  }

  // ---- COPY, ADD ----------------------------------------------------------------------------

  async #copy(instr: Instr): Promise<void> {
    const stage = this.#stage
    const kw = instr.keyword
    const isAdd = kw === 'ADD'
    if (hasHeredocs(instr)) {
      this.warn(`${kw} with a here-document is not converted: stacker imports only files`)
      return
    }
    let from: string | undefined
    let chown: string | undefined
    let chmod: string | undefined
    let checksum: string | undefined
    for (const f of flagsOf(instr)) {
      const v = f.value ?? ''
      if (f.name === 'from') from = this.#expandText(v, stage, `${kw} --from=${v}`)
      else if (f.name === 'chown') chown = this.#expandText(v, stage, `${kw} --chown=${v}`)
      else if (f.name === 'chmod') chmod = this.#expandText(v, stage, `${kw} --chmod=${v}`)
      else if (f.name === 'checksum') checksum = this.#expandText(v, stage, `${kw} --checksum=${v}`)
      else if (f.name === 'link') continue
      else this.warn(`${kw} --${f.name}${f.value === null ? '' : `=${v}`} is not converted; the copy ignores it`)
    }
    const raw = execForm(instr) ?? argumentWords(instr)
    const words = raw.map((w) => this.#expandText(w, stage, `${kw} ${w}`))
    const destWord = words.pop() ?? ''
    if (words.length === 0) this.fail(`${kw} requires at least two arguments`)
    const wd = textOf(stage.workdir)
    const dirDest = destWord === '.' || destWord === '' || destWord.endsWith('/')
    const destPath = posix
      .join('/', destWord.startsWith('/') ? destWord : posix.join(wd, destWord))
      .replace(/(.)\/+$/, '$1')

    const owner = this.#owner(kw, chown)
    let mode: number | undefined
    if (chmod !== undefined) {
      if (/^[0-7]{1,4}$/.test(chmod)) {
        mode = Number.parseInt(chmod, 8)
        if (mode > 0o777)
          this.warn(
            `${kw} --chmod=${chmod}: stacker sets permission bits only; ${chmod} loses its setuid/setgid/sticky bits`,
          )
      } else this.warn(`${kw} --chmod=${chmod}: only octal modes are converted; the files keep their modes`)
    }

    const layer = this.#layerForImport(stage)
    const add = (imp: ImportOut, destDir: string) => {
      layer.imports.push({ ...imp, ...owner, ...(mode !== undefined ? { mode } : {}) })
      this.#noteDir(stage, destDir)
    }

    if (from !== undefined) {
      const src = this.#sourceStage(from, stage)
      for (const w of words) {
        if (/[*?[]/.test(w)) this.warn(`${kw} --from=${from} ${w}: wildcards in another stage's paths are not expanded`)
        const path = posix.join('/', w)
        const contents = w.endsWith('/') || w.endsWith('/.') || src.knownDirs?.has(path) === true
        if (words.length > 1 || dirDest || this.#isKnownDir(stage, destPath)) {
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
        if (!isAdd) this.fail("source can't be a URL for COPY")
        sources.push({ word: w, abs: undefined, url: w })
      } else if (/^git@|^git:\/\/|\.git(#|$)/.test(w)) {
        this.warn(`${kw} ${w}: git sources are not converted`)
      } else {
        const rel = posix.normalize(w.replace(/^\/+/, ''))
        if (rel === '..' || rel.startsWith('../')) {
          this.warn(`${kw} ${w}: the path is outside the build context; Docker refuses it, and it is not converted`)
          continue
        }
        if (/[*?[]/.test(rel)) {
          const matches = await globContext(this.#o.contextDir, rel)
          this.warn(
            `${kw} ${w}: the wildcard was expanded now, to ${matches.length} path${matches.length === 1 ? '' : 's'}; files added to the context later are not imported`,
          )
          for (const m of matches) sources.push({ word: m, abs: join(this.#o.contextDir, m) })
        } else sources.push({ word: w, abs: join(this.#o.contextDir, rel) })
      }
    }
    const intoDir = sources.length > 1 || words.length > 1 || dirDest || this.#isKnownDir(stage, destPath)
    if (words.length > 1 && !dirDest)
      this.fail(`When using ${kw} with more than one source file, the destination must be a directory and end with a /`)

    for (const s of sources) {
      if (s.url !== undefined) {
        let name = 'index.html'
        try {
          const base = posix.basename(new URL(s.url).pathname)
          if (base && base !== '/') name = base
        } catch {
          this.fail(`invalid URL ${s.url}`)
        }
        const imp: ImportOut = { path: s.url, dest: [intoDir ? posix.join(destPath, name) : destPath], mode: 0o600 }
        if (checksum !== undefined) {
          const m = /^sha256:([0-9a-fA-F]{64})$/.exec(checksum)
          if (m?.[1]) imp.hash = m[1].toLowerCase()
          else this.warn(`${kw} --checksum=${checksum}: only sha256 checksums are converted`)
        }
        layer.imports.push({ ...imp, ...owner, ...(mode !== undefined ? { mode } : {}) })
        this.#noteDir(stage, intoDir ? destPath : posix.dirname(destPath))
        continue
      }
      const abs = s.abs as string
      const path = this.#importPath(abs)
      let st: Awaited<ReturnType<typeof stat>> | undefined
      try {
        st = await stat(abs)
      } catch {
        this.warn(`${kw} ${s.word}: not found in the build context ${this.#o.contextDir}; converted as a file`)
      }
      if (st?.isDirectory()) {
        if (mode !== undefined)
          this.warn(
            `${kw} --chmod=${chmod} ${s.word}: stacker applies the mode to the files only, Docker also to the directories`,
          )
        add({ path: `${path}/`, dest: [asDir(destPath)] }, destPath)
        this.#warnDirImport(kw, s.word, abs)
        continue
      }
      const kind = isAdd && st?.isFile() ? await archiveKind(abs) : undefined
      if (kind !== undefined) {
        this.#extract(stage, layer, { kw, word: s.word, path, dest: destPath, line: instr.line, kind })
        continue
      }
      if (intoDir) add({ path, dest: [posix.join(destPath, basename(abs))] }, destPath)
      else add({ path, dest: [destPath] }, posix.dirname(destPath))
    }
  }

  #owner(kw: string, chown: string | undefined): { uid: number; gid: number } {
    if (chown === undefined || chown === '') return { uid: 0, gid: 0 }
    const [u = '', g] = chown.split(':')
    const id = (s: string) => (/^[0-9]+$/.test(s) ? Number(s) : s === 'root' ? 0 : undefined)
    const uid = id(u)
    const gid = g === undefined ? uid : id(g)
    if (uid === undefined || gid === undefined) {
      this.warn(
        `${kw} --chown=${chown}: stacker imports take numeric ids, and names are looked up in the image; the files are owned by 0:0 (write --chown=UID:GID)`,
      )
      return { uid: uid ?? 0, gid: gid ?? 0 }
    }
    return { uid, gid }
  }

  #sourceStage(from: string, stage: Stage): { layer: string; knownDirs?: Set<string> } {
    const lower = from.toLowerCase()
    const named = this.#stages.find((s) => s.name === lower && s !== stage)
    const byIndex = /^[0-9]+$/.test(from) ? this.#stages[Number(from)] : undefined
    const src = named ?? (byIndex && byIndex !== stage ? byIndex : undefined)
    if (src) {
      src.used = true
      return { layer: src.layerName, knownDirs: src.knownDirs }
    }
    if (/^[0-9]+$/.test(from)) this.fail(`invalid stage index ${from}`)
    // An image: a layer of its own to copy from, as Docker pulls it.
    const url = `docker://${from}`
    const have = this.#extra.find((l) => l.from.type === 'docker' && textOf(l.from.url) === url)
    if (have) return { layer: have.name }
    const name = this.#uniqueName(`image-${from.replace(/[^A-Za-z0-9_-]+/g, '-')}`)
    this.#extra.push({
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
  #extract(
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
      const holder = this.#uniqueName(`archive-${basename(path).replace(/[^A-Za-z0-9_.-]+/g, '-')}`)
      const file = `/archive/${basename(path)}`
      this.#extra.push({
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
    this.warn(`${kw} ${word}: the archive is extracted by a run step, which needs a shell and tar in the image`)
    const name = basename(path)
    this.#addStep(
      stage,
      {
        note: `${this.#o.file}:${line}: ${kw}`,
        argv: [
          '/bin/sh',
          '-c',
          `mkdir -p "$1" && tar -x${a.kind.slice(1)}f "/stacker/imports/$2" -C "$1"`,
          'sh',
          dest,
          name,
        ],
        ctx: { ...this.#context(stage), user: undefined },
      },
      true,
    )
  }

  #importPath(abs: string): string {
    const rel = relative(this.#o.outputDir, abs)
    return rel === '' ? '.' : rel
  }

  #dockerignoreWarned = false

  #warnDirImport(kw: string, word: string, abs: string): void {
    if (!this.#dockerignoreWarned && existsSync(join(this.#o.contextDir, '.dockerignore'))) {
      this.#dockerignoreWarned = true
      this.warn(`${kw} ${word}: .dockerignore is not applied; directories are imported with everything in them`)
    }
    if (relative(abs, this.#o.outputDir).startsWith('..')) return
    this.warn(
      `${kw} ${word}: the directory holds the stackerfile; a build run in it also finds stacker's .stacker, roots and oci directories there (build from elsewhere, or set --stacker-dir, --roots-dir and --oci-dir outside it)`,
    )
  }

  #noteDir(stage: Stage, dir: string): void {
    for (let d = dir; ; d = posix.dirname(d)) {
      stage.knownDirs.add(d)
      stage.importDests.push(d)
      if (d === '/' || d === '.') break
    }
  }

  #isKnownDir(stage: Stage, p: string): boolean {
    return stage.knownDirs.has(p)
  }

  // ---- end of a stage -----------------------------------------------------------------------

  #finish(stage: Stage): void {
    // WORKDIR directories are made by the shell; a chain without RUN may have none (distroless).
    if (!stage.hasRun) {
      for (const l of stage.layers) {
        const kept = l.steps.filter((s) => s.mkdirAs === undefined)
        l.scopes = l.scopes.filter((_, i) => l.steps[i]?.mkdirAs === undefined)
        l.steps = kept
      }
      for (const w of stage.workdirLines) {
        if (!stage.importDests.includes(w.dir))
          this.warn(
            `WORKDIR ${w.dir}: the directory is not created (the stage has no RUN step to make it with; it exists only if the base image or a COPY makes it)`,
            w.line,
          )
      }
    }
    for (const l of stage.layers) this.#finishLayer(l)
    if (stage.externalRef !== undefined && stage.layers.some((l) => l.steps.some((s) => s.mkdirAs === undefined)))
      this.warn(
        `FROM ${stage.externalRef}: RUN steps see only the Dockerfile's ENV, ARG, WORKDIR and USER; the base image's own Env, WorkingDir and User, which Docker applies to RUN, are not seen (PATH is ${DEFAULT_PATH})`,
        stage.line,
      )
  }

  #finishLayer(l: LayerOut): void {
    const runSteps = l.steps.filter((s) => s.mkdirAs === undefined)
    const argNames = new Set(l.scopes.flatMap((scope) => [...scope.keys()]))
    // An ENV with one value at every step goes into build_env, which keeps the steps short; one that
    // changes between steps (or is empty, which build_env drops) is exported by each step.
    const hoisted = new Map<string, Template>()
    for (const [k, v] of runSteps[0]?.ctx.env ?? []) {
      if (argNames.has(k) || v.length === 0) continue
      const same = runSteps.every((s) => {
        const e = s.ctx.env.find(([n]) => n === k)
        return e !== undefined && JSON.stringify(e[1]) === JSON.stringify(v)
      })
      if (same) hoisted.set(k, v)
    }
    l.steps = l.steps.map((step) => ({
      ...step,
      ctx: { ...step.ctx, env: step.ctx.env.filter(([k]) => !hoisted.has(k)) },
    }))
    const args = new Map<string, ArgRef>()
    l.steps.forEach((step, i) => {
      const scope = l.scopes[i] ?? new Map<string, ArgRef>()
      for (const [name, ref] of scope) {
        const have = args.get(name)
        if (have && have.def !== ref.def)
          this.warn(`ARG ${name} is declared again with another default: RUN steps of layer ${l.name} see the first`)
        else if (!have) args.set(name, ref)
      }
      for (const ref of stepArgs(step)) if (!args.has(ref.arg)) args.set(ref.arg, ref)
    })
    l.buildEnv = [...[...args].map(([k, v]): [string, Template] => [k, [v]]), ...hoisted]
    l.steps = l.steps.map((step, i) => {
      const scope = l.scopes[i] ?? new Map<string, ArgRef>()
      const unset = [...args.keys()].filter((k) => !scope.has(k))
      return { ...step, ctx: { ...step.ctx, unset } }
    })
    const needsUser = l.steps.some((s) => s.ctx.user !== undefined)
    l.run = l.steps.length ? [...(needsUser ? [USER_FUNCTIONS] : []), ...l.steps.map(renderStep)] : []
  }

  #finishLast(last: Stage): void {
    for (const s of this.#stages)
      if (s !== last && !s.used)
        this.warn(
          `stage ${s.name ?? s.index} is not used by the last stage: Docker skips it, stacker builds it (as a build_only layer)`,
          s.line,
        )
    const top = this.#currentLayer(last)
    top.buildOnly = false
    top.config = this.#config(last)
    // The image's layer is named by the IMAGE substitution, its own earlier layers after it.
    const renamed = new Map(
      last.layers.map((l, i) => [l.name, l === top ? IMAGE_LAYER : `${IMAGE_LAYER}.${i + 1}`] as const),
    )
    for (const l of last.layers) {
      l.name = renamed.get(l.name) ?? l.name
      if (l.from.type === 'built') l.from.tag = renamed.get(l.from.tag) ?? l.from.tag
    }
  }

  #config(stage: Stage): LayerConfig {
    const c: LayerConfig = {
      environment: stage.env,
      labels: stage.labels,
      annotations: stage.annotations,
      volumes: stage.volumes,
    }
    if (stage.workdirSet) c.workingDir = stage.workdir
    if (stage.user !== undefined) c.runtimeUser = stage.user
    if (stage.entrypoint !== undefined) c.entrypoint = stage.entrypoint
    if (stage.cmd) c.cmd = stage.cmd
    return c
  }
}

/** A directory path as an import `dest` that means "into it". */
function asDir(p: string): string {
  return p.endsWith('/') ? p : `${p}/`
}

/** IMAGE's default: `app`, unless another layer is already called that. */
function imageDefault(layers: readonly LayerOut[]): string {
  const names = new Set(layers.map((l) => l.name))
  let name = IMAGE_DEFAULT
  for (let i = 2; names.has(name); i++) name = `${IMAGE_DEFAULT}-${i}`
  return name
}

function isRoot(user: Template | undefined): boolean {
  if (user === undefined) return true
  if (!isLiteral(user)) return false
  return ['', 'root', '0', 'root:root', '0:0', 'root:0', '0:root'].includes(textOf(user))
}

/** Docker pulls from a registry on this machine over plain http; stacker needs `insecure: true`. */
function isLoopbackRegistry(ref: Template): boolean {
  const first = ref[0]
  if (typeof first !== 'string') return false
  const slash = first.indexOf('/')
  if (slash < 0) return false
  const host = first.slice(0, slash)
  const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : (host.split(':')[0] ?? '')
  return name === 'localhost' || name === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(name)
}

/** The tar option that reads a file Docker's ADD extracts ('' for plain tar, `-z` gzip, `-j` bzip2,
 *  `-J` xz), or undefined when the file is not such an archive. */
async function archiveKind(file: string): Promise<string | undefined> {
  const fh = await open(file, 'r')
  try {
    const buf = Buffer.alloc(512)
    const { bytesRead } = await fh.read(buf, 0, 512, 0)
    const b = buf.subarray(0, bytesRead)
    if (b[0] === 0x1f && b[1] === 0x8b) return '-z'
    if (b.subarray(0, 3).toString('latin1') === 'BZh') return '-j'
    if (b.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return '-J'
    return bytesRead >= 262 && b.subarray(257, 262).toString('latin1') === 'ustar' ? '' : undefined
  } finally {
    await fh.close()
  }
}

/** Paths in the context matching a wildcard path (Go's filepath.Match per segment), sorted. */
async function globContext(root: string, pattern: string): Promise<string[]> {
  const segs = pattern.split('/').filter((s) => s !== '' && s !== '.')
  let paths = ['']
  for (const seg of segs) {
    const next: string[] = []
    for (const p of paths) {
      if (!/[*?[]/.test(seg)) {
        next.push(p ? `${p}/${seg}` : seg)
        continue
      }
      let entries: string[]
      try {
        entries = await readdir(join(root, p))
      } catch {
        continue
      }
      const re = globSegment(seg)
      for (const e of entries.sort()) if (re.test(e)) next.push(p ? `${p}/${e}` : e)
    }
    paths = next
  }
  const out: string[] = []
  for (const p of paths) {
    try {
      await stat(join(root, p))
      out.push(p)
    } catch {
      // A literal segment after a wildcard names nothing in this match.
    }
  }
  return out
}

function globSegment(seg: string): RegExp {
  let re = '^'
  for (let i = 0; i < seg.length; i++) {
    const c = seg[i] as string
    if (c === '*') re += '[^/]*'
    else if (c === '?') re += '[^/]'
    else if (c === '\\' && i + 1 < seg.length) re += `\\${seg[++i]}`
    else if (c === '[') {
      const end = seg.indexOf(']', i + 1)
      if (end < 0) re += '\\['
      else {
        const body = seg
          .slice(i + 1, end)
          .replace(/^\^/, '^')
          .replace(/\\/g, '\\\\')
        re += `[${body.startsWith('^') ? body : body}]`
        i = end
      }
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&')
  }
  return new RegExp(`${re}$`, 's')
}

/**
 * Converts a Dockerfile into a stackerfile and its substitutions. Reads the build context (to tell
 * files from directories, expand wildcards and recognise archives) but writes nothing. Throws
 * StackerError DOCKERFILE with `<file>:<line>: <message>` for a Dockerfile Docker would reject.
 */
export async function convertDockerfile(opts: ConvertOptions): Promise<Conversion> {
  if (opts.text.includes(DOLLAR_SENTINEL))
    throw new StackerError('DOCKERFILE', `${opts.file}: contains U+E024, which the conversion cannot write`)
  return new Converter(opts).run()
}
