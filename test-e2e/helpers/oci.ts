// Reads OCI layouts with plain JSON and independent tools (umoci, skopeo), never with @stacker/oci, so
// the project's own writer is checked against something it does not share code with.
import { createReadStream } from 'node:fs'
import { open, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PassThrough, type Readable } from 'node:stream'
import { createGunzip } from 'node:zlib'
import { execa } from 'execa'
import { extract } from 'tar-stream'

export const REF_NAME = 'org.opencontainers.image.ref.name'

export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  annotations?: Record<string, string>
  platform?: { os: string; architecture: string; variant?: string }
  urls?: string[]
}

export interface OciIndex {
  schemaVersion: number
  mediaType?: string
  manifests: Descriptor[]
  annotations?: Record<string, string>
}

export interface OciManifest {
  schemaVersion: number
  mediaType?: string
  config: Descriptor
  layers: Descriptor[]
  annotations?: Record<string, string>
}

export interface OciImageConfig {
  created?: string
  author?: string
  architecture: string
  os: string
  variant?: string
  config?: {
    User?: string
    ExposedPorts?: Record<string, object>
    Env?: string[]
    Entrypoint?: string[] | null
    Cmd?: string[] | null
    Volumes?: Record<string, object>
    WorkingDir?: string
    Labels?: Record<string, string>
    StopSignal?: string
  }
  rootfs: { type: string; diff_ids: string[] }
  history?: { created?: string; created_by?: string; author?: string; comment?: string; empty_layer?: boolean }[]
}

/** Path of a blob in a layout (`sha256:abc` -> `<layout>/blobs/sha256/abc`). */
export function blobPath(layoutDir: string, digest: string): string {
  const [alg, hex] = digest.split(':')
  if (!alg || !hex) throw new Error(`not a digest: ${digest}`)
  return join(layoutDir, 'blobs', alg, hex)
}

export async function readBlobJson<T>(layoutDir: string, digest: string): Promise<T> {
  return JSON.parse(await readFile(blobPath(layoutDir, digest), 'utf8')) as T
}

export async function readIndex(layoutDir: string): Promise<OciIndex> {
  return JSON.parse(await readFile(join(layoutDir, 'index.json'), 'utf8')) as OciIndex
}

/** Tags (ref.name annotations) in index.json order, duplicates kept so tests can catch them. */
export async function indexTags(layoutDir: string): Promise<string[]> {
  return (await readIndex(layoutDir)).manifests.flatMap((m) => {
    const t = m.annotations?.[REF_NAME]
    return t === undefined ? [] : [t]
  })
}

/** The index entry tagged `tag`. Throws listing the tags present if there is none. */
export async function manifestDescriptor(layoutDir: string, tag: string): Promise<Descriptor> {
  const index = await readIndex(layoutDir)
  const d = index.manifests.find((m) => m.annotations?.[REF_NAME] === tag)
  if (!d) {
    const tags = index.manifests.map((m) => m.annotations?.[REF_NAME] ?? '(untagged)')
    throw new Error(`no tag ${tag} in ${layoutDir} (tags: ${tags.join(', ') || 'none'})`)
  }
  return d
}

export async function readManifest(layoutDir: string, tag: string): Promise<OciManifest> {
  return readBlobJson<OciManifest>(layoutDir, (await manifestDescriptor(layoutDir, tag)).digest)
}

export async function readConfig(layoutDir: string, tag: string): Promise<OciImageConfig> {
  const m = await readManifest(layoutDir, tag)
  return readBlobJson<OciImageConfig>(layoutDir, m.config.digest)
}

/** `umoci unpack --image <layout>:<tag> <dest>`; returns `<dest>/rootfs`. Throws with umoci's output on failure. */
export async function umociUnpack(layoutDir: string, tag: string, dest: string): Promise<string> {
  const r = await execa('umoci', ['unpack', '--image', `${layoutDir}:${tag}`, dest], { reject: false, all: true })
  if (r.exitCode !== 0) throw new Error(`umoci unpack ${layoutDir}:${tag} failed:\n${r.all}`)
  return join(dest, 'rootfs')
}

/** `umoci ls --layout <dir>`: the tags umoci sees. */
export async function umociLs(layoutDir: string): Promise<string[]> {
  const r = await execa('umoci', ['ls', '--layout', layoutDir], { reject: false, all: true })
  if (r.exitCode !== 0) throw new Error(`umoci ls ${layoutDir} failed:\n${r.all}`)
  return r.stdout.split('\n').filter((l) => l !== '')
}

export interface SkopeoInspect {
  Digest: string
  Created?: string
  Architecture: string
  Os: string
  Layers: string[]
  Labels: Record<string, string> | null
  Env?: string[]
  [k: string]: unknown
}

/** `skopeo inspect oci:<layout>:<tag>` (or its `--config` output, typed as an image config). */
export async function skopeoInspect(layoutDir: string, tag: string): Promise<SkopeoInspect>
export async function skopeoInspect(layoutDir: string, tag: string, opts: { config: true }): Promise<OciImageConfig>
export async function skopeoInspect(
  layoutDir: string,
  tag: string,
  opts: { config?: boolean } = {},
): Promise<SkopeoInspect | OciImageConfig> {
  const args = ['inspect', ...(opts.config ? ['--config'] : []), `oci:${layoutDir}:${tag}`]
  const r = await execa('skopeo', args, { reject: false, all: true })
  if (r.exitCode !== 0) throw new Error(`skopeo ${args.join(' ')} failed:\n${r.all}`)
  return JSON.parse(r.stdout) as SkopeoInspect | OciImageConfig
}

export interface TarEntry {
  name: string
  type: string
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number | undefined
  /** Target of a symlink or hardlink, else undefined. */
  linkname: string | undefined
  devmajor: number | undefined
  devminor: number | undefined
  /** PAX records (xattrs show up as `SCHILY.xattr.<name>`). */
  pax: Record<string, string> | undefined
  /** File content, when asked for with `withContent`. */
  content?: Buffer
}

const GZIP = Buffer.from([0x1f, 0x8b])
const ZSTD = Buffer.from([0x28, 0xb5, 0x2f, 0xfd])

async function magic(path: string): Promise<Buffer> {
  const fh = await open(path, 'r')
  try {
    const b = Buffer.alloc(4)
    const { bytesRead } = await fh.read(b, 0, 4, 0)
    return b.subarray(0, bytesRead)
  } finally {
    await fh.close()
  }
}

/** A plain tar stream of a tar, tar+gzip or tar+zstd file (compression found from its magic bytes). */
async function tarStream(path: string): Promise<{ stream: Readable; done: () => Promise<void> }> {
  const m = await magic(path)
  if (m.subarray(0, 2).equals(GZIP))
    return { stream: createReadStream(path).pipe(createGunzip()), done: async () => {} }
  if (m.equals(ZSTD)) {
    // Node 20's zlib has no zstd; the zstd tool does.
    const child = execa('zstd', ['-dc', path], { buffer: false, stderr: 'pipe' })
    const out = child.stdout.pipe(new PassThrough())
    return {
      stream: out,
      done: async () => {
        await child
      },
    }
  }
  return { stream: createReadStream(path), done: async () => {} }
}

/** Entries of a tar file (a layer blob or any tar, gzip/zstd/plain), in archive order. */
export async function tarFileEntries(path: string, opts: { withContent?: boolean } = {}): Promise<TarEntry[]> {
  const { stream, done } = await tarStream(path)
  const ex = extract()
  stream.on('error', (e) => ex.destroy(e))
  stream.pipe(ex)
  const out: TarEntry[] = []
  for await (const entry of ex) {
    const h = entry.header as typeof entry.header & { pax?: Record<string, string> | null }
    const chunks: Buffer[] = []
    for await (const c of entry) if (opts.withContent) chunks.push(c as Buffer)
    const e: TarEntry = {
      name: h.name,
      type: h.type ?? 'file',
      mode: h.mode ?? 0,
      uid: h.uid ?? 0,
      gid: h.gid ?? 0,
      size: h.size ?? 0,
      mtime: h.mtime ? Math.floor(h.mtime.getTime() / 1000) : undefined,
      linkname: h.linkname ?? undefined,
      devmajor: h.devmajor,
      devminor: h.devminor,
      pax: h.pax ?? undefined,
    }
    if (opts.withContent) e.content = Buffer.concat(chunks)
    out.push(e)
  }
  await done()
  return out
}

/** Entries of the layer blob `digest` of a layout. */
export async function layerTarEntries(
  layoutDir: string,
  digest: string,
  opts: { withContent?: boolean } = {},
): Promise<TarEntry[]> {
  return tarFileEntries(blobPath(layoutDir, digest), opts)
}

/** The manifest digest of every tag in the layout's index (`?` for an entry without a ref name). */
export async function tagDigests(layoutDir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  for (const m of (await readIndex(layoutDir)).manifests) out[m.annotations?.[REF_NAME] ?? '?'] = m.digest
  return out
}
