import { createReadStream } from 'node:fs'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import {
  memoryLogger,
  StackerError,
  type Logger,
  KeptResults,
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
  loadStackerfiles,
  orderLines,
  type Layer,
  type Stackerfile,
  type StackerfileSet,
} from '@stacker/stackerfile'
import { BuildCache, CACHE_VERSION, explainMiss, type CacheEntry } from './cache.js'
import { openChain, type BuildContext, type BuildOptions, type BuiltLayer } from './context.js'
import { HashCache } from './hashing.js'
import { layerGitVersion } from './image.js'
import { RemoteCache } from './remote-cache.js'
import { stageImports } from './imports.js'
import { generateLabels, runScript } from './run.js'
import { OpenedImages } from './fs-contents.js'
import { commitLayerContent } from './content.js'
import { hostCouplings } from './coupling.js'
import { openOutputLayout, openStorage, type OpenStorage } from './storage.js'
import { TagWriter } from './tags.js'
import type { OutputType, Session } from './types.js'

import { missingContent, missingContentReason, originOf, planLayer, prepareChain } from './layer-inputs.js'
import { recordLayer, writeOutputs, type LayerResult } from './layer-outputs.js'
import { useRemoteRecord, warmRemoteCache } from './remote-layers.js'

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
    gitVersions: new KeptResults(),
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

export type { Logger }
