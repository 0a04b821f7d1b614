#!/usr/bin/env node
// The benchmark suite: runs each workload with this project and with its peers on the same inputs,
// alternating tools within each repetition, and prints medians, ratios and peak RSS. Rewrites
// bench/RESULTS.md (keeping any "squashfs level" section in it).
//
//   node bench/run.mjs [--reps N] [--only W1,W3] [--quick] [--no-results]
//
// Needs root (overlay mounts, runc, chroot), the tools scripts/bootstrap installs, and buildah and
// GNU time, which it installs with apt-get when they are missing.
import { execFileSync, spawnSync } from 'node:child_process'
import { cpus, totalmem } from 'node:os'
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { cp, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { makeTree } from './trees.mjs'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const BENCH = join(ROOT, 'bench')
const WORK = join(BENCH, '.work')
const LOGS = join(WORK, 'logs')
const STACKER = join(ROOT, 'apps/stacker/bin/stacker')
const LAYER_WRITE = join(BENCH, 'layer-write.mjs')
const MB = 1 << 20

const { values: flags } = parseArgs({
  options: {
    reps: { type: 'string', default: '3' },
    only: { type: 'string' },
    quick: { type: 'boolean', default: false },
    'no-results': { type: 'boolean', default: false },
    update: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
})
if (flags.help) {
  process.stdout.write(
    'usage: node bench/run.mjs [--reps N] [--only W1,W2,W3,W4,W5,R,S] [--quick] [--no-results] [--update]\n',
  )
  process.exit(0)
}
const REPS = Number.parseInt(flags.reps, 10)
if (!(REPS >= 1)) throw new Error(`invalid --reps ${flags.reps}`)
const ONLY = new Set((flags.only ?? 'W1,W2,W3,W4,W5,R,S').split(',').map((s) => s.trim().toUpperCase()))
const QUICK = flags.quick

// Sizes: full, or a tenth of them with --quick.
const SIZE = QUICK
  ? { stepBytes: 5 * MB, w3: 100 * MB, w5: 12 * MB, rss: 200 * MB }
  : { stepBytes: 50 * MB, w3: 1024 * MB, w5: 120 * MB, rss: 2048 * MB }

const say = (s) => process.stderr.write(`bench: ${s}\n`)
// Read once, before any workload runs: what the results say the CLI was.
const CLI_FORM = await cliForm()

// ---------------------------------------------------------------- tools and measurement

function sh(cmd, opts = {}) {
  return execFileSync('sh', ['-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts })
}

function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0
}

function aptInstall(pkg) {
  say(`installing ${pkg} with apt-get`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const r = spawnSync('apt-get', ['install', '-y', '-qq', pkg], { env, encoding: 'utf8' })
  if (r.status !== 0) {
    spawnSync('apt-get', ['update', '-qq'], { env })
    const r2 = spawnSync('apt-get', ['install', '-y', '-qq', pkg], { env, encoding: 'utf8' })
    if (r2.status !== 0) return `${r2.stderr || r2.stdout}`.trim().split('\n').pop()
  }
  return undefined
}

let logSeq = 0

/**
 * Runs `cmd` (argv) under GNU time and returns wall seconds (from this process's clock) and the
 * peak RSS in MiB of the largest process it ran (GNU time's %M: the maximum over waited-for
 * descendants). Throws, naming the log, when the command fails.
 */
function measure(label, argv, opts = {}) {
  const log = join(LOGS, `${String(++logSeq).padStart(3, '0')}-${label.replace(/[^\w.-]+/g, '_')}.log`)
  const timeFile = `${log}.time`
  const t0 = process.hrtime.bigint()
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M', '-o', timeFile, ...argv], {
    cwd: opts.cwd ?? WORK,
    env: { ...process.env, ...(opts.env ?? {}) },
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 256 * MB,
  })
  const wall = Number(process.hrtime.bigint() - t0) / 1e9
  const output = `$ ${argv.join(' ')}\n${r.stdout ?? ''}${r.stderr ?? ''}`
  writeFileSync(log, output)
  if (r.status !== 0) throw new Error(`${label} failed (exit ${r.status}); see ${log}:\n${output.slice(-1500)}`)
  const [, rssKb] = readFileSync(timeFile, 'utf8').trim().split('\n').pop().split(' ')
  return { wall, rss: Number(rssKb) / 1024, stdout: r.stdout.toString() }
}

const shArgv = (script) => ['sh', '-ec', script]

// ---------------------------------------------------------------- results

/** rows: workload -> tool -> {walls: [], rss: [], extra} */
const results = new Map()
const notes = []
const failures = []

function record(workload, tool, m, extra = {}) {
  if (!results.has(workload)) results.set(workload, new Map())
  const w = results.get(workload)
  if (!w.has(tool)) w.set(tool, { walls: [], rss: [], extra: {} })
  const row = w.get(tool)
  row.walls.push(m.wall)
  row.rss.push(m.rss)
  Object.assign(row.extra, extra)
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const n = s.length
  if (n === 0) return Number.NaN
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
}

function med(workload, tool) {
  const row = results.get(workload)?.get(tool)
  return row ? median(row.walls) : Number.NaN
}

/** Runs `body` for each tool in turn, `REPS` times, so slow drifts of the machine hit all alike. */
async function alternate(workload, tools) {
  for (let rep = 1; rep <= REPS; rep++) {
    for (const t of tools) {
      if (t.skip || rep > (t.maxReps ?? REPS)) continue
      try {
        await t.setup?.(rep)
        const m = measure(`${workload}-${t.name}-r${rep}`, t.argv(rep), t.opts ?? {})
        const extra = (await t.after?.(m, rep)) ?? {}
        record(workload, t.name, m, extra)
        say(`${workload} ${t.name} rep ${rep}: ${m.wall.toFixed(2)} s, ${m.rss.toFixed(0)} MiB`)
      } catch (e) {
        say(`${workload} ${t.name} rep ${rep} FAILED: ${e.message.split('\n')[0]}`)
        failures.push(`${workload} ${t.name}: ${e.message.split('\n')[0]}`)
        t.skip = true
      }
    }
  }
}

// ---------------------------------------------------------------- preparation

const BUILDAH_ROOT = join(WORK, 'buildah')
// buildah names an `oci:` image after its path, and `.work` is not a valid reference component: it
// reads the base through this link instead.
const BUILDAH_BASE = '/tmp/stacker-bench-base'
const buildahFrom = () => `oci:${BUILDAH_BASE}:latest`
const buildahGlobal = () => [
  '--storage-driver',
  'vfs',
  '--root',
  join(BUILDAH_ROOT, 'root'),
  '--runroot',
  join(BUILDAH_ROOT, 'runroot'),
]
let buildahProblem

async function resetBuildah() {
  await rm(BUILDAH_ROOT, { recursive: true, force: true })
  await mkdir(BUILDAH_ROOT, { recursive: true })
}

async function prepareTools() {
  await rm(BUILDAH_BASE, { force: true })
  await symlink(join(WORK, 'base'), BUILDAH_BASE)
  if (!existsSync('/usr/bin/time')) {
    const err = aptInstall('time')
    if (err) throw new Error(`GNU time is needed and could not be installed: ${err}`)
  }
  if (!have('buildah')) {
    const err = aptInstall('buildah')
    if (err) buildahProblem = `buildah could not be installed: ${err}`
  }
  if (!buildahProblem) {
    // A throwaway build proves buildah works here (root, chroot isolation, vfs storage).
    const dir = join(WORK, 'buildah-check')
    await rm(dir, { recursive: true, force: true })
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'Containerfile'), `FROM ${buildahFrom()}\nRUN echo ok > /ok\n`)
    await resetBuildah()
    const r = spawnSync(
      'buildah',
      [...buildahGlobal(), 'bud', '-q', '--layers', '--isolation', 'chroot', '-t', 'bench-check', dir],
      { encoding: 'utf8' },
    )
    if (r.status !== 0) buildahProblem = `buildah cannot build here: ${(r.stderr || r.stdout).trim().split('\n').pop()}`
    await resetBuildah()
  }
  if (buildahProblem) {
    say(buildahProblem)
    notes.push(buildahProblem)
  }
}

async function prepareBase() {
  const base = join(WORK, 'base')
  if (!existsSync(join(base, 'index.json'))) {
    say('making the busybox base layout')
    sh(`'${join(ROOT, 'scripts/make-busybox-base')}' '${base}'`)
  }
  return base
}

function stackerBuild(file, workDir, extra = []) {
  return [STACKER, '--work-dir', workDir, '--no-progress', 'build', '-f', file, ...extra]
}

async function stackerClean(workDir) {
  if (existsSync(workDir)) spawnSync(STACKER, ['--work-dir', workDir, 'clean'], { stdio: 'ignore' })
  await rm(workDir, { recursive: true, force: true })
  await mkdir(workDir, { recursive: true })
}

// ---------------------------------------------------------------- W1 / W2: the six-image file

const IMAGES = [
  ['a1', null],
  ['a2', 'a1'],
  ['a3', 'a2'],
  ['b1', null],
  ['b2', 'b1'],
  ['b3', 'b2'],
]
const LEAF = 'a3'

/** The run step: half random bytes, half text in small files, about `stepBytes` in all. */
function stepScript(name) {
  const rand = Math.floor(SIZE.stepBytes / 2)
  // `seq N N+12000` prints about 70 kB.
  const texts = Math.max(1, Math.round(SIZE.stepBytes / 2 / 71000))
  return [
    `mkdir -p /data/${name}`,
    `cd /data/${name}`,
    `head -c ${rand} /dev/urandom > random.bin`,
    'i=0',
    `while [ $i -lt ${texts} ]; do seq $((i*1000)) $((i*1000+12000)) > text$i.txt; i=$((i+1)); done`,
  ]
}

async function prepareSixImages(base) {
  const dir = join(WORK, 'w1')
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'leaf.txt'), 'leaf 0\n')
  let yaml = ''
  for (const [name, parent] of IMAGES) {
    const from = parent
      ? `  from:\n    type: built\n    tag: ${parent}\n`
      : `  from:\n    type: oci\n    url: ${base}:latest\n`
    const lines = stepScript(name)
    let imports = ''
    if (name === LEAF) {
      imports = `  imports:\n    - ${join(dir, 'leaf.txt')}\n`
      lines.push('cp /stacker/imports/leaf.txt /data/leaf.txt')
    }
    yaml += `${name}:\n${from}${imports}  run: |\n${lines.map((l) => `    ${l}\n`).join('')}`
    // buildah: the same steps, one Containerfile per image; the leaf's import comes in first, so
    // changing it re-runs the step as it does for stacker.
    const bdir = join(dir, 'buildah', name)
    await mkdir(bdir, { recursive: true })
    let cf = `FROM ${parent ? `localhost/bench-${parent}` : buildahFrom()}\n`
    if (name === LEAF) {
      await writeFile(join(bdir, 'leaf.txt'), 'leaf 0\n')
      cf += 'COPY leaf.txt /stacker/imports/leaf.txt\n'
    }
    cf += `RUN ${lines.join(' && \\\n    ')}\n`
    await writeFile(join(bdir, 'Containerfile'), cf)
  }
  await writeFile(join(dir, 'stacker.yaml'), yaml)
  // umoci path: unpack the parent, run the step in a chroot (with the host /dev, in a private mount
  // namespace that vanishes with it), repack as a new tag; image after image.
  await mkdir(join(dir, 'steps'), { recursive: true })
  const steps = []
  for (const [name, parent] of IMAGES) {
    const b = join(dir, 'umoci', `bundle-${name}`)
    const step = join(dir, 'steps', `${name}.sh`)
    await writeFile(step, `set -e\n${stepScript(name).join('\n')}\n`)
    steps.push(
      `umoci unpack --image "$L:${parent ?? 'latest'}" ${b} >/dev/null`,
      `unshare -m sh -ec 'mount --rbind /dev ${b}/rootfs/dev; exec chroot ${b}/rootfs /bin/sh -e' < ${step}`,
      `umoci repack --image "$L:${name}" ${b}`,
      `rm -rf ${b}`,
    )
  }
  await writeFile(join(dir, 'umoci-path.sh'), `set -e\nL=${join(dir, 'umoci', 'layout')}\n${steps.join('\n')}\n`)
  return dir
}

function buildahSix(dir) {
  const g = buildahGlobal().join(' ')
  return shArgv(
    IMAGES.map(
      ([name]) =>
        `buildah ${g} bud -q --layers --isolation chroot -t bench-${name} ${join(dir, 'buildah', name)} >/dev/null`,
    ).join('\n'),
  )
}

async function w1(base) {
  const dir = await prepareSixImages(base)
  const file = join(dir, 'stacker.yaml')
  const tools = [
    {
      name: 'stacker --jobs 1',
      setup: () => stackerClean(join(dir, 'st')),
      argv: () => stackerBuild(file, join(dir, 'st'), ['--jobs', '1']),
    },
    {
      name: 'stacker --jobs 2',
      setup: () => stackerClean(join(dir, 'st')),
      argv: () => stackerBuild(file, join(dir, 'st'), ['--jobs', '2']),
    },
    {
      name: 'umoci path',
      setup: async () => {
        await rm(join(dir, 'umoci'), { recursive: true, force: true })
        await mkdir(join(dir, 'umoci'), { recursive: true })
        await cp(base, join(dir, 'umoci', 'layout'), { recursive: true })
      },
      argv: () => shArgv(`. ${join(dir, 'umoci-path.sh')}`),
    },
    {
      name: 'buildah bud',
      skip: !!buildahProblem,
      setup: resetBuildah,
      argv: () => buildahSix(dir),
    },
  ]
  await alternate('W1', tools)
}

async function w2(base) {
  const dir = await prepareSixImages(base)
  const file = join(dir, 'stacker.yaml')
  const st = join(dir, 'st-w2')
  say('W2: warm builds')
  await stackerClean(st)
  measure('W2-warmup-stacker', stackerBuild(file, st))
  if (!buildahProblem) {
    await resetBuildah()
    measure('W2-warmup-buildah', buildahSix(dir))
  }
  await alternate('W2 no-op', [
    { name: 'stacker', argv: () => stackerBuild(file, st) },
    { name: 'buildah bud', skip: !!buildahProblem, argv: () => buildahSix(dir) },
  ])
  await alternate('W2 leaf import changed', [
    {
      name: 'stacker',
      setup: (rep) => writeFile(join(dir, 'leaf.txt'), `leaf ${rep}\n`),
      argv: () => stackerBuild(file, st),
    },
    {
      name: 'buildah bud',
      skip: !!buildahProblem,
      setup: (rep) => writeFile(join(dir, 'buildah', LEAF, 'leaf.txt'), `leaf ${rep}\n`),
      argv: () => buildahSix(dir),
    },
  ])
}

// ---------------------------------------------------------------- W3: layer generation

function fileSize(p) {
  return statSync(p).size
}

/** An umoci bundle whose rootfs is `tree` (moved in for the run, moved back after), with the
 *  bundle's bookkeeping saved so every repack sees the whole tree as new. */
async function umociTreeBundle(dir, tree) {
  const layout = join(dir, 'layout')
  const bundle = join(dir, 'bundle')
  const saved = join(dir, 'bundle-meta')
  if (!existsSync(saved)) {
    await rm(dir, { recursive: true, force: true })
    await mkdir(dir, { recursive: true })
    sh(`umoci init --layout ${layout} && umoci new --image ${layout}:empty`)
    sh(`umoci unpack --image ${layout}:empty ${bundle}`)
    await rm(join(bundle, 'rootfs'), { recursive: true })
    await cp(bundle, saved, { recursive: true })
  }
  return {
    layout,
    bundle,
    async enter() {
      await rm(bundle, { recursive: true, force: true })
      await cp(saved, bundle, { recursive: true })
      await rename(tree, join(bundle, 'rootfs'))
    },
    async leave() {
      if (existsSync(join(bundle, 'rootfs'))) await rename(join(bundle, 'rootfs'), tree)
    },
  }
}

function newestLayerBlob(layout, tag) {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'))
  const m = index.manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === tag)
  const manifest = JSON.parse(readFileSync(join(layout, 'blobs', ...m.digest.split(':')), 'utf8'))
  const layer = manifest.layers.at(-1)
  return { path: join(layout, 'blobs', ...layer.digest.split(':')), size: layer.size }
}

async function w3() {
  const dir = join(WORK, 'w3')
  const tree = join(dir, 'tree')
  const out = join(dir, 'out')
  await mkdir(out, { recursive: true })
  say(`W3: tree of ${SIZE.w3 / MB} MiB`)
  await makeTree(tree, { bytes: SIZE.w3 })
  const u = await umociTreeBundle(join(dir, 'umoci'), tree)
  const clearOut = () => rm(out, { recursive: true, force: true }).then(() => mkdir(out, { recursive: true }))
  const lw = (...a) => ['node', LAYER_WRITE, ...a]
  const sizeOf = (f) => () => ({ size: fileSize(join(out, f)) })
  const tools = [
    {
      name: 'stacker tar+gzip',
      setup: clearOut,
      argv: () => lw('tar', 'gzip', tree, join(out, 'l.tgz')),
      after: sizeOf('l.tgz'),
    },
    {
      name: 'umoci repack (tar+gzip)',
      setup: async () => {
        await clearOut()
        await u.enter()
      },
      argv: () => ['umoci', 'repack', '--image', `${u.layout}:t`, u.bundle],
      after: async () => {
        await u.leave()
        return { size: newestLayerBlob(u.layout, 't').size }
      },
    },
    {
      name: 'stacker tar+zstd',
      setup: clearOut,
      argv: () => lw('tar', 'zstd', tree, join(out, 'l.tzst')),
      after: sizeOf('l.tzst'),
    },
    {
      name: 'stacker squashfs',
      setup: clearOut,
      argv: () => lw('squashfs', tree, out),
      after: sizeOf('layer.squashfs'),
    },
    {
      name: 'mksquashfs zstd level 15',
      // Minutes per run at the full size: one run is the reference, and its spread is small next to
      // the ratio measured against it.
      maxReps: QUICK ? REPS : 1,
      setup: clearOut,
      argv: () => [
        'mksquashfs',
        tree,
        join(out, 'up.squashfs'),
        '-comp',
        'zstd',
        '-noappend',
        '-no-progress',
        '-quiet',
      ],
      after: sizeOf('up.squashfs'),
    },
  ]
  try {
    await alternate('W3', tools)
  } finally {
    await u.leave()
    // umoci keeps every repacked blob: drop them between runs.
    await rm(join(dir, 'umoci', 'layout'), { recursive: true, force: true })
    await rm(join(dir, 'umoci', 'bundle-meta'), { recursive: true, force: true })
  }
  await clearOut()
}

// ---------------------------------------------------------------- W4: extraction of a base image

async function w4() {
  const dir = join(WORK, 'w4')
  const tree = join(WORK, 'w3', 'tree')
  await makeTree(tree, { bytes: SIZE.w3 })
  const layout = join(dir, 'layout')
  const stamp = join(dir, '.made')
  if (!existsSync(stamp) || readFileSync(stamp, 'utf8') !== String(SIZE.w3)) {
    say('W4: making the base image')
    await rm(dir, { recursive: true, force: true })
    const u = await umociTreeBundle(join(dir, 'make'), tree)
    await u.enter()
    try {
      sh(`umoci repack --image ${u.layout}:t ${u.bundle}`)
    } finally {
      await u.leave()
    }
    sh(`umoci gc --layout ${u.layout}`)
    await rename(u.layout, layout)
    await rm(join(dir, 'make'), { recursive: true, force: true })
    await writeFile(stamp, String(SIZE.w3))
  }
  const blob = newestLayerBlob(layout, 't')
  const target = join(dir, 'x')
  const clear = () => rm(target, { recursive: true, force: true })
  await alternate('W4', [
    {
      name: 'stacker extract',
      setup: async () => {
        await clear()
        await mkdir(target)
      },
      argv: () => ['node', LAYER_WRITE, 'extract', blob.path, target],
    },
    { name: 'umoci unpack', setup: clear, argv: () => ['umoci', 'unpack', '--image', `${layout}:t`, target] },
    {
      name: 'umoci raw unpack',
      setup: clear,
      argv: () => ['umoci', 'raw', 'unpack', '--image', `${layout}:t`, target],
    },
  ])
  await clear()
}

// ---------------------------------------------------------------- W5: copying an import tree in

/**
 * An ordinary user for the unprivileged rows, set up as upstream documents it (`stacker unpriv-setup`
 * gives it subordinate ids); `remove()` deletes it and its ids again. Undefined, with a note, when
 * one cannot be made here.
 */
function benchUser() {
  const name = `stkbench${process.pid}`
  const r = spawnSync(
    'useradd',
    ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', name],
    {
      encoding: 'utf8',
    },
  )
  if (r.status !== 0) {
    notes.push(`no unprivileged row: useradd failed: ${(r.stderr || r.stdout).trim()}`)
    return undefined
  }
  const id = (flag) => Number(sh(`id ${flag} ${name}`).trim())
  const user = { name, uid: id('-u'), gid: id('-g') }
  user.as = (argv) => ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--', ...argv]
  user.remove = () => {
    spawnSync('userdel', ['--force', name], { stdio: 'ignore' })
    for (const f of ['/etc/subuid', '/etc/subgid']) {
      const text = readFileSync(f, 'utf8')
      const kept = text.split('\n').filter((l) => !l.startsWith(`${name}:`))
      if (kept.length !== text.split('\n').length) writeFileSync(f, kept.join('\n'))
    }
  }
  return user
}

/** A work dir the user owns, empty, handed over by unpriv-setup as a user would get it. */
async function userWorkDir(user, dir) {
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  sh(`chown ${user.uid}:${user.gid} '${dir}' && '${STACKER}' --work-dir '${dir}' unpriv-setup --username ${user.name}`)
}

async function w5(base) {
  const dir = join(WORK, 'w5')
  const tree = join(dir, 'ctx', 'tree')
  say(`W5: import tree of ${SIZE.w5 / MB} MiB`)
  await makeTree(tree, { bytes: SIZE.w5, bigFile: 4 << 20 })
  const yaml = (from) =>
    `w5:\n  from:\n    type: oci\n    url: ${from}:latest\n  imports:\n    - ${tree}\n  run: |\n    mkdir -p /opt\n    cp -a /stacker/imports/tree /opt/tree\n`
  const file = join(dir, 'stacker.yaml')
  await writeFile(file, yaml(base))
  await writeFile(join(dir, 'ctx', 'Containerfile'), `FROM ${buildahFrom()}\nCOPY tree /opt/tree\n`)
  const st = join(dir, 'st')
  const L = join(dir, 'umoci', 'layout')
  const B = join(dir, 'umoci', 'bundle')
  // The unprivileged build reads the same tree, and a copy of the base it can read.
  const user = benchUser()
  const ust = join(dir, 'st-user')
  const ufile = join(dir, 'stacker-user.yaml')
  if (user) {
    await rm(join(dir, 'ubase'), { recursive: true, force: true })
    await cp(base, join(dir, 'ubase'), { recursive: true })
    await writeFile(ufile, yaml(join(dir, 'ubase')))
    // The tree becomes the user's, as a user's own import would be: its files can be hard-linked
    // into the imports dir then (the kernel refuses links to files of others); root links them anyway.
    sh(`chmod -R a+rX '${join(dir, 'ubase')}' && chmod a+r '${ufile}' && chown -R ${user.uid}:${user.gid} '${tree}'`)
  }
  try {
    await alternate('W5', [
      { name: 'stacker', setup: () => stackerClean(st), argv: () => stackerBuild(file, st) },
      {
        name: 'stacker unprivileged',
        skip: !user,
        setup: () => userWorkDir(user, ust),
        argv: () => user.as(stackerBuild(ufile, ust)),
      },
      {
        name: 'umoci path',
        setup: async () => {
          await rm(join(dir, 'umoci'), { recursive: true, force: true })
          await mkdir(join(dir, 'umoci'), { recursive: true })
          await cp(base, L, { recursive: true })
        },
        argv: () =>
          shArgv(
            `umoci unpack --image ${L}:latest ${B} >/dev/null\nmkdir -p ${B}/rootfs/opt\ncp -a ${tree} ${B}/rootfs/opt/tree\numoci repack --image ${L}:w5 ${B}`,
          ),
      },
      {
        name: 'buildah bud',
        skip: !!buildahProblem,
        setup: resetBuildah,
        argv: () => [
          'buildah',
          ...buildahGlobal(),
          'bud',
          '-q',
          '--layers',
          '--isolation',
          'chroot',
          '-t',
          'bench-w5',
          join(dir, 'ctx'),
        ],
      },
    ])
  } finally {
    await stackerClean(st)
    await rm(ust, { recursive: true, force: true })
    user?.remove()
  }
}

// ---------------------------------------------------------------- R: registry push and pull

/** bench/registry.mjs: our registry client vs `skopeo copy`, pushing and pulling one image. */
async function registryThroughput() {
  say('R: registry push and pull')
  try {
    const { runRegistryBench } = await import('./registry.mjs')
    const out = await runRegistryBench({ quick: QUICK, reps: REPS })
    for (const op of ['push', 'pull'])
      for (const [tool, name] of [
        ['skopeo', 'skopeo copy'],
        ['ours', 'stacker registry client'],
      ]) {
        const r = out.results[`${op} ${tool}`]
        for (const [i, wall] of r.walls.entries())
          record(`R ${op}`, name, { wall, rss: r.rss[i] }, { size: out.imageBytes })
      }
  } catch (e) {
    say(`R FAILED: ${e.message.split('\n')[0]}`)
    failures.push(`R: ${e.message.split('\n')[0]}`)
  }
}

// ---------------------------------------------------------------- S: startup and memory

async function startup() {
  const noCa = { env: { NODE_EXTRA_CA_CERTS: '' } }
  const reps = Math.max(REPS, 10)
  for (let i = 0; i < reps; i++) {
    for (const [name, argv, opts] of [
      // The executable, as users run it: its sh part keeps node from parsing NODE_EXTRA_CA_CERTS.
      ['stacker --version', [STACKER, '--version'], {}],
      ['node -e 0 (baseline)', ['node', '-e', '0'], {}],
      [
        'stacker --version, NODE_EXTRA_CA_CERTS unset',
        ['env', '-u', 'NODE_EXTRA_CA_CERTS', STACKER, '--version'],
        noCa,
      ],
      // node run on the script parses the file at start-up, when the variable is set.
      ['node bin/stacker --version', ['node', STACKER, '--version'], {}],
      ['stacker --help', [STACKER, '--help'], {}],
    ]) {
      record('S startup', name, measure(`S-${name}-${i}`, argv, opts))
    }
  }
}

async function rss() {
  const dir = join(WORK, 'rss')
  const tree = join(dir, 'tree')
  say(`S: peak RSS while writing a ${SIZE.rss / MB} MiB layer`)
  await makeTree(tree, { bytes: SIZE.rss, bigFile: 32 << 20, textShare: 0.1 })
  const out = join(dir, 'l.tgz')
  const m = measure('S-rss', ['node', LAYER_WRITE, 'tar', 'gzip', tree, out])
  record('S memory', `stacker tar+gzip of ${SIZE.rss / MB} MiB`, m, { size: fileSize(out) })
  await rm(out, { force: true })
}

// ---------------------------------------------------------------- report

function fmtS(x) {
  if (!Number.isFinite(x)) return '-'
  return x < 10 ? x.toFixed(3) : x.toFixed(1)
}

function fmtMiB(x) {
  return Number.isFinite(x) ? `${(x / MB).toFixed(1)} MiB` : '-'
}

function table() {
  const lines = [
    '| workload | tool | median s | min s | max s | peak RSS MiB | output |',
    '|---|---|---:|---:|---:|---:|---|',
  ]
  for (const [w, tools] of results) {
    for (const [t, row] of tools) {
      const out = row.extra.size !== undefined ? fmtMiB(row.extra.size) : ''
      lines.push(
        `| ${w} | ${t} | ${fmtS(median(row.walls))} | ${fmtS(Math.min(...row.walls))} | ${fmtS(Math.max(...row.walls))} | ${Math.max(...row.rss).toFixed(0)} | ${out} |`,
      )
    }
  }
  return lines.join('\n')
}

function extra(w, t, k) {
  return results.get(w)?.get(t)?.extra[k]
}

/** The performance targets, each from this run's numbers. */
function targets() {
  const rows = []
  const add = (target, measured, pass) => {
    const verdict = pass === undefined ? 'not measured' : pass ? 'pass' : 'MISS'
    rows.push(`| ${target} | ${measured} | ${verdict} |`)
  }
  const ratio = (a, b) => a / b
  const r = (x) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : '-')
  const ok = (x, f) => (Number.isFinite(x) ? f(x) : undefined)

  const w5 = ratio(med('W5', 'stacker'), med('W5', 'umoci path'))
  add(
    'W5 cold build <= 1.0x the umoci path',
    r(w5),
    ok(w5, (x) => x <= 1.0),
  )
  const unpriv = ratio(med('W5', 'stacker unprivileged'), med('W5', 'stacker'))
  add(
    'W5 unprivileged cold build <= 1.2x root',
    r(unpriv),
    ok(unpriv, (x) => x <= 1.2),
  )
  const noop = med('W2 no-op', 'stacker')
  add(
    'W2 no-op rebuild < 1 s',
    `${fmtS(noop)} s`,
    ok(noop, (x) => x < 1),
  )
  const noopB = ratio(noop, med('W2 no-op', 'buildah bud'))
  add(
    "W2 no-op <= 0.2x buildah's cached rebuild",
    r(noopB),
    ok(noopB, (x) => x <= 0.2),
  )
  const gz = ratio(med('W3', 'umoci repack (tar+gzip)'), med('W3', 'stacker tar+gzip'))
  add(
    'W3 tar+gzip throughput >= umoci repack',
    `${r(gz)} umoci's throughput`,
    ok(gz, (x) => x >= 1),
  )
  const sqT = ratio(med('W3', 'mksquashfs zstd level 15'), med('W3', 'stacker squashfs'))
  const sqS = ratio(extra('W3', 'stacker squashfs', 'size'), extra('W3', 'mksquashfs zstd level 15', 'size'))
  add(
    'W3 squashfs >= 5x faster than level 15',
    `${r(sqT)} faster`,
    ok(sqT, (x) => x >= 5),
  )
  add(
    'W3 squashfs output <= 15% larger than level 15',
    Number.isFinite(sqS) ? `${((sqS - 1) * 100).toFixed(1)}% larger` : '-',
    ok(sqS, (x) => x <= 1.15),
  )
  const j = ratio(med('W1', 'stacker --jobs 2'), med('W1', 'stacker --jobs 1'))
  add(
    'W1 --jobs 2 <= 0.7x --jobs 1',
    r(j),
    ok(j, (x) => x <= 0.7),
  )
  const memRow = results.get('S memory')
  const mem = memRow ? Math.max(...[...memRow.values()][0].rss) : Number.NaN
  add(
    `peak RSS < 256 MiB writing a ${SIZE.rss / MB} MiB layer${QUICK ? ' (quick: not the 2 GiB of the target)' : ''}`,
    Number.isFinite(mem) ? `${mem.toFixed(0)} MiB` : '-',
    ok(mem, (x) => x < 256),
  )
  const v = med('S startup', 'stacker --version')
  add(
    '`stacker --version` < 150 ms',
    `${(v * 1000).toFixed(0)} ms (NODE_EXTRA_CA_CERTS unset: ${(med('S startup', 'stacker --version, NODE_EXTRA_CA_CERTS unset') * 1000).toFixed(0)} ms; bare node: ${(med('S startup', 'node -e 0 (baseline)') * 1000).toFixed(0)} ms; \`node bin/stacker\`: ${(med('S startup', 'node bin/stacker --version') * 1000).toFixed(0)} ms)`,
    ok(v, (x) => x < 0.15),
  )
  return ['| target | measured | verdict |', '|---|---|---|', ...rows].join('\n')
}

function version(cmd) {
  try {
    return sh(`${cmd} 2>&1 | head -1`).trim()
  } catch {
    return 'not available'
  }
}

/** Whether bin/stacker runs the bundle (the launcher's own check). */
async function cliForm() {
  const { bundleIsCurrent } = await import(join(ROOT, 'apps/stacker/dist/launcher.js'))
  return bundleIsCurrent()
    ? 'bundled (apps/stacker/dist/bundle)'
    : 'unbundled (apps/stacker/dist/bundle is missing or stale)'
}

function loadAvg() {
  const l = sh('cut -d" " -f1-3 /proc/loadavg').trim()
  const busy = Number(l.split(' ')[0]) > cpus().length
  return busy ? `${l}: more than the CPU count, so other work shared the machine and times are noisy` : l
}

function machine() {
  const cpu = cpus()
  return [
    `- CPU: ${cpu[0]?.model ?? '?'} x ${cpu.length}`,
    `- memory: ${(totalmem() / 1024 ** 3).toFixed(1)} GiB`,
    `- kernel: ${sh('uname -sr').trim()}; filesystem of bench/.work: ${sh(`findmnt -no FSTYPE -T '${WORK}' || stat -f -c %T '${WORK}'`).trim()}`,
    `- stacker CLI: ${CLI_FORM}; NODE_EXTRA_CA_CERTS ${process.env.NODE_EXTRA_CA_CERTS ? 'set (node reads the CA file at every start; bin/stacker leaves it to its first TLS connection)' : 'unset'}`,
    `- load average at the end: ${loadAvg()}`,
    `- node ${process.version}; ${version('umoci --version')}; ${version('buildah --version')}; ${version('mksquashfs -version')}; ${version('pigz --version')}; ${version('zstd --version')}`,
  ].join('\n')
}

// Raw measurements of the last run at each size, so `--update` can rerun some workloads and keep the
// others' rows.
const rawFile = () => join(WORK, `results-${QUICK ? 'quick' : 'full'}.json`)

function rawOf(map) {
  return [...map].map(([w, tools]) => [w, [...tools]])
}

async function saveRaw(raw) {
  await writeFile(rawFile(), `${JSON.stringify(raw)}\n`)
}

/** `--update`: the workloads this run did not measure come from the last run's raw file (kept in it
 *  too, so a later update still has them). Returns that run's description. */
async function mergeEarlier() {
  let prev
  try {
    prev = JSON.parse(await readFile(rawFile(), 'utf8'))
  } catch {
    throw new Error(`--update: no earlier run of this size in ${rawFile()}`)
  }
  const merged = new Map()
  for (const [w, tools] of prev.results) merged.set(w, results.get(w) ?? new Map(tools))
  for (const [w, tools] of results) if (!merged.has(w)) merged.set(w, tools)
  results.clear()
  for (const [w, tools] of merged) results.set(w, tools)
  return prev
}

async function writeResults(text) {
  const file = join(BENCH, 'RESULTS.md')
  let keep = ''
  try {
    const old = await readFile(file, 'utf8')
    const m = old.match(/^##+ [^\n]*squashfs level[^\n]*\n[\s\S]*?(?=^## |(?![\s\S]))/im)
    if (m) keep = `\n${m[0].trimEnd()}\n`
  } catch {}
  await writeFile(file, `${text.trimEnd()}\n${keep}`)
}

// ---------------------------------------------------------------- main

async function main() {
  if (process.getuid?.() !== 0) throw new Error('the benchmark needs root (overlay mounts, runc, chroot)')
  await mkdir(LOGS, { recursive: true })
  for (const f of readdirSync(LOGS)) await rm(join(LOGS, f), { force: true })
  const started = new Date()
  const base = await prepareBase()
  await prepareTools()
  if (ONLY.has('W1')) await w1(base)
  if (ONLY.has('W2')) await w2(base)
  if (ONLY.has('W3')) await w3()
  if (ONLY.has('W4')) await w4()
  if (ONLY.has('W5')) await w5(base)
  if (ONLY.has('R')) await registryThroughput()
  if (ONLY.has('S')) {
    await startup()
    await rss()
  }
  await resetBuildah()
  await rm(BUILDAH_BASE, { force: true })
  const minutes = ((Date.now() - started.getTime()) / 60000).toFixed(1)
  const args = process.argv.slice(2).join(' ')
  const rerun = [...results.keys()]
  const earlier = flags.update ? await mergeEarlier() : undefined
  if (!flags['no-results'])
    await saveRaw({ started: started.toISOString(), args, minutes, reps: REPS, results: rawOf(results) })
  const summary = table()
  const goals = targets()
  process.stdout.write(`\n${summary}\n\n${goals}\n`)
  if (failures.length) process.stdout.write(`\nfailures:\n${failures.map((f) => `- ${f}`).join('\n')}\n`)
  if (flags['no-results']) return
  const text = `# Benchmark results

Written by \`npm run bench\` (\`node bench/run.mjs${args ? ` ${args}` : ''}\`) on ${started.toISOString().slice(0, 10)}: ${
    QUICK ? 'quick sizes (a tenth of the full ones)' : 'full sizes'
  }, ${REPS} repetitions, tools alternating within each repetition, ${minutes} minutes in all.${
    earlier
      ? `\nRows of ${rerun.join(', ')} are from that run; the others are kept from the run of ${earlier.started.slice(0, 16).replace('T', ' ')} UTC (\`node bench/run.mjs${earlier.args ? ` ${earlier.args}` : ''}\`, ${earlier.reps} repetitions, ${earlier.minutes} minutes), and the targets use both.`
      : ''
  }
Times are wall-clock seconds; peak RSS is the largest single process of the run (GNU time's %M).

Machine:
${machine()}

## Workloads

- **W1** cold build of a six-image stacker.yaml: two independent chains of three images on the busybox
  base, each run step writing ${fmtMiB(SIZE.stepBytes)} (half random bytes, half text in small files).
  umoci path: \`umoci unpack\` + the step in a chroot + \`umoci repack\` per image; buildah: one
  \`buildah bud --layers --isolation chroot\` (vfs storage) per image, in order.
- **W2** the same file rebuilt with nothing changed, then after the leaf image's one import changed.
- **W3** layer generation from a ${fmtMiB(SIZE.w3)} tree (half incompressible, half text in small
  files): the project's layer writer (\`bench/layer-write.mjs\`) vs \`umoci repack\` and
  \`mksquashfs -comp zstd\` (level 15, upstream's default).
- **W4** extraction of a ${fmtMiB(SIZE.w3)} single-layer base image (tar+gzip).
- **W5** a build whose run step copies a ${fmtMiB(SIZE.w5)} import tree into the rootfs; also run by an
  ordinary user (\`stacker unpriv-setup\`, then the build in its user namespace) on the same tree.
- **R** pushing and pulling a ${QUICK ? '100 MiB' : '1 GiB'} three-layer image (tar+gzip of a tree half random, half text)
  to and from a local docker-registry: the project's registry client (\`bench/registry.mjs\`) vs \`skopeo copy\`.
- **S** \`stacker --version\` startup, and peak RSS while writing a ${fmtMiB(SIZE.rss)} tar+gzip layer.

## Results

${summary}

## Targets

${goals}
${notes.length ? `\nNotes:\n${notes.map((n) => `- ${n}`).join('\n')}\n` : ''}${failures.length ? `\nFailures:\n${failures.map((f) => `- ${f}`).join('\n')}\n` : ''}`
  await writeResults(text)
  say('wrote bench/RESULTS.md')
}

main().catch((e) => {
  process.stderr.write(`bench: ${e.stack ?? e}\n`)
  process.exitCode = 1
})
