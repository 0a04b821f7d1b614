import { hostname, userInfo } from 'node:os'
import { dirname } from 'node:path'
import { runTool, StackerError } from '@stacker/core'
import {
  Annotations,
  layerKind,
  mutateImage,
  OciLayout,
  type ContainerConfig,
  type Descriptor,
  type History,
  type ImageConfig,
  type Manifest,
  type NewLayer,
} from '@stacker/oci'
import { parseSource, type Layer } from '@stacker/stackerfile'
import type { Origin } from './cache.js'
import type { BuildContext, BuiltLayer } from './context.js'
import { EMPTY_CONTENT, type ProjectOptions, type Projection, projectContent } from './projections.js'
import { outputKey, type OutputType } from './types.js'

/** The PATH entry an image config gets when neither its base nor its layer sets one. */
export const DEFAULT_PATH_ENV = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

interface OutputBase {
  image: { manifest: Manifest; config: ImageConfig } | undefined
  /** How many entries at the bottom of the layer's chain the base image already holds. */
  covered: number
  /** Projections made to convert an image base to the output's type. */
  used: ProjectionUse[]
}

/** The manifest of `b` in output type `out`, generating it (and what it extends) when missing. The
 *  layers appended are the projections of the layer's own chain above what its base covers, so every
 *  output holds exactly the filesystem the layer was built and run with. */
export function ensureOutput(ctx: BuildContext, b: BuiltLayer, out: OutputType): Promise<Descriptor> {
  return ctx.flights.outputs.run(`${b.entry.key}|${outputKey(out)}`, () => generateOutput(ctx, b, out))
}

/** One projection an output is made of: a content dir in a layer type, with its settings. */
export interface ProjectionUse {
  id: string
  opts: ProjectOptions
  projection: Projection
}

/** The layers of `b`'s output in type `out` above its base, and every projection they (and a
 *  conversion of an image base) come from. */
async function assemble(
  ctx: BuildContext,
  b: BuiltLayer,
  out: OutputType,
): Promise<{ base: OutputBase; layers: NewLayer[]; used: ProjectionUse[] }> {
  const base = await outputBase(ctx, b.entry.origin, out)
  const used: ProjectionUse[] = [...base.used]
  const layers: NewLayer[] = []
  const created = createdTime(ctx)
  const own = `stacker build of ${b.layer.name}`
  let fromBuildOnly = false
  for (let i = base.covered; i < b.entry.chain.length; i++) {
    const id = b.entry.chain[i] as string
    const extra = id.startsWith('ovl_') || id.startsWith('imp_')
    const opts: ProjectOptions = { uncompressed: extra }
    const p = await projectContent(ctx, id, out, opts)
    if (!p) continue
    used.push({ id, opts, projection: p })
    const createdBy = b.entry.chainNotes[i] ?? own
    if (createdBy.startsWith('stacker build of ') && createdBy !== own) fromBuildOnly = true
    layers.push({ descriptor: p.descriptor, diffId: p.diffId, history: { created, created_by: createdBy } })
  }
  // An image that carries build_only ancestors' layers ends with the layer's own, empty when its
  // build changed nothing, as upstream's images of such chains do; either way, the same every build.
  if (fromBuildOnly && b.entry.ownContent === null) {
    const opts: ProjectOptions = { allowEmpty: true }
    const p = await projectContent(ctx, EMPTY_CONTENT, out, opts)
    if (p) {
      used.push({ id: EMPTY_CONTENT, opts, projection: p })
      layers.push({ descriptor: p.descriptor, diffId: p.diffId, history: { created, created_by: own } })
    }
  }
  return { base, layers, used }
}

/** The projections `b`'s output in type `out` is made of beyond its parent's output (see
 *  assemble): what another machine needs, besides that parent, to make the same output. */
export async function outputProjections(ctx: BuildContext, b: BuiltLayer, out: OutputType): Promise<ProjectionUse[]> {
  return (await assemble(ctx, b, out)).used
}

async function generateOutput(ctx: BuildContext, b: BuiltLayer, out: OutputType): Promise<Descriptor> {
  const k = outputKey(out)
  const have = b.entry.outputs[k]
  if (have && (await ctx.layout.hasBlob(have.digest))) return have
  const { base, layers } = await assemble(ctx, b, out)
  const created = createdTime(ctx)
  const author = authorName(ctx)
  const parts = mutateImage(base.image, {
    layers,
    history: [{ created, created_by: 'stacker build', author, empty_layer: true }],
    config: containerConfig(base.image?.config.config, b.layer, b.entry.generatedLabels),
    created,
    author,
    architecture: b.layer.arch,
    os: b.layer.os,
    annotations: await manifestAnnotations(ctx, b.layer),
  })
  const desc = await ctx.layout.writeImage(parts)
  b.entry.outputs[k] = desc
  return desc
}

async function outputBase(ctx: BuildContext, origin: Origin, out: OutputType): Promise<OutputBase> {
  switch (origin.kind) {
    case 'empty':
      return { image: undefined, covered: 0, used: [] }
    case 'parent': {
      const p = ctx.built.get(origin.name)
      if (!p) throw new StackerError('INTERNAL', `parent layer ${origin.name} is not available`)
      if (p.layer.buildOnly) return outputBase(ctx, p.entry.origin, out)
      const desc = await ensureOutput(ctx, p, out)
      const manifest = await ctx.layout.readJson<Manifest>(desc.digest)
      const config = await ctx.layout.readJson<ImageConfig>(manifest.config.digest)
      return { image: { manifest, config }, covered: p.entry.chain.length, used: [] }
    }
    case 'image':
      return imageBase(ctx, origin, out)
  }
}

/** A base image in the requested type: as it is when its layers already have that type (digests
 *  kept), else converted layer by layer from the extracted contents. */
async function imageBase(
  ctx: BuildContext,
  origin: Extract<Origin, { kind: 'image' }>,
  out: OutputType,
): Promise<OutputBase> {
  const src = origin.layout === ctx.layout.dir ? ctx.layout : await OciLayout.open(origin.layout, { create: false })
  const manifest = await src.readJson<Manifest>(origin.digest)
  const config = await src.readJson<ImageConfig>(manifest.config.digest)
  const native = manifest.layers.every(
    (l) =>
      layerKind(l.mediaType) === out.type &&
      (out.type === 'tar' || out.verity === (l.annotations?.[Annotations.verityRootHash] !== undefined)),
  )
  if (native) {
    if (src !== ctx.layout) for (const d of [manifest.config, ...manifest.layers]) await copyBlob(src, ctx.layout, d)
    return { image: { manifest, config }, covered: origin.contents.length, used: [] }
  }
  const used: ProjectionUse[] = []
  const layers: Descriptor[] = []
  const diffIds: ImageConfig['rootfs']['diff_ids'] = []
  for (const id of origin.contents) {
    const opts: ProjectOptions = { uncompressed: out.type === 'tar' }
    const p = await projectContent(ctx, id, out, opts)
    if (!p) continue
    used.push({ id, opts, projection: p })
    layers.push(p.descriptor)
    diffIds.push(p.diffId)
  }
  const converted: ImageConfig = { ...structuredClone(config), rootfs: { type: 'layers', diff_ids: diffIds } }
  if (converted.history) {
    // History entries must match the layer count: keep the empty_layer ones and one per layer.
    const nonEmpty = converted.history.filter((h) => !h.empty_layer)
    if (nonEmpty.length !== layers.length)
      converted.history = layers.map((): History => ({ created_by: 'stacker conversion' }))
  }
  return {
    image: { manifest: { ...manifest, layers }, config: converted },
    covered: origin.contents.length,
    used,
  }
}

async function copyBlob(from: OciLayout, to: OciLayout, d: Descriptor): Promise<void> {
  if (await to.hasBlob(d.digest)) return
  await to.putBlob(from.openBlob(d.digest) as AsyncIterable<Uint8Array>, { digest: d.digest, size: d.size })
}

export function createdTime(ctx: BuildContext): string {
  const sde = ctx.s.sourceDateEpoch
  const d = sde !== undefined ? new Date(sde * 1000) : new Date()
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z')
}

function authorName(ctx: BuildContext): string {
  if (ctx.s.sourceDateEpoch !== undefined) return 'stacker'
  let user = process.env.SUDO_USER
  if (!user) {
    try {
      user = userInfo().username
    } catch {
      user = 'root'
    }
  }
  return `${user}@${hostname()}`
}

/** Upstream's config rules, with Docker's cmd/entrypoint rule (docs/compatibility.md): inherited unless set; setting `entrypoint` clears
 *  an inherited `cmd`; `full_command` sets `entrypoint` and clears `cmd`. */
export function containerConfig(
  inherited: ContainerConfig | undefined,
  layer: Layer,
  generatedLabels: ReadonlyArray<readonly [string, string]>,
): ContainerConfig {
  const c: ContainerConfig = structuredClone(inherited ?? {})
  const env = [...(c.Env ?? [])]
  for (const [k, v] of layer.environment) {
    const i = env.findIndex((e) => e.startsWith(`${k}=`))
    if (i >= 0) env[i] = `${k}=${v}`
    else env.push(`${k}=${v}`)
  }
  if (!env.some((e) => e.startsWith('PATH='))) env.push(DEFAULT_PATH_ENV)
  c.Env = env
  if (layer.fullCommand) {
    c.Entrypoint = layer.fullCommand
    c.Cmd = null
  } else {
    if (layer.entrypoint) {
      c.Entrypoint = layer.entrypoint
      if (!layer.cmd) c.Cmd = null
    }
    if (layer.cmd) c.Cmd = layer.cmd
  }
  if (layer.volumes.length) {
    c.Volumes = { ...(c.Volumes ?? {}) }
    for (const v of layer.volumes) c.Volumes[v] = {}
  }
  if (layer.exposedPorts.length) {
    c.ExposedPorts = { ...(c.ExposedPorts ?? {}) }
    for (const p of layer.exposedPorts) c.ExposedPorts[p] = {}
  }
  const labels = { ...(c.Labels ?? {}) }
  for (const [k, v] of generatedLabels) labels[k] = v
  for (const [k, v] of layer.labels) labels[k] = v
  if (Object.keys(labels).length) c.Labels = labels
  if (layer.workingDir) c.WorkingDir = layer.workingDir
  if (layer.runtimeUser) c.User = layer.runtimeUser
  return c
}

/** `git describe --tags` (else the commit) of `dir`, `-dirty` when tracked files changed, or
 *  undefined outside a git checkout. Asked once per directory and build. */
async function describeGit(dir: string): Promise<string | undefined> {
  const git = async (args: string[]): Promise<string | undefined> => {
    const r = await runTool('git', ['-C', dir, ...args], { stdin: 'ignore' })
    return r.exitCode === 0 ? r.stdout.trim() : undefined
  }
  const v = (await git(['describe', '--tags'])) ?? (await git(['rev-parse', 'HEAD']))
  if (v === undefined) return undefined
  const status = await git(['status', '--porcelain', '--untracked-files=no'])
  if (status === undefined) return undefined
  return status !== '' ? `${v}-dirty` : v
}

/** The git version of the checkout `layer`'s stackerfile is in (see describeGit), for the
 *  `git_version` annotation; started early by a build that will need it, so that it is known by
 *  the time the layer's image is written. Undefined for a stackerfile given by URL. */
export function layerGitVersion(ctx: BuildContext, layer: Layer): Promise<string | undefined> | undefined {
  const file = ctx.set.files.get(layer.file)
  if (!file || parseSource(file.path).kind !== 'local') return undefined
  const dir = dirname(file.path)
  return ctx.gitVersions.run(dir, () => describeGit(dir))
}

async function manifestAnnotations(ctx: BuildContext, layer: Layer): Promise<Record<string, string>> {
  const ns = ctx.opts.annotationsNamespace
  const file = ctx.set.files.get(layer.file)
  const out: Record<string, string> = {}
  for (const [k, v] of layer.annotations) out[k] = v
  const git = await layerGitVersion(ctx, layer)
  if (git !== undefined) out[`${ns}.stacker.git_version`] = git
  if (file) out[`${ns}.stacker.stacker_yaml`] = file.text
  out[`${ns}.stacker.stacker_version`] = ctx.s.version
  return out
}
