import { join, resolve } from 'node:path'
import { isStackerError, StackerError, pathExists } from '@stacker/core'
import { OciLayout, type Descriptor, type Manifest } from '@stacker/oci'
import {
  MountSources,
  parseImageRef,
  pushImageDetailed,
  pushTarget,
  RegistryClient,
  readRegistriesConf,
} from '@stacker/registry'
import { buildSubstitutions, layerBuildOrder, loadStackerfiles, type StackerfileSet } from '@stacker/stackerfile'
import { createContext } from './build.js'
import { cachedEntry } from './layer-inputs.js'
import type { BuildContext } from './context.js'
import { openStorage } from './storage.js'
import { tagFor, type LayerType, type Session } from './types.js'

/** What `stacker publish` was asked for: which layers' images go where (`url`, `tags`), with
 *  which credentials and output types. */
export interface PublishOptions {
  stackerFiles: string[]
  url: string
  credentials?: { username: string; password: string }
  skipTls: boolean
  tags: string[]
  substitute: string[]
  substituteFile?: string
  showOnly: boolean
  force: boolean
  layerTypes: LayerType[]
  images: string[]
}

/** Loads the files, retrying upstream's way: a missing substitution is given the value `dummy`. */
async function loadLenient(s: Session, o: PublishOptions): Promise<StackerfileSet> {
  const extra: string[] = []
  for (;;) {
    const substitutions = await buildSubstitutions({
      substitute: [...o.substitute, ...extra],
      ...(o.substituteFile !== undefined ? { substituteFile: o.substituteFile } : {}),
      dirs: s.dirs,
    })
    try {
      return await loadStackerfiles(o.stackerFiles, { substitutions, logger: s.logger })
    } catch (e) {
      // Only a missing value is given one; unsupported placeholders stay an error.
      const missing =
        isStackerError(e, 'SUBSTITUTION') && e.detail?.reason === 'no-value' ? e.detail.variables : undefined
      if (!missing?.length || extra.length > 1000) throw e
      for (const v of missing) extra.push(`${v}=dummy`)
    }
  }
}

/** `stacker publish`: copies built layers' images to a registry (`docker://`) or a layout (`oci:`). */
export async function publish(s: Session, o: PublishOptions): Promise<void> {
  const { logger } = s
  if (o.tags.length === 0)
    throw new StackerError('USAGE', `can't save OCI images in ${o.url} since list of tags is empty`)
  const kind = o.url.startsWith('oci:') ? 'oci' : o.url.startsWith('docker://') ? 'docker' : undefined
  if (!kind) throw new StackerError('USAGE', `unknown image source type: ${o.url}`)
  if (!(await pathExists(s.dirs.ociDir)))
    throw new StackerError('NOT_FOUND', `oci dir ${s.dirs.ociDir} does not exist: build first`)
  const set = await loadLenient(s, o)
  const storage = await openStorage(s)
  let ctx: BuildContext | undefined
  try {
    ctx = await createContext(s, storage, set, {
      stackerFiles: o.stackerFiles,
      substitute: o.substitute,
      noCache: false,
      layerTypes: o.layerTypes,
      verity: true,
      requireHash: false,
      orderOnly: false,
      annotationsNamespace: 'io.stackeroci',
      jobs: 1,
    })
    // Blobs the registry may hold already in another repository, to mount rather than upload: those
    // of `docker://` bases (recorded when they were pulled), and those pushed earlier in this run.
    const mounts = kind === 'docker' ? await mountSources(s.dirs.stackerDir) : undefined
    // Which layers are current: the same check a build makes, without building anything.
    for (const file of set.order)
      for (const layer of layerBuildOrder(set, file, logger)) {
        try {
          const entry = await cachedEntry(ctx, layer)
          if (entry) ctx.built.set(layer.name, { layer, entry })
        } catch (e) {
          logger.debug(`cache check of ${layer.name} failed: ${(e as Error).message}`)
        }
      }
    for (const given of o.stackerFiles) {
      const file = set.files.get(/^[a-z]+:\/\//.test(given) ? given : resolve(given))
      if (!file) continue
      for (const name of file.fileOrder) {
        const layer = file.layers.get(name)
        if (!layer) continue
        if (layer.buildOnly) {
          logger.info(`will not publish: ${given} build_only ${name}`)
          continue
        }
        if (o.images.length && !o.images.includes(name)) continue
        if (!ctx.built.has(name) && !o.force)
          throw new StackerError('CACHE', `layer needs to be rebuilt before publishing: ${name}`)
        for (const tag of o.tags)
          for (const type of o.layerTypes) {
            const src = tagFor(name, type)
            const dest =
              kind === 'docker'
                ? `${o.url.replace(/\/+$/, '')}/${name}:${tagFor(tag, type)}`
                : `${o.url}:${name}_${tagFor(tag, type)}`
            if (o.showOnly) {
              logger.info(`would publish: ${given} ${name} to ${dest}`)
              continue
            }
            const desc = await ctx.layout.getTag(src)
            if (!desc)
              throw new StackerError(
                'NOT_FOUND',
                `no image ${src} in ${s.dirs.ociDir}: build it with --layer-type ${type}`,
              )
            logger.info(`publishing ${given} ${name} to ${dest}`)
            if (kind === 'docker') {
              const ref = parseImageRef(dest)
              const client = new RegistryClient(ref, {
                // registries.conf's `insecure = true` allows plain http and unverified TLS, as --skip-tls.
                insecure: o.skipTls || pushTarget(ref, readRegistriesConf()).insecure,
                ...(o.credentials ? { credentials: o.credentials } : {}),
                logger,
              })
              try {
                const pushed = await pushImageDetailed({
                  layout: ctx.layout,
                  source: src,
                  ref,
                  tags: [ref.tag ?? tagFor(tag, type)],
                  client,
                  logger,
                  ...(mounts ? { mountFrom: mounts.forRef(ref) } : {}),
                })
                mounts?.add(ref.registry, ref.repository, pushed.blobs.keys())
              } finally {
                client.close()
              }
            } else {
              const rest = dest.slice('oci:'.length)
              const i = rest.lastIndexOf(':')
              await copyToLayout(ctx.layout, desc, rest.slice(0, i), rest.slice(i + 1))
            }
          }
      }
    }
  } finally {
    await ctx?.images.closeAll()
    await storage.lock.release()
  }
}

async function mountSources(stackerDir: string): Promise<MountSources> {
  const mounts = new MountSources()
  const bases = join(stackerDir, 'layer-bases', 'oci')
  if (await pathExists(join(bases, 'index.json'))) {
    try {
      await mounts.addFromLayout(await OciLayout.open(bases))
    } catch {
      // Only a hint: without it every blob is uploaded.
    }
  }
  return mounts
}

async function copyToLayout(from: OciLayout, desc: Descriptor, dir: string, tag: string): Promise<void> {
  const to = await OciLayout.open(dir, { create: true })
  const manifest = await from.readJson<Manifest>(desc.digest)
  for (const d of [manifest.config, ...manifest.layers, desc]) {
    if (await to.hasBlob(d.digest)) continue
    await to.putBlob(from.openBlob(d.digest) as AsyncIterable<Uint8Array>, { digest: d.digest, size: d.size })
  }
  await to.setTag(tag, { mediaType: desc.mediaType, digest: desc.digest, size: desc.size })
}
