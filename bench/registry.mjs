#!/usr/bin/env node
// Registry throughput: this project's registry client (packages/registry, what `stacker build` uses
// for a `docker://` base and `stacker publish` for a `docker://` destination) against `skopeo copy`,
// pushing and pulling the same image to and from Debian's docker-registry on 127.0.0.1.
//
//   node bench/registry.mjs [--quick] [--reps N] [--json FILE] [--profile DIR] [--client DIST]
//
// The image (three tar+gzip layers of a tree that is half random bytes, half text in small files;
// 1 GiB of tree, or 100 MiB with --quick) is made offline once and kept in bench/.work/registry.
// Each repetition runs both tools in turn. Push: the registry's storage is wiped before every push,
// so no blob is skipped or mounted. Pull: into a fresh OCI layout every time, from a registry seeded
// once. Our side runs as `node bench/registry.mjs ours-push|ours-pull ...`, a process that imports
// only packages/oci and packages/registry (no CLI start-up, no build logic): the client itself.
//
// --client DIST runs our side with another build of packages/registry (its dist directory), to
// compare two versions of the client.
//
// Wall time is the whole process, for both; "in-process" is our client's own time without node's
// start-up and module loading.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createWriteStream, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { mkdir, rename, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { makeTree } from './trees.mjs'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const SELF = fileURLToPath(import.meta.url)
const WORK = join(ROOT, 'bench', '.work')
const DIR = join(WORK, 'registry')
const MB = 1 << 20
const say = (s) => process.stderr.write(`registry bench: ${s}\n`)

// ---------------------------------------------------------------- our side, as a child process

async function ours(mode, args) {
  const t0 = performance.now()
  const { OciLayout } = await import(new URL('../packages/oci/dist/index.js', import.meta.url).href)
  // STACKER_BENCH_CLIENT (set by --client) names another build of packages/registry, to compare.
  const clientDir =
    process.env.STACKER_BENCH_CLIENT ?? fileURLToPath(new URL('../packages/registry/dist', import.meta.url))
  const reg = await import(pathToFileURL(join(clientDir, 'index.js')).href)
  const t1 = performance.now()
  if (mode === 'ours-push') {
    const [layoutDir, tag, dest] = args
    const ref = reg.parseImageRef(dest)
    const client = new reg.RegistryClient(ref, { insecure: true })
    const layout = await OciLayout.open(layoutDir)
    await reg.pushImage({ layout, source: tag, ref, tags: [ref.tag], client })
    client.close()
  } else {
    const [src, layoutDir, tag] = args
    const ref = reg.parseImageRef(src)
    const client = new reg.RegistryClient(ref, { insecure: true })
    const layout = await OciLayout.open(layoutDir, { create: true })
    await reg.pullImage({ ref, layout, tag, client })
    client.close()
  }
  const t2 = performance.now()
  process.stdout.write(`${JSON.stringify({ loadMs: Math.round(t1 - t0), ms: Math.round(t2 - t1) })}\n`)
}

// ---------------------------------------------------------------- the image

/** Runs `tar` over `paths` of `tree` into gzip (pigz, or node's zlib), hashing both sides. */
async function gzipLayer(tree, paths, out) {
  const tar = spawn(
    'tar',
    [
      '--sort=name',
      '--owner=0',
      '--group=0',
      '--numeric-owner',
      '--mtime=@1700000000',
      '-C',
      tree,
      '-cf',
      '-',
      ...paths,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  const gz = spawn('pigz', ['-n', '-6'], { stdio: ['pipe', 'pipe', 'inherit'] })
  const diff = createHash('sha256')
  const blob = createHash('sha256')
  let size = 0
  tar.stdout.on('data', (c) => diff.update(c))
  tar.stdout.pipe(gz.stdin)
  const file = createWriteStream(out)
  gz.stdout.on('data', (c) => {
    blob.update(c)
    size += c.length
  })
  gz.stdout.pipe(file)
  const exited = (p, name) =>
    new Promise((res, rej) => p.on('close', (code) => (code === 0 ? res() : rej(new Error(`${name} exited ${code}`)))))
  await Promise.all([exited(tar, 'tar'), exited(gz, 'pigz'), new Promise((r) => file.on('close', r))])
  return { digest: `sha256:${blob.digest('hex')}`, size, diffId: `sha256:${diff.digest('hex')}` }
}

async function putBlob(layout, bytes) {
  const hex = createHash('sha256').update(bytes).digest('hex')
  await writeFile(join(layout, 'blobs', 'sha256', hex), bytes)
  return { digest: `sha256:${hex}`, size: bytes.length }
}

/** An OCI layout at DIR/image with one image tagged `img`: three gzip layers (the first and second
 *  halves of the tree's random files, then its text files). Reused while its size matches. */
async function makeImage(bytes) {
  const layout = join(DIR, 'image')
  const stamp = join(layout, '.bench-image')
  const want = JSON.stringify({ bytes, v: 1 })
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === want) return layout
  // Half random, half text, like the trees of the other workloads; the text compresses about 3.5
  // times, so a tree of 1.5 times the size gives an image of about the size asked for.
  const tree = join(DIR, 'tree')
  say(`making a tree of ${(bytes * 1.5) / MB} MiB`)
  await makeTree(tree, { bytes: Math.round(bytes * 1.5) })
  say('making the image')
  await rm(layout, { recursive: true, force: true })
  await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true })
  await writeFile(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}')
  const bins = readdirSync(join(tree, 'bin')).sort()
  const half = Math.ceil(bins.length / 2)
  const parts = [bins.slice(0, half).map((f) => `bin/${f}`), bins.slice(half).map((f) => `bin/${f}`), ['src']]
  const layers = []
  for (const [i, paths] of parts.entries()) {
    if (paths.length === 0) continue
    const tmp = join(layout, `layer${i}.tmp`)
    const l = await gzipLayer(tree, paths, tmp)
    await rename(tmp, join(layout, 'blobs', 'sha256', l.digest.slice(7)))
    layers.push(l)
  }
  const config = {
    architecture: 'amd64',
    os: 'linux',
    created: '2023-11-14T22:13:20Z',
    config: {},
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map(() => ({ created: '2023-11-14T22:13:20Z', created_by: 'bench' })),
  }
  const cfg = await putBlob(layout, Buffer.from(JSON.stringify(config)))
  const manifest = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...cfg },
    layers: layers.map((l) => ({
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
      digest: l.digest,
      size: l.size,
    })),
  }
  const m = await putBlob(layout, Buffer.from(JSON.stringify(manifest)))
  const index = {
    schemaVersion: 2,
    manifests: [
      {
        mediaType: manifest.mediaType,
        ...m,
        annotations: { 'org.opencontainers.image.ref.name': 'img' },
      },
    ],
  }
  await writeFile(join(layout, 'index.json'), JSON.stringify(index))
  await writeFile(stamp, want)
  return layout
}

function imageInfo(layout) {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'))
  const m = index.manifests[0]
  const manifest = JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', m.digest.slice(7)), 'utf8'))
  const bytes = [manifest.config, ...manifest.layers].reduce((n, d) => n + d.size, 0)
  return { digest: m.digest, bytes, layers: manifest.layers.map((l) => l.size) }
}

// ---------------------------------------------------------------- the registry

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer()
    s.on('error', rej)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => res(port))
    })
  })
}

async function answers(url) {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(1000) })
    await r.arrayBuffer()
    return true
  } catch {
    return false
  }
}

/** docker-registry on a free loopback port, plain http, storage in BASE/reg/data (no blob
 *  descriptor cache, so wiping the storage between runs leaves nothing behind). */
export async function startRegistry(base = DIR) {
  const dir = join(base, 'reg')
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  const data = join(dir, 'data')
  const port = await freePort()
  const host = `127.0.0.1:${port}`
  await writeFile(
    join(dir, 'config.yml'),
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${data}\n  delete:\n    enabled: true\nhttp:\n  addr: ${host}\n  secret: bench\n`,
  )
  const log = join(dir, 'registry.log')
  const child = spawn('docker-registry', ['serve', join(dir, 'config.yml')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const logStream = createWriteStream(log)
  child.stderr.pipe(logStream)
  let exited = false
  child.on('exit', () => {
    exited = true
  })
  const stop = () => {
    if (!exited) child.kill('SIGTERM')
  }
  process.on('exit', stop)
  for (let i = 0; !(await answers(`http://${host}/v2/`)); i++) {
    if (exited || i > 100) {
      stop()
      throw new Error(`docker-registry did not start on ${host}: ${readFileSync(log, 'utf8').slice(-500)}`)
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  return {
    host,
    async wipe() {
      await rm(data, { recursive: true, force: true })
    },
    async stop() {
      stop()
      if (!exited) await new Promise((r) => child.on('exit', r))
      process.off('exit', stop)
      await rm(dir, { recursive: true, force: true })
    },
  }
}

// ---------------------------------------------------------------- measuring

const hasTime = existsSync('/usr/bin/time')

/** Runs argv; wall seconds from this process's clock, peak RSS (MiB) from GNU time when there. */
function measure(argv) {
  const timeFile = join(DIR, 'time.out')
  const full = hasTime ? ['/usr/bin/time', '-f', '%M', '-o', timeFile, ...argv] : argv
  const t0 = process.hrtime.bigint()
  const r = spawnSync(full[0], full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' })
  const wall = Number(process.hrtime.bigint() - t0) / 1e9
  if (r.status !== 0)
    throw new Error(`${argv.join(' ')} failed (${r.status}):\n${`${r.stdout}${r.stderr}`.slice(-1500)}`)
  const rss = hasTime ? Number(readFileSync(timeFile, 'utf8').trim().split('\n').pop()) / 1024 : Number.NaN
  let inProcess
  try {
    inProcess = JSON.parse(r.stdout.trim().split('\n').pop()).ms / 1000
  } catch {}
  return { wall, rss, inProcess }
}

function median(xs) {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b)
  const n = s.length
  if (n === 0) return Number.NaN
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
}

/** The manifest digest a tag names in the registry. */
async function remoteDigest(host, repo, tag) {
  const r = await fetch(`http://${host}/v2/${repo}/manifests/${tag}`, {
    method: 'HEAD',
    headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' },
  })
  return r.headers.get('docker-content-digest')
}

function layoutDigest(dir, tag) {
  const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'))
  const d = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)
  if (!d) throw new Error(`no tag ${tag} in ${dir}`)
  const m = JSON.parse(readFileSync(join(dir, 'blobs', 'sha256', d.digest.slice(7)), 'utf8'))
  for (const b of [m.config, ...m.layers]) {
    const st = statSync(join(dir, 'blobs', 'sha256', b.digest.slice(7)))
    if (st.size !== b.size) throw new Error(`${dir}: blob ${b.digest} is ${st.size} bytes, not ${b.size}`)
  }
  return d.digest
}

const SKOPEO = ['skopeo', 'copy', '--quiet', '--insecure-policy']

/** Runs the benchmark; `profileDir` gets a CPU profile of each run of our side (node --cpu-prof). */
export async function runRegistryBench({ quick = false, reps = 3, profileDir } = {}) {
  const node = profileDir ? ['node', '--cpu-prof', '--cpu-prof-dir', profileDir] : ['node']
  for (const tool of ['skopeo', 'docker-registry', 'pigz', 'tar']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is needed`)
  }
  for (const pkg of ['oci', 'registry'])
    if (!existsSync(join(ROOT, 'packages', pkg, 'dist', 'index.js')))
      throw new Error(`packages/${pkg} is not built (pnpm run build)`)
  await mkdir(DIR, { recursive: true })
  const layout = await makeImage(quick ? 100 * MB : 1024 * MB)
  const img = imageInfo(layout)
  say(
    `image: ${(img.bytes / MB).toFixed(1)} MiB in layers of ${img.layers.map((s) => (s / MB).toFixed(1)).join(', ')} MiB`,
  )
  const reg = await startRegistry()
  const rows = { push: { skopeo: [], ours: [] }, pull: { skopeo: [], ours: [] } }
  const dest = join(DIR, 'pulled')
  try {
    for (let rep = 1; rep <= reps; rep++) {
      await reg.wipe()
      const sk = measure([
        ...SKOPEO,
        '--dest-tls-verify=false',
        `oci:${layout}:img`,
        `docker://${reg.host}/push/skopeo:r${rep}`,
      ])
      rows.push.skopeo.push(sk)
      await reg.wipe()
      const ou = measure([...node, SELF, 'ours-push', layout, 'img', `docker://${reg.host}/push/ours:r${rep}`])
      rows.push.ours.push(ou)
      if ((await remoteDigest(reg.host, 'push/ours', `r${rep}`)) !== img.digest)
        throw new Error('our push left another manifest digest in the registry')
      say(`push rep ${rep}: skopeo ${sk.wall.toFixed(2)} s, ours ${ou.wall.toFixed(2)} s`)
    }
    await reg.wipe()
    execFileSync(SKOPEO[0], [
      ...SKOPEO.slice(1),
      '--dest-tls-verify=false',
      `oci:${layout}:img`,
      `docker://${reg.host}/pull/img:latest`,
    ])
    for (let rep = 1; rep <= reps; rep++) {
      await rm(dest, { recursive: true, force: true })
      const sk = measure([
        ...SKOPEO,
        '--src-tls-verify=false',
        `docker://${reg.host}/pull/img:latest`,
        `oci:${dest}:img`,
      ])
      rows.pull.skopeo.push(sk)
      if (layoutDigest(dest, 'img') !== img.digest) throw new Error('skopeo pulled another manifest')
      await rm(dest, { recursive: true, force: true })
      const ou = measure([...node, SELF, 'ours-pull', `docker://${reg.host}/pull/img:latest`, dest, 'img'])
      rows.pull.ours.push(ou)
      if (layoutDigest(dest, 'img') !== img.digest) throw new Error('our pull stored another manifest')
      say(`pull rep ${rep}: skopeo ${sk.wall.toFixed(2)} s, ours ${ou.wall.toFixed(2)} s`)
    }
  } finally {
    await rm(dest, { recursive: true, force: true })
    await reg.stop()
  }
  const out = { imageBytes: img.bytes, layers: img.layers.length, reps, results: {} }
  for (const op of ['push', 'pull']) {
    for (const tool of ['skopeo', 'ours']) {
      const ms = rows[op][tool]
      out.results[`${op} ${tool}`] = {
        walls: ms.map((m) => m.wall),
        rss: ms.map((m) => m.rss),
        inProcess: ms.map((m) => m.inProcess).filter((x) => x !== undefined),
      }
    }
  }
  return out
}

export function report(out) {
  const mbps = (s) => (Number.isFinite(s) && s > 0 ? (out.imageBytes / MB / s).toFixed(0) : '-')
  const lines = [
    `image: ${(out.imageBytes / MB).toFixed(1)} MiB in ${out.layers} layers; ${out.reps} repetitions; medians`,
    '',
    '| operation | tool | median s | MiB/s | in-process s | peak RSS MiB | ours / skopeo |',
    '|---|---|---:|---:|---:|---:|---:|',
  ]
  for (const op of ['push', 'pull']) {
    const sk = median(out.results[`${op} skopeo`].walls)
    for (const [tool, name] of [
      ['skopeo', 'skopeo copy'],
      ['ours', 'stacker registry client'],
    ]) {
      const r = out.results[`${op} ${tool}`]
      const w = median(r.walls)
      const ip = median(r.inProcess)
      lines.push(
        `| ${op} | ${name} | ${w.toFixed(3)} | ${mbps(w)} | ${Number.isFinite(ip) ? ip.toFixed(3) : '-'} | ${Math.max(...r.rss).toFixed(0)} | ${tool === 'ours' ? `${(w / sk).toFixed(2)}x` : ''} |`,
      )
    }
  }
  return lines.join('\n')
}

async function main() {
  const [mode, ...rest] = process.argv.slice(2)
  if (mode === 'ours-push' || mode === 'ours-pull') return ours(mode, rest)
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      reps: { type: 'string', default: '3' },
      json: { type: 'string' },
      profile: { type: 'string' },
      client: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  })
  if (values.help) {
    process.stdout.write(
      'usage: node bench/registry.mjs [--quick] [--reps N] [--json FILE] [--profile DIR] [--client DIST]\n',
    )
    return
  }
  const reps = Number.parseInt(values.reps, 10)
  if (!(reps >= 1)) throw new Error(`invalid --reps ${values.reps}`)
  if (values.client) process.env.STACKER_BENCH_CLIENT = resolve(values.client)
  const out = await runRegistryBench({
    quick: values.quick,
    reps,
    ...(values.profile ? { profileDir: resolve(values.profile) } : {}),
  })
  if (values.json) writeFileSync(values.json, JSON.stringify(out))
  process.stdout.write(`${report(out)}\n`)
}

if (process.argv[1] && resolve(process.argv[1]) === SELF) {
  main().catch((e) => {
    process.stderr.write(`registry bench: ${e.stack ?? e}\n`)
    process.exitCode = 1
  })
}
