import { link, mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { atomicWriteFile, KeptResults, onCleanup, StackerError, type Logger, pathExists } from '@stacker/core'
import { openFsImage, parseOpenPolicy, type MountedFsImage } from '@stacker/layers'
import { Annotations, type Descriptor, layerKind, type OciLayout } from '@stacker/oci'
import type { OverlayStore } from '@stacker/overlay'
import { execa } from 'execa'
import { hashFile } from './hashing.js'
import { materialisePulled } from './pulled-contents.js'
import { copyTree } from './util.js'

/** squashfs/erofs base layers are not extracted: their content dir is where the image is opened
 *  (kernel mount, squashfuse, or unsquashfs as the last resort), following
 *  STACKER_SQUASHFS_EXTRACT_POLICY like upstream. Ids of such contents start with `fsimg_`; the blob
 *  is kept in `<stacker-dir>/layer-bases/fsimg/` so later builds, chroot and grab can open it again. */
export const FSIMAGE_PREFIX = 'fsimg_'

interface FsImageRecord {
  mediaType: string
  verityRootHash?: string
  /** Set when the content was extracted (no mount): nothing to open any more. */
  extracted?: boolean
}

/** The content id of a base layer blob: tar layers are extracted into `sha256_<hex>`, squashfs and
 *  erofs ones are opened in place as `fsimg_<hex>`. */
export function contentIdForBlob(d: Descriptor): string {
  if (layerKind(d.mediaType) !== 'tar') return fsImageContentId(d)
  return `sha256_${d.digest.slice(d.digest.indexOf(':') + 1)}`
}

export function fsImageContentId(d: Descriptor): string {
  return `${FSIMAGE_PREFIX}${d.digest.slice(d.digest.indexOf(':') + 1)}`
}

function recordDir(stackerDir: string): string {
  return join(stackerDir, 'layer-bases', 'fsimg')
}

/** Keeps a base layer's blob and description so its content can be opened later. */
export async function registerFsImage(stackerDir: string, layout: OciLayout, d: Descriptor): Promise<string> {
  const id = fsImageContentId(d)
  const dir = recordDir(stackerDir)
  await mkdir(dir, { recursive: true })
  const blob = join(dir, id)
  if (!(await pathExists(blob))) {
    try {
      await link(layout.blobPath(d.digest), `${blob}.tmp`)
    } catch {
      await copyTree(layout.blobPath(d.digest), `${blob}.tmp`)
    }
    // Kept under its digest for every later build: a corrupt blob must not get in (it would fail
    // each of them, its verity check included, until the stacker dir is removed).
    const actual = await hashFile(`${blob}.tmp`)
    const { rename, rm } = await import('node:fs/promises')
    if (actual !== d.digest) {
      await rm(`${blob}.tmp`, { force: true })
      throw new StackerError('DIGEST', `blob ${d.digest} is corrupt: ${layout.blobPath(d.digest)} has digest ${actual}`)
    }
    await rename(`${blob}.tmp`, blob)
  }
  const hash = d.annotations?.[Annotations.verityRootHash]
  const rec: FsImageRecord = { mediaType: d.mediaType, ...(hash !== undefined ? { verityRootHash: hash } : {}) }
  if (!(await pathExists(`${blob}.json`))) await atomicWriteFile(`${blob}.json`, JSON.stringify(rec))
  return id
}

async function isMountPoint(path: string): Promise<boolean> {
  const r = await execa('mountpoint', ['-q', path], { reject: false })
  return r.exitCode === 0
}

/** The squashfs/erofs base contents one command has opened: each is opened once, on first use, and
 *  stays open until closeAll (which the command calls on every exit path). */
export class OpenedImages {
  readonly #opened = new KeptResults<string, MountedFsImage | undefined>()
  readonly #materialised = new KeptResults<string, void>()
  readonly #opts: { stackerDir: string; store: OverlayStore; logger: Logger }

  constructor(opts: { stackerDir: string; store: OverlayStore; logger: Logger }) {
    this.#opts = opts
  }

  /** Makes sure every image-backed content of `chain` is readable in the store. Cheap when open. */
  async open(chain: readonly string[], logger: Logger = this.#opts.logger): Promise<void> {
    for (const id of chain) {
      if (!id.startsWith(FSIMAGE_PREFIX)) {
        // Diffs found in the shared cache and base image layers are extracted by their first
        // reader (pulled-contents.ts), once: a second reader waits for the first.
        if (!(await this.#opts.store.hasContent(id)))
          await this.#materialised.run(id, () => materialisePulled({ ...this.#opts, logger }, id))
        continue
      }
      await this.#opened.run(id, () => openOne({ ...this.#opts, logger }, id))
    }
  }

  /** Releases every image opened here. */
  async closeAll(): Promise<void> {
    for (const p of this.#opened.takeAll()) {
      const m = await p.catch(() => undefined)
      await m?.release()
    }
  }
}

async function openOne(
  opts: { stackerDir: string; store: OverlayStore; logger: Logger },
  id: string,
): Promise<MountedFsImage | undefined> {
  const blob = join(recordDir(opts.stackerDir), id)
  let rec: FsImageRecord
  try {
    rec = JSON.parse(await readFile(`${blob}.json`, 'utf8')) as FsImageRecord
  } catch {
    throw new StackerError(
      'NOT_FOUND',
      `the image of base layer ${id} is missing from ${recordDir(opts.stackerDir)}; rebuild with --no-cache`,
    )
  }
  if (rec.extracted && (await opts.store.hasContent(id))) return undefined
  const target = opts.store.contentPath(id)
  await opts.store.ensureContent(id, async () => {})
  // A mount left by a killed process still shows the right content; drop it and open afresh.
  if (await isMountPoint(target)) await execa('umount', ['-l', target], { reject: false })
  const envPolicy = process.env.STACKER_SQUASHFS_EXTRACT_POLICY
  const m = await openFsImage(blob, target, {
    mediaType: rec.mediaType,
    ...(rec.verityRootHash !== undefined ? { verityRootHash: rec.verityRootHash } : {}),
    ...(envPolicy ? { policy: parseOpenPolicy(envPolicy) } : {}),
    logger: opts.logger,
  })
  opts.logger.debug(`opened ${id} by ${m.method}`)
  if (m.method === 'extract') {
    // Extracted content stays: it is a plain content dir from now on, which the end of this
    // process must not empty.
    m.keep()
    await atomicWriteFile(`${blob}.json`, JSON.stringify({ ...rec, extracted: true }))
    return undefined
  }
  const undo = onCleanup(() => m.release())
  return {
    ...m,
    release: async () => {
      undo()
      await m.release()
    },
  }
}
