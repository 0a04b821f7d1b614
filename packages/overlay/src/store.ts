import { randomBytes } from 'node:crypto'
import { statSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readdir, realpath, rename, rm } from 'node:fs/promises'
import { isAbsolute, join, resolve } from 'node:path'
import {
  type Logger,
  StackerError,
  onCleanup,
  silentLogger,
  pathExists,
  isDirectory,
  SingleFlight,
} from '@stacker/core'
import { validateContentId } from './names.js'
import { listMounts, type Mount, removeTree, unmount, unmountAll } from './mounts.js'
import { type MountOptions, mountOverlay } from './overlay-mount.js'
import { type LayerRecord, listRecords, readRecord, removeRecord, writeRecord } from './records.js'
import { layerViewDir, pruneBlobViews, setBlobViewAt, setLayerViewAt } from './views.js'
import { type BuildWorkspace, prepareWorkspace, workspaceRoot } from './workspace.js'

/** A throwaway writable view of a chain; everything written lands in `upper` and is deleted by
 *  `release()`. */
export interface Snapshot extends Mount {
  readonly upper: string
}

/** The store's own dir inside the roots dir. Layer views (`<name>/overlay`, `<name>/rootfs`) and
 *  blob views (`sha256_<hex>/overlay`) sit beside it, where upstream keeps its dirs, so the store's
 *  names must not be names a layer can have. */
export const STORE_DIR = '.store'

// Names the store used directly under the roots dir before STORE_DIR: such a roots dir is from an
// older version whose cache records no longer apply.
const OLD_LAYOUT = ['content', 'layers', 'build', 'tmp']

/**
 * The layer filesystem store under a roots dir:
 *
 *   .store/content/<id>/      immutable layer content in overlay format (whiteouts are 0:0 char
 *                             devices, opaque dirs carry user.overlay.opaque=y); a dir appears there
 *                             complete or not at all (filled in tmp/, then renamed)
 *   .store/layers/<name>.json a layer's record: its chain of content ids (replaced atomically)
 *   .store/build/<name>/      transient build workspace (upper, work)
 *   .store/tmp/               staging, snapshots and mount link dirs; emptied at open
 *   <name>/overlay            view: symlink to the layer's own content (an empty dir when it has none)
 *   <name>/rootfs             view: where the layer's build mounts its filesystem (empty otherwise)
 *   sha256_<hex>/overlay      view: symlink to the content a layer blob of that digest was made from
 *
 * Overlay mounts use `userxattr` and name their layers through a per-mount dir of short symlinks,
 * mounted with that dir as cwd, so the option string stays a few bytes per layer (a chain of
 * hundreds of layers fits the one-page limit on mount options).
 *
 * One store per roots dir per process, opened while holding the roots dir lock: open() treats
 * everything in tmp/ and build/ as left over from a killed process.
 */
export class OverlayStore {
  readonly rootsDir: string
  readonly #logger: Logger
  readonly #fills = new SingleFlight<string, string>()
  // Content ids under a live mount of this store; gcContent leaves them alone.
  readonly #inUse = new Map<string, number>()

  private constructor(rootsDir: string, logger: Logger) {
    this.rootsDir = rootsDir
    this.#logger = logger
  }

  /** Creates the layout if missing and clears what a killed process left in tmp/ and build/
   *  (unmounting first, so no stale view is ever deleted through). */
  static async open(rootsDir: string, opts: { logger?: Logger } = {}): Promise<OverlayStore> {
    const store = new OverlayStore(resolve(rootsDir), opts.logger ?? silentLogger)
    await store.#dropOldLayout()
    for (const d of ['content', 'layers', 'build', 'tmp']) await mkdir(store.#path(d), { recursive: true })
    // Build mounts of a killed process on `<name>/rootfs` views. Opened images under content/ are
    // left to whoever opens them next (they show the right content).
    // The roots dir may itself be a mount (a bind-mounted CI sandbox): only what is below it goes.
    // mountinfo has real paths, hence realpath.
    const base = await realpath(store.rootsDir)
    const content = join(base, STORE_DIR, 'content')
    for (const mp of (await listMounts(base)).reverse())
      if (mp.startsWith(`${base}/`) && !mp.startsWith(`${content}/`)) await unmount(mp)
    for (const area of ['tmp', 'build']) {
      const dir = store.#path(area)
      const stale = await readdir(dir)
      if (stale.length === 0) continue
      store.#logger.debug(`removing ${stale.length} stale entries from ${dir}`)
      await unmountAll(dir)
      await Promise.all(stale.map((e) => rm(join(dir, e), { recursive: true, force: true })))
    }
    return store
  }

  #path(...parts: string[]): string {
    return join(this.rootsDir, STORE_DIR, ...parts)
  }

  get #tmp(): string {
    return this.#path('tmp')
  }

  async #dropOldLayout(): Promise<void> {
    if (await pathExists(this.#path())) return
    const found: string[] = []
    for (const d of OLD_LAYOUT) if (await isDirectory(join(this.rootsDir, d))) found.push(d)
    if (found.length !== OLD_LAYOUT.length) return
    this.#logger.info(`removing layer storage of an older version from ${this.rootsDir}`)
    for (const d of OLD_LAYOUT) await removeTree(join(this.rootsDir, d))
  }

  /** The dir of a content id (whether or not it exists). Throws on an invalid id. */
  contentPath(id: string): string {
    validateContentId(id)
    return this.#path('content', id)
  }

  async hasContent(id: string): Promise<boolean> {
    // Synchronous: a no-op build asks for every dir of every chain, and a stat through the thread
    // pool costs twenty times the stat.
    try {
      return statSync(this.contentPath(id)).isDirectory()
    } catch (e) {
      if (e instanceof StackerError) throw e
      return false
    }
  }

  /**
   * Returns content/<id>, creating it with `fill` if missing. `fill` writes into an empty staging
   * dir (mode 0755, its root becomes the content's root) that is renamed into place only when
   * `fill` resolves: a crash or error leaves no content dir, only staging that the next open
   * removes. Concurrent calls for one id in this store share one fill.
   */
  ensureContent(id: string, fill: (dir: string) => Promise<void>): Promise<string> {
    const dest = this.contentPath(id)
    return this.#fills.run(id, async () => {
      if (await isDirectory(dest)) return dest
      const staging = await mkdtemp(join(this.#tmp, 'c-'))
      const unregister = onCleanup(() => removeTree(staging))
      try {
        await chmod(staging, 0o755)
        await fill(staging)
        await this.#moveIn(staging, dest)
        return dest
      } catch (e) {
        await removeTree(staging).catch(() => {})
        throw e
      } finally {
        unregister()
      }
    })
  }

  /**
   * Moves `dir` (on the roots dir's filesystem, e.g. a finished build's upper dir) to content/<id>.
   * If that id exists already, `dir` is removed instead: equal ids mean equal content. Atomic.
   */
  async adoptContent(id: string, dir: string): Promise<string> {
    const dest = this.contentPath(id)
    await this.#fills.pending(id)?.catch(() => {})
    if (await isDirectory(dest)) {
      await removeTree(dir)
      return dest
    }
    await this.#moveIn(resolve(dir), dest)
    return dest
  }

  async #moveIn(from: string, dest: string): Promise<void> {
    try {
      await rename(from, dest)
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      if (code === 'EEXIST' || code === 'ENOTEMPTY') {
        await removeTree(from)
        return
      }
      if (code === 'EXDEV') {
        throw new StackerError('INTERNAL', `can't move ${from} into ${dest}: not on the same filesystem`, { cause: e })
      }
      throw e
    }
  }

  /** The record of `name`, or undefined when there is none or it is unreadable (logged). */
  readLayer(name: string): Promise<LayerRecord | undefined> {
    return readRecord(this.#path('layers'), name, this.#logger)
  }

  /** Replaces the record of `name` atomically. */
  writeLayer(name: string, rec: LayerRecord): Promise<void> {
    return writeRecord(this.#path('layers'), name, rec)
  }

  /** Idempotent. The content the record named stays until gcContent. */
  removeLayer(name: string): Promise<void> {
    return removeRecord(this.#path('layers'), name)
  }

  /** Names of all recorded layers, sorted. */
  listLayers(): Promise<string[]> {
    return listRecords(this.#path('layers'))
  }

  /**
   * Mounts an overlay of `lower` (plus `upper`/`work` when given) at `target`. Read-only mounts
   * of fewer than two dirs, and writable mounts of none, are padded with empty dirs below, as
   * overlayfs needs them. The mount is registered for cleanup on interruption while held.
   */
  async mount(opts: MountOptions): Promise<Mount> {
    return this.#mount(opts, await mkdtemp(join(this.#tmp, 'm-')), undefined)
  }

  async #mount(opts: MountOptions, linkDir: string, owned: string | undefined): Promise<Mount> {
    const removeOwned = async () => {
      await rm(linkDir, { recursive: true, force: true })
      if (owned) await removeTree(owned)
    }
    const ids: string[] = []
    let held: Mount
    try {
      const lowers = this.#resolveLowers(opts.lower, ids)
      const target = await mountOverlay(lowers, opts, linkDir, this.#logger)
      for (const id of ids) this.#inUse.set(id, (this.#inUse.get(id) ?? 0) + 1)
      let released: Promise<void> | undefined
      const release = (): Promise<void> => {
        released ??= (async () => {
          unregister()
          await unmount(target)
          for (const id of ids) {
            const n = (this.#inUse.get(id) ?? 1) - 1
            if (n > 0) this.#inUse.set(id, n)
            else this.#inUse.delete(id)
          }
          await removeOwned()
        })()
        return released
      }
      const unregister = onCleanup(release)
      held = { target, release }
    } catch (e) {
      await removeOwned().catch(() => {})
      throw e
    }
    return held
  }

  #resolveLowers(lower: readonly string[], ids: string[]): string[] {
    const seen = new Set<string>()
    const topDown: string[] = []
    for (let i = lower.length - 1; i >= 0; i--) {
      const entry = lower[i]!
      const dir = isAbsolute(entry) ? resolve(entry) : this.contentPath(entry)
      if (seen.has(dir)) continue
      seen.add(dir)
      topDown.push(dir)
      if (!isAbsolute(entry)) ids.push(entry)
    }
    return topDown.reverse()
  }

  /** A writable throwaway view of `chain` (content ids or absolute dirs, bottom -> top), for
   *  grab, chroot, generate_labels and stacker:// imports. The content dirs are never written. */
  async snapshot(chain: readonly string[]): Promise<Snapshot> {
    const dir = await mkdtemp(join(this.#tmp, 's-'))
    let linkDir: string
    try {
      await Promise.all(['upper', 'work', 'rootfs', 'l'].map((d) => mkdir(join(dir, d))))
      linkDir = join(dir, 'l')
    } catch (e) {
      await removeTree(dir)
      throw e
    }
    const upper = join(dir, 'upper')
    const m = await this.#mount(
      { lower: chain, upper, work: join(dir, 'work'), target: join(dir, 'rootfs') },
      linkDir,
      dir,
    )
    return { target: m.target, upper, release: m.release }
  }

  /** A fresh, empty build workspace for `name`; whatever an earlier (killed) build of that name
   *  left there, mounts included, is removed first. The caller mounts rootfs itself: it is the
   *  layer's `<name>/rootfs` view when the name can have one. */
  prepareBuild(name: string): Promise<BuildWorkspace> {
    return prepareWorkspace(this.#path('build'), name, layerViewDir(this.rootsDir, name), this.#logger)
  }

  /** Removes the build workspace of `name` (unmounting anything left mounted in it). Idempotent. */
  async removeBuild(name: string): Promise<void> {
    await removeTree(workspaceRoot(this.#path('build'), name))
  }

  /**
   * Points the views of layer `name` at its current state: `<name>/overlay` at its own content (the
   * diff its build produced; an empty dir when it produced none) and an empty `<name>/rootfs`.
   * Names that cannot have views (they would reach outside the roots dir or into the store) are
   * skipped. Replaces what was there atomically.
   */
  async setLayerView(name: string, ownContent: string | undefined): Promise<void> {
    const dir = layerViewDir(this.rootsDir, name)
    if (dir === undefined) return
    await setLayerViewAt(dir, ownContent === undefined ? undefined : this.contentPath(ownContent))
  }

  /** `sha256_<hex>/overlay` -> the content a layer blob with that digest holds, as upstream keeps
   *  its unpacked and generated layers. */
  async setBlobView(digest: string, id: string): Promise<void> {
    await setBlobViewAt(this.rootsDir, digest, this.contentPath(id))
  }

  /**
   * Removes every content dir whose id is not in `keep`, except those being filled or mounted by
   * this store. Each dir is first renamed into tmp/, so a crash never leaves a partial content dir.
   * Returns the removed ids, sorted.
   */
  async gcContent(keep: ReadonlySet<string>): Promise<string[]> {
    const removed: string[] = []
    const dir = this.#path('content')
    for (const id of (await readdir(dir)).sort()) {
      if (keep.has(id) || this.#fills.pending(id) || this.#inUse.has(id)) continue
      const grave = join(this.#tmp, `gc-${randomBytes(6).toString('hex')}`)
      await rename(join(dir, id), grave)
      await removeTree(grave)
      removed.push(id)
    }
    if (removed.length > 0) this.#logger.debug(`removed ${removed.length} unused content dirs`)
    await pruneBlobViews(this.rootsDir)
    return removed
  }
}
