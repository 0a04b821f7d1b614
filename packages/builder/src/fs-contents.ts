import { link, mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { atomicWriteFile, onCleanup, StackerError, type Logger } from '@stacker/core'
import { openFsImage, parseOpenPolicy, type MountedFsImage } from '@stacker/layers'
import { Annotations, type Descriptor, type OciLayout } from '@stacker/oci'
import type { OverlayStore } from '@stacker/overlay'
import { execa } from 'execa'
import { DIFF_PREFIX } from './content.js'
import { materialisePulled } from './pulled-contents.js'
import { copyTree, exists } from './util.js'

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
  if (!(await exists(blob))) {
    try {
      await link(layout.blobPath(d.digest), `${blob}.tmp`)
    } catch {
      await copyTree(layout.blobPath(d.digest), `${blob}.tmp`)
    }
    const { rename } = await import('node:fs/promises')
    await rename(`${blob}.tmp`, blob)
  }
  const hash = d.annotations?.[Annotations.verityRootHash]
  const rec: FsImageRecord = { mediaType: d.mediaType, ...(hash !== undefined ? { verityRootHash: hash } : {}) }
  if (!(await exists(`${blob}.json`))) await atomicWriteFile(`${blob}.json`, JSON.stringify(rec))
  return id
}

const opened = new Map<string, Promise<MountedFsImage | undefined>>()

async function isMountPoint(path: string): Promise<boolean> {
  const r = await execa('mountpoint', ['-q', path], { reject: false })
  return r.exitCode === 0
}

/** Makes sure every image-backed content of `chain` is readable in the store, opening it for the life
 *  of this process if needed. Cheap when already open. */
export async function openChainContents(
  opts: { stackerDir: string; store: OverlayStore; logger: Logger },
  chain: readonly string[],
): Promise<void> {
  for (const id of chain) {
    if (!id.startsWith(FSIMAGE_PREFIX)) {
      // Diffs found in the shared cache are extracted by their first reader (pulled-contents.ts).
      if (id.startsWith(DIFF_PREFIX) && !(await opts.store.hasContent(id))) await materialisePulled(opts, id)
      continue
    }
    let p = opened.get(id)
    if (!p) {
      p = openOne(opts, id)
      opened.set(id, p)
      p.catch(() => opened.delete(id))
    }
    await p
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
    // Extracted content stays: it is a plain content dir from now on.
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

/** Releases every image opened by this process. */
export async function closeChainContents(): Promise<void> {
  const all = [...opened.values()]
  opened.clear()
  for (const p of all) {
    const m = await p.catch(() => undefined)
    await m?.release()
  }
}
