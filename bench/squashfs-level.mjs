#!/usr/bin/env node
// The squashfs compression level study: mksquashfs output speed and size at this project's default
// zstd level against upstream's (mksquashfs's default, 15), on the same generated tree, repetitions
// alternating between the two so a slow spell of the machine hits both. Prints medians and ratios
// and writes them into RESULTS.md under "## squashfs level" (only that section is replaced).
//
//   node bench/squashfs-level.mjs [--reps N] [--mb SIZE] [--no-results]
//
// Run `pnpm exec tsc -b` first: the default level is read from packages/layers/dist.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { availableParallelism, loadavg, release } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { makeTree } from './trees.mjs'

const HERE = dirname(fileURLToPath(import.meta.url))
const WORK = join(HERE, '.work', 'squashfs-level')
const RESULTS = join(HERE, 'RESULTS.md')
const HEADING = '## squashfs level'
const UPSTREAM_LEVEL = 15

const { DEFAULT_SQUASHFS_ZSTD_LEVEL } = await import(new URL('../packages/layers/dist/index.js', import.meta.url).href)

function arg(name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback
}
const reps = Number(arg('--reps', '3'))
const mb = Number(arg('--mb', '200'))
const writeResults = !process.argv.includes('--no-results')
if (!Number.isInteger(reps) || reps < 1 || !(mb > 0)) {
  console.error('usage: node bench/squashfs-level.mjs [--reps N] [--mb SIZE] [--no-results]')
  process.exit(2)
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

async function treeBytes(dir) {
  // Apparent size of the files, as du reports it: what the image has to hold.
  const out = execFileSync('du', ['-sb', '--exclude=.bench-tree', dir], { encoding: 'utf8' })
  return Number(out.split('\t')[0])
}

/** One mksquashfs run with the flags the project uses (write.ts), at `level`. */
async function squash(tree, level) {
  const out = join(WORK, `out-${level}.squashfs`)
  await rm(out, { force: true })
  const args = [tree, out, '-noappend', '-no-progress', '-quiet', '-reproducible', '-exit-on-error', '-xattrs']
  args.push('-comp', 'zstd', '-Xcompression-level', String(level), '-mkfs-time', '0')
  const t0 = process.hrtime.bigint()
  const r = spawnSync('mksquashfs', args, { stdio: ['ignore', 'ignore', 'pipe'] })
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  if (r.status !== 0) throw new Error(`mksquashfs failed: ${r.stderr}`)
  const { size } = await stat(out)
  await rm(out, { force: true })
  return { ms, size }
}

function machine() {
  const cpuinfo = execFileSync('cat', ['/proc/cpuinfo'], { encoding: 'utf8' })
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? 'unknown'
  const version = (spawnSync('mksquashfs', ['-version'], { encoding: 'utf8' }).stdout ?? '').split('\n')[0]?.trim()
  return { nproc: availableParallelism(), model, kernel: release(), mksquashfs: version ?? 'unknown' }
}

await mkdir(WORK, { recursive: true })
const tree = join(WORK, 'tree')
const made = await makeTree(tree, { bytes: mb * 1_000_000 })
const bytes = await treeBytes(tree)
console.error(`${made ? 'generated' : 'reusing'} ${tree}: ${(bytes / 1e6).toFixed(1)} MB (half random, half text)`)

const levels = [DEFAULT_SQUASHFS_ZSTD_LEVEL, UPSTREAM_LEVEL]
// Untimed: brings the tree into the page cache so the first timed run does not pay for the disk.
await squash(tree, DEFAULT_SQUASHFS_ZSTD_LEVEL)
const runs = new Map(levels.map((l) => [l, []]))
const load = [loadavg()[0]]
for (let i = 0; i < reps; i++) {
  // Alternate which level goes first, so neither always runs right after the other.
  const order = i % 2 === 0 ? levels : [...levels].reverse()
  for (const level of order) {
    const r = await squash(tree, level)
    runs.get(level).push(r)
    console.error(`rep ${i + 1} level ${level}: ${(r.ms / 1000).toFixed(2)} s, ${(r.size / 1e6).toFixed(1)} MB`)
  }
  load.push(loadavg()[0])
}

const summary = levels.map((level) => {
  const rs = runs.get(level)
  const ms = median(rs.map((r) => r.ms))
  const size = median(rs.map((r) => r.size))
  return { level, ms, size, mbps: bytes / 1e6 / (ms / 1000), times: rs.map((r) => r.ms) }
})
const [ours, up] = summary
const m = machine()
const date = new Date().toISOString().slice(0, 10)

const row = (s) =>
  `| ${s.level}${s.level === DEFAULT_SQUASHFS_ZSTD_LEVEL ? ' (this project)' : ' (upstream)'} | ` +
  `${(s.ms / 1000).toFixed(2)} s | ${s.mbps.toFixed(1)} MB/s | ${(s.size / 1e6).toFixed(2)} MB | ` +
  `${((s.size / bytes) * 100).toFixed(1)} % | ${s.times.map((t) => (t / 1000).toFixed(2)).join(', ')} |`

const section = `${HEADING}

\`node bench/squashfs-level.mjs --reps ${reps} --mb ${mb}\` (${date}): \`mksquashfs\` with the flags the project
uses (\`-reproducible -xattrs -comp zstd -Xcompression-level N -mkfs-time 0\`) on one generated tree of
${(bytes / 1e6).toFixed(1)} MB, half incompressible bytes in 8 MB files and half text in 4-28 KiB files
(\`trees.mjs\`). One untimed warm-up run, then ${reps} repetition${reps === 1 ? '' : 's'} alternating the two levels; medians.

Machine: ${m.nproc} CPUs (\`nproc\`), ${m.model}, kernel ${m.kernel}, ${m.mksquashfs}. Load average
(1 min) during the runs: ${load.map((l) => l.toFixed(1)).join(', ')}${Math.max(...load) > m.nproc ? ' (the machine was busy with other work: absolute times are inflated, the ratios less so)' : ''}.

| zstd level | time | speed | image size | of the tree | each run |
| ---------- | ---- | ----- | ---------- | ----------- | -------- |
${row(ours)}
${row(up)}

Level ${UPSTREAM_LEVEL} takes **${(up.ms / ours.ms).toFixed(1)}x** the time of level ${ours.level} (speed ${(ours.mbps / up.mbps).toFixed(1)}x lower) for an image
**${(((ours.size - up.size) / ours.size) * 100).toFixed(1)} %** smaller (${(up.size / ours.size).toFixed(3)} of the size).
`

console.log(section)

if (writeResults) {
  let text = ''
  try {
    text = await readFile(RESULTS, 'utf8')
  } catch {
    text = '# Benchmark results\n'
  }
  const start = text.indexOf(`${HEADING}\n`)
  if (start >= 0) {
    const next = text.indexOf('\n## ', start + HEADING.length)
    text = text.slice(0, start) + section + (next >= 0 ? text.slice(next) : '')
  } else {
    text = `${text.trimEnd()}\n\n${section}`
  }
  await writeFile(RESULTS, text)
  console.error(`wrote the "${HEADING.slice(3)}" section of ${RESULTS}`)
}
