import { createHash } from 'node:crypto'
import { lstat, mkdir, readdir, readFile, readlink, realpath, rm, rmdir, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { execa } from 'execa'
import { type Digest, digestHex, type Logger, StackerError, pathExists } from '@stacker/core'
import { fsImageKindOf, verifyVerity } from '@stacker/layers'
import { Annotations, type Descriptor, OciLayout } from '@stacker/oci'
import { acquireLock, type Lock } from '@stacker/overlay'

/*
 * An atomfs mount is a read-only overlay of an image's squashfs/erofs layers, each layer ("atom")
 * loop-mounted once and shared by every image mounted from the same metadata dir:
 *
 *   atomfs-metadata/mounts/<digest hex>/   a layer blob, mounted read-only (ro,loop)
 *   atomfs-metadata/molecules/<id>/        one per mounted image: symlinks 0..n-1 to its atoms
 *                                          (bottom first), `e` (padding for a one-layer image) and
 *                                          `target` (the mount point)
 *
 * The overlay is mounted with its molecule dir as cwd and as the mount's source, so its options
 * stay a few bytes per layer and /proc/self/mountinfo alone leads umount to the molecule dir, and so
 * to the atoms, whatever the cwd of the umount. An atom is unmounted when no mounted image links to
 * it any more. Every change to the metadata dir happens under one host-wide lock.
 */

const METADATA_DIR = 'atomfs-metadata'
const LOCK_FILE = join(tmpdir(), '.stacker-atomfs.lock')

interface MountEntry {
  target: string
  fstype: string
  source: string
}

/** Which image `stacker internal-go atomfs mount` mounts, where, and where it keeps its records. */
export interface AtomfsMountOptions {
  /** The OCI layout holding the image (stacker's --oci-dir). */
  ociDir: string
  tag: string
  mountpoint: string
  /** Where the layer mounts and records live (upstream: `atomfs-metadata` in the cwd). */
  metadataDir?: string
  logger: Logger
}

/**
 * `stacker internal-go atomfs mount TAG MOUNTPOINT`: mounts the image tagged TAG read-only at
 * MOUNTPOINT. Each layer's dm-verity data is checked against its root-hash annotation before the
 * layer is mounted (LAYER `invalid root hash` otherwise; a layer without one is checked against its
 * digest); an already mounted layer is checked again through its loop device's backing file. There
 * is no dm-verity device: the blob must not change while mounted. On failure everything this call
 * mounted or wrote is undone.
 */
export async function atomfsMount(o: AtomfsMountOptions): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new StackerError('UNSUPPORTED', 'atomfs mount needs root (loop and overlay mounts)')
  const mp = await mountpointPath(o.mountpoint)
  const layout = await OciLayout.open(o.ociDir)
  const { manifest } = await layout.readImage(o.tag)
  if (manifest.layers.length === 0) throw new StackerError('LAYER', `${o.tag} has no layers to mount`)
  const atoms = manifest.layers.map((d) => {
    const kind = fsImageKindOf(d.mediaType)
    if (!kind)
      throw new StackerError('LAYER', `${o.tag}: layer ${d.digest} is ${d.mediaType}, not squashfs or erofs`, {
        hint: 'atomfs mounts images built with --layer-type squashfs or --layer-type erofs',
      })
    return { desc: d, kind, blob: layout.blobPath(d.digest) }
  })
  const meta = resolve(o.metadataDir ?? METADATA_DIR)
  const lock = await lockMetadata()
  try {
    let table = await mountTable()
    if (moleculeOf(table.findLast((m) => m.target === mp)) !== undefined)
      throw new StackerError('MOUNT', `${mp} is already an atomfs mountpoint`)
    await collect(meta, table, o.logger)
    const molecule = join(meta, 'molecules', moleculeId(mp))
    await mkdir(molecule, { recursive: true })
    try {
      for (const [i, atom] of atoms.entries()) {
        const dir = join(meta, 'mounts', digestHex(atom.desc.digest))
        await mountAtom({ ...atom, dir, table, layout, logger: o.logger })
        await symlink(dir, join(molecule, String(i)))
        table = await mountTable()
      }
      const names = atoms.map((_, i) => String(i)).reverse()
      // overlayfs needs two lower dirs when there is no upper one.
      if (names.length === 1) {
        await mkdir(join(molecule, 'e'))
        names.push('e')
      }
      await writeFile(join(molecule, 'target'), `${mp}\n`)
      const r = await execa(
        'mount',
        ['-t', 'overlay', molecule, '-o', `ro,userxattr,lowerdir=${names.join(':')}`, mp],
        { cwd: molecule, reject: false, stdin: 'ignore' },
      )
      if (r.exitCode !== 0)
        throw new StackerError('MOUNT', `couldn't mount overlay on ${mp}: ${String(r.stderr).trim()}`)
      o.logger.debug(`mounted ${o.tag} (${atoms.length} layers) on ${mp}`)
    } catch (e) {
      await rm(molecule, { recursive: true, force: true })
      await collect(meta, await mountTable(), o.logger).catch((c: unknown) =>
        o.logger.warn(`cleaning up ${meta}: ${(c as Error).message}`),
      )
      throw e
    }
  } finally {
    await lock.release()
  }
}

/** What `stacker internal-go atomfs umount` unmounts, and where the mount's records are. */
export interface AtomfsUmountOptions {
  mountpoint: string
  /** Looked in when nothing is mounted at the mount point, to finish an interrupted umount. */
  metadataDir?: string
  logger: Logger
}

/**
 * `stacker internal-go atomfs umount MOUNTPOINT`: unmounts the overlay, then every layer mount no
 * other mounted image uses (their loop devices go with them), then removes the records and the
 * metadata dirs left empty. Safe to repeat: with nothing mounted it only finishes what an
 * interrupted umount left. MOUNT `... is not an atomfs mountpoint` when something else is mounted
 * there.
 */
export async function atomfsUmount(o: AtomfsUmountOptions): Promise<void> {
  const mp = await mountpointPath(o.mountpoint)
  const lock = await lockMetadata()
  try {
    const top = (await mountTable()).findLast((m) => m.target === mp)
    let meta: string
    if (top) {
      const molecule = moleculeOf(top)
      if (molecule === undefined) throw new StackerError('MOUNT', `${mp} is not an atomfs mountpoint`)
      const r = await execa('umount', [mp], { reject: false, stdin: 'ignore' })
      if (r.exitCode !== 0) throw new StackerError('MOUNT', `couldn't unmount ${mp}: ${String(r.stderr).trim()}`)
      await rm(molecule, { recursive: true, force: true })
      meta = dirname(dirname(molecule))
    } else {
      meta = resolve(o.metadataDir ?? METADATA_DIR)
      const molecule = join(meta, 'molecules', moleculeId(mp))
      if (!(await pathExists(molecule))) {
        o.logger.info(`${mp} is not mounted`)
        return
      }
      await rm(molecule, { recursive: true, force: true })
    }
    await collect(meta, await mountTable(), o.logger)
  } finally {
    await lock.release()
  }
}

/** The mount point as the kernel reports it (symlinks resolved). It must be an existing dir. */
async function mountpointPath(p: string): Promise<string> {
  let real: string
  try {
    real = await realpath(p)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      throw new StackerError('NOT_FOUND', `mountpoint ${p} does not exist`)
    throw e
  }
  if (!(await lstat(real)).isDirectory()) throw new StackerError('MOUNT', `mountpoint ${p} is not a directory`)
  return real
}

function moleculeId(mp: string): string {
  return createHash('sha256').update(mp).digest('hex').slice(0, 16)
}

/** The molecule dir an overlay mount was made from, or undefined for any other mount. */
function moleculeOf(m: MountEntry | undefined): string | undefined {
  if (m?.fstype !== 'overlay') return undefined
  const parent = dirname(m.source)
  return basename(parent) === 'molecules' && basename(dirname(parent)) === METADATA_DIR ? m.source : undefined
}

async function mountAtom(a: {
  desc: Descriptor
  kind: 'squashfs' | 'erofs'
  blob: string
  dir: string
  table: MountEntry[]
  layout: OciLayout
  logger: Logger
}): Promise<void> {
  const rootHash = a.desc.annotations?.[Annotations.verityRootHash]
  const existing = a.table.findLast((m) => m.target === a.dir)
  if (existing) {
    if (rootHash !== undefined) {
      const backing = await loopBackingFile(existing.source)
      if (backing === undefined)
        throw new StackerError('LAYER', `invalid root hash ${rootHash}: ${a.dir} is not a loop mount of a layer`)
      await verifyVerity(backing, rootHash)
    }
    a.logger.debug(`layer ${a.desc.digest} already mounted at ${a.dir}`)
    return
  }
  if (rootHash !== undefined) await verifyVerity(a.blob, rootHash)
  else await verifyDigest(a.layout, a.desc.digest)
  await mkdir(a.dir, { recursive: true })
  const r = await execa('mount', ['-t', a.kind, '-o', 'ro,loop', a.blob, a.dir], { reject: false, stdin: 'ignore' })
  if (r.exitCode !== 0) {
    await rmdir(a.dir).catch(() => {})
    throw new StackerError('MOUNT', `couldn't mount layer ${a.desc.digest}: ${String(r.stderr).trim()}`)
  }
}

/** Reads the whole blob: its stream fails with DIGEST if the content does not match. */
async function verifyDigest(layout: OciLayout, d: Digest): Promise<void> {
  for await (const _ of layout.openBlob(d)) {
    // only the check at the end matters
  }
}

/** The file behind a loop device (`/dev/loopN`), or undefined for anything else or a deleted file. */
async function loopBackingFile(source: string): Promise<string | undefined> {
  const m = /^\/dev\/(loop\d+)$/.exec(source)
  if (!m) return undefined
  try {
    const file = (await readFile(`/sys/block/${m[1]}/loop/backing_file`, 'utf8')).trim()
    return file.endsWith(' (deleted)') ? undefined : file
  } catch {
    return undefined
  }
}

/**
 * Brings the metadata dir in line with what is mounted: molecule dirs whose overlay is gone (an
 * interrupted mount or umount) are removed, then every layer mount no remaining molecule links to
 * is unmounted and its dir removed, then the dirs left empty.
 */
async function collect(meta: string, table: MountEntry[], logger: Logger): Promise<void> {
  const live = new Set(table.map(moleculeOf).filter((m) => m !== undefined))
  const moleculesDir = join(meta, 'molecules')
  const mountsDir = join(meta, 'mounts')
  const used = new Set<string>()
  for (const name of await list(moleculesDir)) {
    const dir = join(moleculesDir, name)
    if (!live.has(dir)) {
      logger.debug(`removing stale atomfs record ${dir}`)
      await rm(dir, { recursive: true, force: true })
      continue
    }
    for (const link of await list(dir)) {
      if (/^\d+$/.test(link)) used.add(await readlink(join(dir, link)))
    }
  }
  const mounted = new Set(table.map((m) => m.target))
  for (const name of await list(mountsDir)) {
    const dir = join(mountsDir, name)
    if (used.has(dir)) continue
    // Stacked mounts (should anything else be mounted on it) come off one by one.
    let on = mounted.has(dir)
    while (on) {
      const r = await execa('umount', [dir], { reject: false, stdin: 'ignore' })
      if (r.exitCode !== 0) throw new StackerError('MOUNT', `couldn't unmount ${dir}: ${String(r.stderr).trim()}`)
      on = (await mountTable()).some((m) => m.target === dir)
    }
    await rmdir(dir)
  }
  for (const dir of [moleculesDir, mountsDir, meta]) {
    if ((await list(dir)).length === 0) await rmdir(dir).catch(() => {})
  }
}

async function list(dir: string): Promise<string[]> {
  try {
    return await readdir(dir)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return []
    throw e
  }
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)))
}

/** This mount namespace's mounts, in /proc/self/mountinfo order (later ones on top). */
async function mountTable(): Promise<MountEntry[]> {
  const out: MountEntry[] = []
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const f = line.split(' ')
    const sep = f.indexOf('-', 6)
    const target = f[4]
    const fstype = f[sep + 1]
    const source = f[sep + 2]
    if (sep < 0 || target === undefined || fstype === undefined || source === undefined) continue
    out.push({ target: unescapeMountinfo(target), fstype, source: unescapeMountinfo(source) })
  }
  return out
}

/** Waits for the host-wide atomfs lock (a few minutes at most): mounts and umounts from other
 *  processes take turns. */
async function lockMetadata(): Promise<Lock> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await acquireLock(LOCK_FILE)
    } catch (e) {
      if (!(e instanceof StackerError && e.code === 'LOCK') || attempt >= 200) throw e
      await delay(Math.min(50 * 2 ** attempt, 1000))
    }
  }
}
