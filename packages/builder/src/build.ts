import { createReadStream } from 'node:fs'
import { rm } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import {
  digestHex,
  memoryLogger,
  sha256Digest,
  StackerError,
  type Logger,
  KeyedMutex,
  Semaphore,
  SingleFlight,
  settleAll,
} from '@stacker/core'
import { extractTarLayer } from '@stacker/layers'
import type { Descriptor } from '@stacker/oci'
import {
  buildSubstitutions,
  layerBuildOrder,
  layerDependencies,
  layerDefinition,
  loadStackerfiles,
  orderLines,
  type Layer,
  type Stackerfile,
  type StackerfileSet,
} from '@stacker/stackerfile'
import { resolveBase, type ResolvedBase } from './bases.js'
import {
  BuildCache,
  CACHE_VERSION,
  cacheKey,
  explainMiss,
  type CacheEntry,
  type CacheParts,
  type OverlayDirPart,
  type Origin,
} from './cache.js'
import { openChain, type BuildContext, type BuildOptions, type BuiltLayer } from './context.js'
import { HashCache, hashTree } from './hashing.js'
import { ensureOutput, layerGitVersion } from './image.js'
import { seedProjection } from './projections.js'
import { hasPulledContent, registerPulledContent } from './pulled-contents.js'
import { RemoteCache } from './remote-cache.js'
import { baseDirMeta, type DirMeta, destDirOf, destImportContent, resolveImports, stageImports } from './imports.js'
import { resolveInRoot, withChainView } from './rootfs-path.js'
import { generateLabels, runScript } from './run.js'
import { OpenedImages } from './fs-contents.js'
import { commitLayerContent, contentIdFor, DIFF_PREFIX } from './content.js'
import { hostCouplings } from './coupling.js'
import { openOutputLayout, openStorage, type OpenStorage } from './storage.js'
import { TagWriter } from './tags.js'
import { outputKey, tagFor, type OutputType, type Session } from './types.js'
import { copyTree } from './util.js'

/** `stacker build`: builds every layer of the stackerfiles (and their prerequisites) in dependency
 *  order, from the cache where the key is unchanged, and tags each layer's outputs in the OCI layout.
 *  A failed `run` fails the build (after `onRunFailure` when given). */
export async function build(s: Session, o: BuildOptions): Promise<void> {
  const { logger } = s
  // The stackerfiles load while the storage opens (its locks wait on child processes). Loading only
  // reads; its log lines and its error are held until the storage is open, so what is printed, and
  // which error wins, is as if one came after the other.
  const held = memoryLogger()
  const loading = loadSet(s, o, held).then(
    (set) => ({ set }),
    (error: unknown) => ({ error }),
  )
  const storage = await openStorage(s)
  try {
    const loaded = await loading
    for (const r of held.records) (r.prefix ? logger.child(r.prefix) : logger).log(r.level, r.msg, r.fields)
    if ('error' in loaded) throw loaded.error
    const { set } = loaded
    if (o.orderOnly) {
      logger.info('stacker build order:')
      for (const line of orderLines(set)) logger.info(line)
      return
    }
    const ctx = await createContext(s, storage, set, o)
    try {
      for (const file of set.order) await buildFile(ctx, file)
      await ctx.remote?.flush()
      await ctx.tags.finish()
    } finally {
      await ctx.hashes.save()
      await ctx.images.closeAll()
      await ctx.remote?.close()
    }
  } finally {
    await storage.lock.release()
  }
}

async function loadSet(s: Session, o: BuildOptions, logger: Logger): Promise<StackerfileSet> {
  const substitutions = await buildSubstitutions({
    substitute: o.substitute,
    ...(o.substituteFile !== undefined ? { substituteFile: o.substituteFile } : {}),
    dirs: s.dirs,
  })
  return loadStackerfiles(o.stackerFiles, { substitutions, requireHash: o.requireHash, logger })
}

export async function createContext(
  s: Session,
  storage: OpenStorage,
  set: StackerfileSet,
  o: BuildOptions,
): Promise<BuildContext> {
  const layout = await openOutputLayout(s, { create: true })
  return {
    s,
    logger: s.logger,
    layout,
    store: storage.store,
    cache: await BuildCache.open(s.dirs.stackerDir, s.logger),
    hashes: await HashCache.open(join(s.dirs.stackerDir, 'hash-cache.json')),
    set,
    opts: o,
    outputs: o.layerTypes.map(
      (type): OutputType => ({
        type,
        verity: type !== 'tar' && o.verity,
        ...(type === 'tar' && o.tarCompression === 'zstd' ? { tarCompression: 'zstd' as const } : {}),
      }),
    ),
    built: new Map(),
    runtimeDir: storage.runtimeDir,
    tags: new TagWriter(layout),
    images: new OpenedImages({ stackerDir: s.dirs.stackerDir, store: storage.store, logger: s.logger }),
    flights: { projections: new SingleFlight(), outputs: new SingleFlight(), basePulls: new KeyedMutex() },
    gitVersions: new Map(),
    // --no-cache layers are never shared: nothing is asked for or pushed.
    remote: o.noCache
      ? undefined
      : await RemoteCache.create(
          { cacheTo: o.cacheTo ?? [], cacheFrom: o.cacheFrom ?? [], cacheToRequired: !!o.cacheToRequired },
          s.logger,
        ),
  }
}

async function buildFile(ctx: BuildContext, file: Stackerfile): Promise<void> {
  const order = layerBuildOrder(ctx.set, file, ctx.logger)
  for (const l of order)
    if (l.name.includes(':'))
      throw new StackerError(
        'STACKERFILE',
        `using ':' in the layer name (${l.name}) is forbidden due to overlay constraints`,
        { pos: l.pos },
      )
  if (ctx.remote?.pulls) warmRemoteCache(ctx, order).catch(() => {})
  // Layers start as soon as what they depend on is done; tags are applied in build order so the
  // index is the same whatever the concurrency.
  const done = new Map<string, Promise<BuiltLayer>>()
  const tagged: Array<{ layer: Layer; tags: Array<[string, Descriptor]> } | undefined> = new Array(order.length)
  let frontier = 0
  // Flushes run one at a time: two interleaved loops would both advance `frontier` past one entry
  // and leave a layer untagged.
  let flushing: Promise<void> = Promise.resolve()
  const flushTags = (): Promise<void> => {
    flushing = flushing.then(async () => {
      while (frontier < order.length && tagged[frontier]) {
        for (const [tag, desc] of tagged[frontier]?.tags ?? []) await ctx.tags.set(tag, desc)
        frontier++
      }
    })
    return flushing
  }
  const slots = new Semaphore(ctx.opts.jobs)
  const coupled = hostCouplings(order)
  let unfinished = order.length
  const serial = ctx.opts.jobs <= 1 || order.length <= 1
  const results = order.map((layer, i) => {
    const p = (async () => {
      for (const dep of [...layerDependencies(layer), ...(coupled.get(layer.name) ?? [])]) {
        const d = done.get(dep)
        if (d) await d
      }
      await slots.acquire()
      try {
        ctx.s.signal?.throwIfAborted()
        // Lines are prefixed with their layer's name only where layers can interleave.
        const log = serial ? ctx.logger : ctx.logger.child(layer.name)
        const r = await buildLayer(
          serial ? { ...ctx, opts: { ...ctx.opts, jobs: 1 } } : { ...ctx, logger: log },
          layer,
        ).catch((e: unknown) => {
          throw withLayerContext(e, layer)
        })
        tagged[i] = { layer, tags: r.tags }
        await flushTags()
        // The layout is collected once every layer is tagged, before the last layer's closing
        // line: a build's output ends with `filesystem NAME built successfully`, as upstream's.
        if (--unfinished === 0) {
          // Pushes read blobs that only they use (a build_only layer's tar): they finish first.
          await ctx.remote?.flush()
          await ctx.layout.gc()
        }
        if (r.closing !== undefined) log.info(r.closing)
        return r.built
      } finally {
        slots.release()
      }
    })()
    done.set(layer.name, p)
    return p
  })
  await settleAll(results)
  if (order.length === 0) {
    await ctx.remote?.flush()
    await ctx.layout.gc()
  }
}

async function resolveOverlayDirs(ctx: BuildContext, layer: Layer): Promise<OverlayDirPart[]> {
  const out: OverlayDirPart[] = []
  for (const od of layer.overlayDirs) {
    const { stat } = await import('node:fs/promises')
    let st: Awaited<ReturnType<typeof stat>>
    try {
      st = await stat(od.source)
    } catch {
      throw new StackerError('IMPORT', `Given overlay_dir ${od.source} doesn't exists`, { pos: layer.pos })
    }
    if (!st.isDirectory())
      throw new StackerError('IMPORT', `Given overlay_dir ${od.source} should be a directory`, { pos: layer.pos })
    const tree = await hashTree(od.source, ctx.hashes)
    out.push({ source: od.source, dest: od.dest || '/', digest: tree.digest, entries: tree.entries })
  }
  return out
}

/** The ids of `chain` whose content is gone (e.g. the roots dir was deleted). */
async function missingContent(ctx: BuildContext, chain: readonly string[]): Promise<string[]> {
  const out: string[] = []
  for (const id of chain)
    if (!(await ctx.store.hasContent(id)) && !(await hasPulledContent(ctx.s.dirs.stackerDir, id))) out.push(id)
  return out
}

/** Upstream's words when a layer's inputs are unchanged but what it built is gone. */
function missingContentReason(
  overlayDirs: readonly OverlayDirPart[],
  chain: readonly string[],
  missing: readonly string[],
): string {
  // The layer's own overlay_dir copies are the last ones of its chain, in overlay_dirs order.
  const own = chain.filter((id) => id.startsWith(OVERLAY_DIR_PREFIX)).slice(-overlayDirs.length)
  const i = own.findIndex((id) => missing.includes(id))
  const od = overlayDirs.length > 0 && i >= 0 ? overlayDirs[i] : undefined
  if (od) return `cache miss because overlay_dir was missing: ${od.source}`
  return `cache miss because the layer's filesystem was missing: ${missing[0]}`
}

const OVERLAY_DIR_PREFIX = 'ovl_'

/** The content id of an overlay_dir copy: its source tree's digest and where it lands in the image
 *  (`dest` with the base's symlinks resolved). */
function overlayDirContentId(od: OverlayDirPart, dest: string): string {
  // `owner0`: contents made before the copy dropped host ownership must not be reused.
  return `${OVERLAY_DIR_PREFIX}${digestHex(sha256Digest(`${od.digest}|${dest}|owner0`)).slice(0, 32)}`
}

/** Points the layer's record (what chroot, grab and stacker:// read) and its roots views at `entry`,
 *  the filesystem this build uses for it: a cache hit may name another state than the last build. */
async function recordLayer(ctx: BuildContext, entry: CacheEntry): Promise<void> {
  const rec = await ctx.store.readLayer(entry.name)
  const same =
    rec !== undefined &&
    rec.chain.length === entry.chain.length &&
    rec.chain.every((id, i) => id === entry.chain[i]) &&
    (rec.meta as { key?: unknown } | undefined)?.key === entry.key
  if (!same) await ctx.store.writeLayer(entry.name, { version: 1, chain: entry.chain, meta: { key: entry.key } })
  await ctx.store.setLayerView(entry.name, entry.ownContent ?? undefined)
}

function originOf(base: ResolvedBase): Origin {
  if (base.parent) return { kind: 'parent', name: base.parent.layer.name }
  if (base.image)
    return {
      kind: 'image',
      layout: base.image.layout.dir,
      digest: base.image.descriptor.digest,
      contents: base.image.contents,
    }
  return { kind: 'empty' }
}

/** The directory a layer's relative paths are resolved against (the stackerfile's; the working
 *  directory for a stackerfile given by URL, as the loader resolves them). */
function stackerfileDir(layer: Layer): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(layer.file) ? process.cwd() : dirname(resolve(layer.file))
}

/** Everything a layer's cache key needs, worked out before anything runs (docs/architecture.md, "The cache"). */
export async function planLayer(ctx: BuildContext, layer: Layer) {
  // The base (a pull, perhaps) is found while the imports and overlay_dirs are hashed; an error of
  // the imports comes first, then the base's.
  const [[imports, overlayDirs], base] = await settleAll([
    resolveImports(ctx, layer).then(async (i) => [i, await resolveOverlayDirs(ctx, layer)] as const),
    resolveBase(ctx, layer),
  ])
  const parts: CacheParts = {
    name: layer.name,
    definition: layerDefinition(layer),
    base: base.key,
    sourceDateEpoch: ctx.s.sourceDateEpoch ?? null,
    imports: imports.map((i) => i.part),
    overlayDirs,
  }
  return { imports, base, overlayDirs, parts, key: cacheKey(parts, stackerfileDir(layer)) }
}

/** The cached entry of a layer if its inputs are unchanged and its filesystem is still there. */
export async function cachedEntry(ctx: BuildContext, layer: Layer): Promise<CacheEntry | undefined> {
  const { key } = await planLayer(ctx, layer)
  const hit = await ctx.cache.get(key)
  return hit && (await missingContent(ctx, hit.chain)).length === 0 ? hit : undefined
}

type LayerResult = { built: BuiltLayer; tags: Array<[string, Descriptor]>; closing?: string }

async function buildLayer(ctx: BuildContext, layer: Layer): Promise<LayerResult> {
  const r = await buildOrReuseLayer(ctx, layer)
  // Layers with binds depend on the host beyond their key: they are never shared.
  if (ctx.remote && layer.binds.length === 0) ctx.remote.schedulePush(ctx, r.built, ctx.logger)
  return r
}

async function buildOrReuseLayer(ctx: BuildContext, layer: Layer): Promise<LayerResult> {
  const log = ctx.logger
  log.info(`preparing image ${layer.name}...`)
  const plan = await planLayer(ctx, layer)
  const { imports, base, overlayDirs, parts, key } = plan

  if (!ctx.opts.noCache) {
    const hit = await ctx.cache.get(key)
    const missing = hit ? await missingContent(ctx, hit.chain) : []
    if (hit && missing.length === 0) {
      if (layer.binds.length === 0) {
        const built: BuiltLayer = { layer, entry: hit }
        ctx.built.set(layer.name, built)
        await recordLayer(ctx, hit)
        const tags = layer.buildOnly ? [] : await writeOutputs(ctx, built, true)
        if (layer.buildOnly) log.info(`found cached layer ${layer.name}`)
        return { built, tags }
      }
      log.info('rebuilding cached layer due to use of binds in stacker file')
    } else if (hit) {
      log.info(missingContentReason(overlayDirs, hit.chain, missing))
    } else {
      const prev = await ctx.cache.lastFor(layer.name)
      if (prev) for (const line of explainMiss(prev.parts, parts, ctx.s.debug)) log.info(line)
    }
    // The image's git_version annotation is looked up while the layer is found or built.
    void layerGitVersion(ctx, layer)
    if (ctx.remote?.pulls && layer.binds.length === 0) {
      const remote = await useRemoteRecord(ctx, layer, plan)
      if (remote) return remote
    }
  }

  const ws = await ctx.store.prepareBuild(layer.name)
  const { chain, chainNotes } = await prepareChain(ctx, layer, plan)
  if (base.tarball) {
    log.info(`unpacking ${base.tarball}`)
    await extractTarLayer(createReadStream(base.tarball), ws.upper, {
      ...(ctx.s.signal !== undefined ? { signal: ctx.s.signal } : {}),
      whiteouts: 'keep',
      compression: 'auto',
      sourceDescription: base.tarball,
    })
  }
  // Staged whether or not the layer runs anything: users and scripts look for them there.
  const importsDir = await stageImports(ctx, layer, imports)
  if (layer.run.length) {
    await openChain(ctx, chain)
    // A mount made after an interrupt's cleanups have run would outlive the process.
    ctx.s.signal?.throwIfAborted()
    const mount = await ctx.store.mount({ lower: chain, upper: ws.upper, work: ws.work, target: ws.rootfs })
    try {
      await runScript(ctx, layer, { rootfs: ws.rootfs, upper: ws.upper, importsDir })
    } finally {
      await mount.release()
    }
  }
  const own = await commitLayerContent(ctx, ws.upper, chain)
  if (own !== undefined) {
    chain.push(own)
    chainNotes.push(`stacker build of ${layer.name}`)
  }
  await rm(ws.root, { recursive: true, force: true })

  const entry: CacheEntry = {
    version: CACHE_VERSION,
    name: layer.name,
    key,
    parts,
    chain,
    chainNotes,
    buildOnly: layer.buildOnly,
    origin: originOf(base),
    ownContent: own ?? null,
    generatedLabels: [],
    outputs: {},
  }
  if (layer.generateLabels.length && !layer.buildOnly) entry.generatedLabels = await generateLabels(ctx, layer, chain)
  const built: BuiltLayer = { layer, entry }
  ctx.built.set(layer.name, built)
  const tags = layer.buildOnly ? [] : await writeOutputs(ctx, built, false)
  await ctx.cache.put(entry)
  await recordLayer(ctx, entry)
  return { built, tags, closing: `filesystem ${layer.name} built successfully` }
}

type LayerPlan = Awaited<ReturnType<typeof planLayer>>

/** The layer's chain before its run: its base's, then a content dir per overlay_dir and per
 *  import with `dest` (made here if missing), with their history notes. */
async function prepareChain(
  ctx: BuildContext,
  layer: Layer,
  plan: LayerPlan,
): Promise<{ chain: string[]; chainNotes: string[] }> {
  const { base, overlayDirs, imports } = plan
  const log = ctx.logger
  const chain = [...base.chain]
  const chainNotes = base.parent ? [...base.parent.entry.chainNotes] : base.chain.map(() => 'base image layer')
  const overlayNote = `stacker overlay dir for ${layer.name}`
  const destImports = imports.filter((i) => i.spec.dest !== undefined)
  // Destinations are resolved in the base's filesystem, so one that passes through a symlinked dir
  // (`/lib -> usr/lib`) writes where the link points and the link stays a link.
  // The directories an import lands in keep the owner and mode they have in the base: the import's
  // layer holds them too, and would otherwise reset them (a /tmp without its sticky bit, a WORKDIR
  // made for a user taken back by root).
  const view =
    overlayDirs.length + destImports.length > 0 && chain.length > 0
      ? await withChainView(ctx, chain, async (root) => {
          const seen = new Map<string, string>()
          const dirs = new Map<string, DirMeta[]>()
          for (const d of [...overlayDirs.map((o) => o.dest), ...destImports.map((i) => destDirOf(i))])
            seen.set(d, resolveInRoot(root, d))
          for (const imp of destImports) {
            const d = seen.get(destDirOf(imp)) ?? destDirOf(imp)
            dirs.set(d, await baseDirMeta(root, d))
          }
          return { resolveDest: (d: string) => seen.get(d) ?? d, dirMeta: (d: string) => dirs.get(d) ?? [] }
        })
      : { resolveDest: (d: string) => d, dirMeta: (): DirMeta[] => [] }
  const resolveDest = view.resolveDest
  for (const od of overlayDirs) {
    const dest = resolveDest(od.dest)
    if (dest !== resolve('/', od.dest)) log.info(`overlay dest ${od.dest} is a symlink, patching to ${dest}`)
    const id = overlayDirContentId(od, dest)
    await ctx.store.ensureContent(id, async (dir) => {
      await copyTree(od.source, join(dir, dest), { contents: true, ownership: false })
    })
    chain.push(id)
    chainNotes.push(overlayNote)
  }
  for (const imp of destImports) {
    const dir = resolveDest(destDirOf(imp))
    chain.push(await destImportContent(ctx, imp, dir, view.dirMeta(dir)))
    chainNotes.push(overlayNote)
  }
  return { chain, chainNotes }
}

/** A system call's failure (a full disk, a permission) in a layer's build says which layer it was;
 *  errors of stacker's own already say what they were about. */
function withLayerContext(e: unknown, layer: Layer): unknown {
  const sys = e as NodeJS.ErrnoException
  if (e instanceof StackerError || !(e instanceof Error) || typeof sys.code !== 'string' || !sys.syscall) return e
  const full = sys.code === 'ENOSPC' || sys.code === 'EDQUOT'
  return new StackerError(
    'LAYER',
    `couldn't build ${layer.name}: ${e.message}${full ? ' (`stacker gc` removes what no build uses)' : ''}`,
    { cause: e },
  )
}

/** Connects to the `--cache-from` registries while the first layers hash their inputs, when some
 *  layer has never been built here (a fresh machine asks the shared cache for every layer). */
async function warmRemoteCache(ctx: BuildContext, order: readonly Layer[]): Promise<void> {
  for (const l of order)
    if (l.binds.length === 0 && !(await ctx.cache.lastFor(l.name))) {
      ctx.remote?.warm()
      return
    }
}

/**
 * Uses the shared cache's record of the layer's key instead of running it: the chain below the
 * layer's own diff is made here (base, overlay_dirs, `dest` imports, as a build would), the
 * record's blobs are pulled (verified), its own diff is extracted and checked against its content
 * id, and the outputs are made from the pulled projections. Undefined (after one warning line)
 * when anything does not fit: the layer is then built locally.
 */
async function useRemoteRecord(ctx: BuildContext, layer: Layer, plan: LayerPlan): Promise<LayerResult | undefined> {
  const remote = ctx.remote
  if (!remote) return undefined
  const log = ctx.logger
  const found = await remote.find(layer, plan.key, log)
  if (!found) return undefined
  const { record } = found
  try {
    const prepared = await prepareChain(ctx, layer, plan)
    const own = record.ownContent
    if (own !== null && !own.startsWith(DIFF_PREFIX))
      throw new StackerError('REGISTRY', `bad own content id ${own}`, {
        detail: { reason: 'protocol', retryable: false },
      })
    const expected = [...prepared.chain, ...(own !== null ? [own] : [])]
    if (expected.length !== record.chain.length || expected.some((id, i) => id !== record.chain[i]))
      throw new StackerError('REGISTRY', "its filesystem chain differs from this machine's", {
        detail: { reason: 'protocol', retryable: false },
      })
    const outs = layer.buildOnly ? [] : ctx.outputs
    for (const out of outs)
      if (!record.outputs[outputKey(out)])
        throw new StackerError('REGISTRY', `it has no ${outputKey(out)} output`, {
          detail: { reason: 'protocol', retryable: false },
        })
    const keys = new Set(outs.map(outputKey))
    const projections = record.projections.filter((p) => keys.has(p.output))
    const stackerDir = ctx.s.dirs.stackerDir
    const ownBlob =
      own !== null && !(await ctx.store.hasContent(own)) && !(await hasPulledContent(stackerDir, own))
        ? record.ownContentBlob
        : null
    if (own !== null && ownBlob && contentIdFor(ownBlob.diffId, ctx.s.sourceDateEpoch) !== own)
      throw new StackerError('DIGEST', `content id ${own} does not match its diff ${ownBlob.diffId}`)
    await remote.fetchBlobs(
      ctx,
      found,
      [...projections.map((p) => p.descriptor), ...(ownBlob ? [ownBlob.descriptor] : [])],
      new Map(ownBlob ? [[ownBlob.descriptor.digest, ownBlob.diffId]] : []),
    )
    // The diff is extracted (and checked again, tree against id) when something first reads it.
    if (own !== null && ownBlob)
      await registerPulledContent(stackerDir, ctx.layout, own, ownBlob.descriptor, {
        diffId: ownBlob.diffId,
        sourceDateEpoch: ctx.s.sourceDateEpoch ?? null,
      })
    for (const p of projections) {
      const out = outs.find((o) => outputKey(o) === p.output) as OutputType
      await seedProjection(
        ctx,
        p.content,
        out,
        { uncompressed: p.uncompressed, allowEmpty: p.allowEmpty },
        { descriptor: p.descriptor, diffId: p.diffId },
      )
    }
    const entry: CacheEntry = {
      version: CACHE_VERSION,
      name: layer.name,
      key: plan.key,
      parts: plan.parts,
      chain: expected,
      chainNotes: [...prepared.chainNotes, ...(own !== null ? [`stacker build of ${layer.name}`] : [])],
      buildOnly: layer.buildOnly,
      origin: originOf(plan.base),
      ownContent: own,
      generatedLabels: record.generatedLabels.map(([k, v]) => [k, v]),
      outputs: {},
    }
    const built: BuiltLayer = { layer, entry }
    ctx.built.set(layer.name, built)
    const tags = layer.buildOnly ? [] : await writeOutputs(ctx, built, false)
    await ctx.cache.put(entry)
    await recordLayer(ctx, entry)
    for (const [k, desc] of Object.entries(entry.outputs)) {
      const theirs = record.outputs[k]
      if (theirs && theirs.manifest !== desc.digest)
        log.debug(`${layer.name} ${k}: manifest ${desc.digest} here, ${theirs.manifest} where the cache was pushed`)
    }
    log.info(`found remote cached layer ${layer.name}`)
    return { built, tags }
  } catch (e) {
    ctx.s.signal?.throwIfAborted()
    ctx.built.delete(layer.name)
    const why = e instanceof Error ? e.message : String(e)
    log.warn(`remote cached layer ${layer.name} in ${found.endpoint.label} is unusable (${why}); building it locally`)
    return undefined
  }
}

/** Makes every requested output of a layer, reusing cached ones, and returns the tags to set. */
async function writeOutputs(ctx: BuildContext, b: BuiltLayer, cached: boolean): Promise<Array<[string, Descriptor]>> {
  const tags: Array<[string, Descriptor]> = []
  let added = false
  for (const out of ctx.outputs) {
    const k = outputKey(out)
    const prev = b.entry.outputs[k]
    const had = prev !== undefined && (await ctx.layout.hasBlob(prev.digest))
    // What ensureOutput returns for an output whose manifest is there, without asking again.
    const desc = had ? prev : await ensureOutput(ctx, b, out)
    if (!had) added = true
    const tag = tagFor(b.layer.name, out.type)
    if (cached && had) ctx.logger.info(`found cached layer ${tag}`)
    else if (cached) ctx.logger.info(`generating missing output ${tag} from the cached filesystem`)
    tags.push([tag, desc])
  }
  if (cached && added) await ctx.cache.put(b.entry)
  return tags
}

export type { Logger }
