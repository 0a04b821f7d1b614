import { rm } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { execa } from 'execa'
import { StackerError, pathExists, formatBytes } from '@stacker/core'
import type { ImageConfig, Manifest } from '@stacker/oci'
import { checkOverlay, initStorage, acquireStorageLocks, listMounts } from '@stacker/overlay'
import { runContainer } from '@stacker/runtime'
import { buildSubstitutions, loadStackerfile, type Layer } from '@stacker/stackerfile'
import { BuildCache } from './cache.js'
import { OpenedImages } from './fs-contents.js'
import { bindMounts, layerEnv } from './run.js'
import { openOutputLayout, openStorage } from './storage.js'
import type { BuildContext } from './context.js'
import type { Session } from './types.js'
import { type Requirement, rootsDirRequirement, unprivilegedRequirements } from './unpriv.js'
import { copyTree, lastLine } from './util.js'

async function loadForLayer(s: Session, stackerFile: string, substitute: string[]) {
  const substitutions = await buildSubstitutions({ substitute, dirs: s.dirs })
  return loadStackerfile(stackerFile, { substitutions, logger: s.logger })
}

/** `stacker chroot [tag] [cmd...]`: an interactive container in a throwaway snapshot of a built layer. */
export async function chroot(
  s: Session,
  o: { stackerFile: string; substitute: string[]; tag?: string; cmd?: string[] },
): Promise<number> {
  let layer: Layer | undefined
  let tag = o.tag
  if (await pathExists(o.stackerFile)) {
    const file = await loadForLayer(s, o.stackerFile, o.substitute)
    tag ??= file.fileOrder[0]
    if (tag === undefined) throw new StackerError('USAGE', `no layers in ${o.stackerFile}`)
    layer = file.layers.get(tag)
    if (!layer) throw new StackerError('NOT_FOUND', `no layer ${tag} in stackerfile`)
  } else {
    if (tag === undefined)
      throw new StackerError('USAGE', `couldn't find stacker file ${o.stackerFile} and no layer given`)
    s.logger.info(`couldn't find stacker file, chrooting to ${tag} as best effort`)
  }
  const storage = await openStorage(s)
  const images = new OpenedImages({ stackerDir: s.dirs.stackerDir, store: storage.store, logger: s.logger })
  try {
    const rec = await storage.store.readLayer(tag)
    if (!rec) throw new StackerError('NOT_FOUND', `layer ${tag} has not been built`)
    s.logger.info('This chroot is temporary, any changes will be destroyed when it exits.')
    await images.open(rec.chain)
    const snap = await storage.store.snapshot(rec.chain)
    try {
      const env = layer
        ? layerEnv({ s, opts: { jobs: 1 } } as unknown as BuildContext, layer)
        : ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', `STACKER_LAYER_NAME=${tag}`]
      const r = await runContainer({
        rootfs: snap.target,
        args: o.cmd?.length ? o.cmd : ['/bin/sh'],
        env,
        mounts: layer ? await bindMounts(layer) : [],
        stdio: 'inherit',
        stateDir: storage.runtimeDir,
        id: `${tag}-chroot`,
        logger: s.logger,
      })
      return r.exitCode
    } finally {
      await snap.release()
    }
  } finally {
    await images.closeAll()
    await storage.lock.release()
  }
}

/** `stacker grab <tag>:<path>`: copies a path out of a built layer (build_only ones too). */
export async function grab(
  s: Session,
  o: { spec: string; stackerFile: string; substitute: string[]; dest: string },
): Promise<void> {
  const i = o.spec.indexOf(':')
  if (i <= 0 || i === o.spec.length - 1) throw new StackerError('USAGE', `invalid grab argument: ${o.spec}`)
  const tag = o.spec.slice(0, i)
  const path = o.spec.slice(i + 1)
  const storage = await openStorage(s)
  const images = new OpenedImages({ stackerDir: s.dirs.stackerDir, store: storage.store, logger: s.logger })
  try {
    const rec = await storage.store.readLayer(tag)
    if (!rec) throw new StackerError('NOT_FOUND', `layer ${tag} has not been built`)
    await images.open(rec.chain)
    const snap = await storage.store.snapshot(rec.chain)
    try {
      const src = join(snap.target, resolve('/', path))
      if (!(await pathExists(src)))
        throw new StackerError('NOT_FOUND', `couldn't grab ${path} from ${tag}: no such file or directory`)
      const target = join(o.dest, basename(resolve('/', path)))
      await rm(target, { recursive: true, force: true })
      // Owned by whoever grabs it, as upstream's copy inside the container makes it: files of
      // subordinate ids would be of no use to an unprivileged user.
      await copyTree(src, target, { ownership: false })
    } finally {
      await snap.release()
    }
  } finally {
    await images.closeAll()
    await storage.lock.release()
  }
}

/** `stacker inspect [tag]`: upstream's text, one block per tag in index order. */
export async function inspect(s: Session, tag?: string): Promise<string> {
  const layout = await openOutputLayout(s, { create: false })
  const tags = (await layout.listTags()).filter((t) => tag === undefined || t.name === tag)
  if (tag !== undefined && tags.length === 0) throw new StackerError('NOT_FOUND', `no image ${tag} in ${s.dirs.ociDir}`)
  let out = ''
  for (const t of tags) {
    const manifest = await layout.readJson<Manifest>(t.descriptor.digest)
    out += `${t.name}\n`
    manifest.layers.forEach((l, i) => {
      out += `\tlayer ${i}: ${l.digest.slice(l.digest.indexOf(':') + 1, l.digest.indexOf(':') + 13)}... (${formatBytes(l.size, { decimal: true })}, ${l.mediaType})\n`
    })
    if (manifest.annotations && Object.keys(manifest.annotations).length) {
      out += 'Annotations:\n'
      for (const [k, v] of Object.entries(manifest.annotations)) out += `  ${k}: ${v}\n`
    }
    const config = await layout.readJson<ImageConfig>(manifest.config.digest)
    out += `Image config:\n${JSON.stringify(config, null, 2)
      .split('\n')
      .map((l) => `  ${l}`)
      .join('\n')}\n`
  }
  return out
}

/** `stacker clean`: removes the roots dir (after unmounting anything left in it), the OCI output and
 *  the stacker dir. */
export async function clean(s: Session): Promise<void> {
  const { rootsDir, ociDir, stackerDir, rootsDirArg } = s.dirs
  try {
    if (await pathExists(rootsDir)) {
      await initStorage({ stackerDir, rootsDir, rootsDirArg })
      const lock = await acquireStorageLocks(stackerDir, rootsDir)
      try {
        for (const m of (await listMounts(rootsDir)).sort().reverse())
          await execa('umount', ['-l', m], { reject: false })
        await rm(rootsDir, { recursive: true, force: true })
      } finally {
        await lock.release()
      }
    }
    await rm(ociDir, { recursive: true, force: true })
    await rm(stackerDir, { recursive: true, force: true })
  } catch (e) {
    if (e instanceof StackerError && e.code === 'LOCK') throw e
    throw new StackerError('INTERNAL', `cleaning failed: ${(e as Error).message}`, { cause: e })
  }
}

const TOOLS: ReadonlyArray<readonly [string, string, string]> = [
  ['runc', 'runc', 'runs build containers'],
  ['zstd', 'zstd', 'compresses tar+zstd layers'],
  ['mksquashfs', 'squashfs-tools', 'writes squashfs layers'],
  ['unsquashfs', 'squashfs-tools', 'reads squashfs layers'],
  ['veritysetup', 'cryptsetup-bin', 'checks dm-verity data'],
  ['mkfs.erofs', 'erofs-utils', 'writes erofs layers'],
]

async function which(cmd: string): Promise<boolean> {
  const r = await execa('sh', ['-c', `command -v ${cmd}`], { reject: false })
  return r.exitCode === 0
}

/** `stacker check`: the kernel, the roots dir (its filesystem, no symlinks, not NFS), overlay
 *  support and the tools stacker runs; run by an ordinary user, what unprivileged builds need
 *  instead of overlay as root (see unprivilegedRequirements). One line per requirement; fails
 *  with the unmet ones. */
export async function check(s: Session): Promise<void> {
  const { logger } = s
  const uname = await execa('uname', ['-sr'], { reject: false })
  logger.info(`os/kernel: ${uname.stdout.trim()}`)
  const { rootsDir, stackerDir, rootsDirArg } = s.dirs
  await initStorage({ stackerDir, rootsDir, rootsDirArg })
  const fs = await execa('stat', ['-f', '-c', '%T(0x%t)', rootsDir], { reject: false })
  logger.info(`${rootsDir} ${fs.stdout.trim().toUpperCase().replace('0X', '0x')}`)
  const requirements: Requirement[] = [await rootsDirRequirement(rootsDir)]
  if ((process.geteuid?.() ?? 0) === 0) {
    try {
      await checkOverlay(rootsDir)
      requirements.push({ what: 'overlay' })
    } catch (e) {
      requirements.push({ what: 'overlay', problem: (e as Error).message })
    }
  } else requirements.push(...(await unprivilegedRequirements(rootsDir)))
  for (const [cmd, pkg, why] of TOOLS) {
    requirements.push(
      (await which(cmd))
        ? { what: cmd }
        : { what: cmd, problem: `${cmd} not found (${why}; install the Debian package ${pkg})` },
    )
  }
  const problems: string[] = []
  for (const r of requirements) {
    if (r.problem === undefined) logger.info(`${r.what}: ok${r.detail ? ` (${r.detail})` : ''}`)
    else if (r.optional) logger.warn(`${r.what}: ${r.problem}`)
    else {
      logger.info(`${r.what}: ${r.problem}`)
      problems.push(r.problem)
    }
  }
  if (problems.length) throw new StackerError('TOOL_MISSING', problems.join('; '))
}

/** `stacker internal-go testsuite-check-overlay`: exit 0 when overlay works, else 50. */
export async function internalCheckOverlay(s: Session): Promise<number> {
  try {
    await initStorage({ stackerDir: s.dirs.stackerDir, rootsDir: s.dirs.rootsDir, rootsDirArg: s.dirs.rootsDirArg })
    await checkOverlay(s.dirs.rootsDir)
    return 0
  } catch (e) {
    s.logger.error((e as Error).message)
    return 50
  }
}

/** `stacker gc`: removes blobs no tag reaches and layer contents no cache entry uses. */
export async function gc(s: Session): Promise<void> {
  const storage = await openStorage(s)
  try {
    if (await pathExists(join(s.dirs.ociDir, 'index.json'))) {
      const layout = await openOutputLayout(s, { create: false })
      const { removed } = await layout.gc()
      s.logger.info(`removed ${removed.length} unreferenced blobs`)
    }
    const cache = await BuildCache.open(s.dirs.stackerDir, s.logger)
    const keep = new Set<string>()
    for (const e of await cache.all()) for (const id of e.chain) keep.add(id)
    for (const name of await storage.store.listLayers())
      for (const id of (await storage.store.readLayer(name))?.chain ?? []) keep.add(id)
    const gone = await storage.store.gcContent(keep)
    s.logger.info(`removed ${gone.length} unused layer contents`)
  } finally {
    await storage.lock.release()
  }
}

export { lastLine }
