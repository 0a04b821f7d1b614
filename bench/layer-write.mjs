#!/usr/bin/env node
// Times one layer operation of the project's layer code, without the rest of a build: the layer
// generation and extraction throughput the benchmark compares with umoci and mksquashfs.
//
//   node bench/layer-write.mjs tar <gzip|zstd|none> <tree> <out-file> [level]
//   node bench/layer-write.mjs squashfs <tree> <out-dir> [level]
//   node bench/layer-write.mjs extract <blob> <target-dir>
//
// Prints one JSON line: {"ms": ..., "size": ..., "digest": ...}.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { open, rename, rm, stat } from 'node:fs/promises'

const layers = await import(new URL('../packages/layers/dist/index.js', import.meta.url).href)

/** A BlobSink writing to a plain file, hashing as it goes. */
async function fileSink(path) {
  const fh = await open(path, 'w')
  const hash = createHash('sha256')
  let size = 0
  return {
    async write(chunk) {
      hash.update(chunk)
      size += chunk.byteLength
      await fh.write(chunk)
    },
    async commit() {
      await fh.close()
      return { digest: `sha256:${hash.digest('hex')}`, size }
    },
    async abort() {
      await fh.close().catch(() => {})
      await rm(path, { force: true })
    },
  }
}

const [mode, ...args] = process.argv.slice(2)
const t0 = performance.now()
let out
if (mode === 'tar') {
  const [compression, tree, file, level] = args
  const r = await layers.writeTarLayer(tree, await fileSink(file), {
    compression,
    sourceDateEpoch: 1700000000,
    ...(level ? { level: Number(level) } : {}),
  })
  out = { size: r.descriptor.size, digest: r.descriptor.digest, uncompressed: r.uncompressedSize }
} else if (mode === 'squashfs') {
  const [tree, dir, level] = args
  const r = await layers.writeFsImage(tree, dir, {
    kind: 'squashfs',
    verity: false,
    sourceDateEpoch: 1700000000,
    ...(level ? { compressionLevel: Number(level) } : {}),
  })
  await rename(r.file, `${dir}/layer.squashfs`)
  out = { size: r.size }
} else if (mode === 'extract') {
  const [blob, dir] = args
  const r = await layers.extractTarLayer(createReadStream(blob), dir, { whiteouts: 'overlay', compression: 'auto' })
  out = { entries: r.entries, size: (await stat(blob)).size }
} else {
  process.stderr.write('usage: layer-write.mjs tar|squashfs|extract ...\n')
  process.exit(2)
}
out.ms = Math.round(performance.now() - t0)
process.stdout.write(`${JSON.stringify(out)}\n`)
