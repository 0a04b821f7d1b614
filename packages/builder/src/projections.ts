import { mkdir, readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { atomicWriteFile, type Digest } from '@stacker/core'
import { EROFS_WRITER_ID, GZIP_WRITER_ID, writeFsImage, writeTarLayer } from '@stacker/layers'
import type { Descriptor } from '@stacker/oci'
import { CACHE_VERSION } from './cache.js'
import { openChain, type BuildContext } from './context.js'
import { outputKey, type OutputType } from './types.js'

interface ProjectOptions {
  /** Uncompressed tar (overlay_dir and dest-import layers, converted base layers). */
  uncompressed?: boolean
  /** A layer even for an empty content dir (see EMPTY_CONTENT). */
  allowEmpty?: boolean
}

/** The content id of an empty dir: the layer of a build that changed nothing, where the image must
 *  still get one. */
export const EMPTY_CONTENT = 'empty'

/** One content dir written as one layer blob of one output type. */
export interface Projection {
  descriptor: Descriptor
  diffId: Digest
}

/** Names the compressor of compressed tar projections: blobs recorded with another one (pigz,
 *  another default level or zlib build) have other digests, so their records are not reused. */
const TAR_WRITER = GZIP_WRITER_ID

/** The blob of content dir `id` in output type `out`: generated once and remembered in
 *  `<stacker-dir>/projections/`, so adding a layer type later writes only that type's blobs, from the
 *  same filesystem. `undefined` when the content dir is empty (an empty diff adds no layer). */
export function projectContent(
  ctx: BuildContext,
  id: string,
  out: OutputType,
  opts: ProjectOptions = {},
): Promise<Projection | undefined> {
  const sde = ctx.s.sourceDateEpoch ?? 'none'
  const writer =
    out.type === 'tar' && !opts.uncompressed ? `.${TAR_WRITER}` : out.type === 'erofs' ? `.${EROFS_WRITER_ID}` : ''
  const empty = opts.allowEmpty ? '.e' : ''
  const variant = `${outputKey(out)}.${opts.uncompressed ? 'raw' : 'c'}${empty}.${sde}.v${CACHE_VERSION}${writer}`
  const recordFile = join(ctx.s.dirs.stackerDir, 'projections', `${id}.${variant}.json`)
  return ctx.flights.projections.run(recordFile, async () => {
    const r = await generate(ctx, id, out, recordFile, opts)
    // Where upstream keeps a generated layer's content: sha256_<blob digest>/overlay.
    if (r) await ctx.store.setBlobView(r.descriptor.digest, id)
    return r
  })
}

async function generate(
  ctx: BuildContext,
  id: string,
  out: OutputType,
  recordFile: string,
  opts: ProjectOptions,
): Promise<Projection | undefined> {
  try {
    const rec = JSON.parse(await readFile(recordFile, 'utf8')) as { empty?: boolean; projection?: Projection }
    if (rec.empty) return undefined
    if (rec.projection && (await ctx.layout.hasBlob(rec.projection.descriptor.digest))) return rec.projection
  } catch {
    // No record yet, or a corrupt one: generate.
  }
  if (id === EMPTY_CONTENT) await ctx.store.ensureContent(id, async () => {})
  await openChain(ctx, [id])
  const dir = ctx.store.contentPath(id)
  if (!opts.allowEmpty && (await readdir(dir)).length === 0) {
    await atomicWriteFile(recordFile, JSON.stringify({ empty: true }))
    return undefined
  }
  const sde = ctx.s.sourceDateEpoch
  let projection: Projection | undefined
  const progressId = `layer:${id}:${outputKey(out)}`
  const label = `${id.slice(0, 14)} (${out.type})`
  if (out.type === 'tar') {
    let reported = -1
    const r = await writeTarLayer(dir, ctx.layout.createBlobWriter(), {
      compression: opts.uncompressed ? 'none' : (out.tarCompression ?? 'gzip'),
      ...(opts.allowEmpty ? { allowEmpty: true } : {}),
      ...(sde !== undefined ? { sourceDateEpoch: sde } : {}),
      logger: ctx.logger,
      onProgress: (bytes) => {
        // Reported in 1 MiB steps, as pulls and pushes are, so a big layer doesn't flood the logger.
        if (reported >= 0 && bytes - reported < 1 << 20) return
        reported = bytes
        ctx.logger.progress({ id: progressId, kind: 'layer', label, current: bytes })
      },
    })
    if (r) {
      projection = { descriptor: r.descriptor, diffId: r.diffId }
      ctx.logger.progress({ id: progressId, kind: 'layer', label, current: r.uncompressedSize, done: true })
    }
  } else {
    ctx.logger.progress({ id: progressId, kind: 'layer', label, current: 0 })
    const tmp = join(ctx.layout.dir, '.tmp')
    await mkdir(tmp, { recursive: true })
    const r = await writeFsImage(dir, tmp, {
      kind: out.type,
      ...(opts.allowEmpty ? { allowEmpty: true } : {}),
      verity: out.verity,
      ...(sde !== undefined ? { sourceDateEpoch: sde } : {}),
      logger: ctx.logger,
    })
    if (r) {
      const blob = await ctx.layout.putBlobFromFile(r.file, { move: true })
      const descriptor: Descriptor = { mediaType: r.mediaType, digest: blob.digest, size: blob.size }
      if (Object.keys(r.annotations).length) descriptor.annotations = { ...r.annotations }
      // Upstream sets a squashfs/erofs layer's diff_id to its digest: there is no uncompressed form.
      projection = { descriptor, diffId: blob.digest }
      ctx.logger.progress({ id: progressId, kind: 'layer', label, current: blob.size, done: true })
    }
  }
  await atomicWriteFile(recordFile, JSON.stringify(projection ? { projection } : { empty: true }))
  return projection
}
