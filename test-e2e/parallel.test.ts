// Parallel builds: independent layers build at the same time (--jobs N, default the CPU count), the
// outputs are byte-identical to a serial build, and log lines name their layer.
import { availableParallelism } from 'node:os'
import { readdir, readFile, rm, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  expectOk,
  fixtures,
  indexTags,
  layerTarEntries,
  readIndex,
  readManifest,
  stacker,
  type StackerResult,
  tempProject,
  type TempProject,
} from './helpers/index.js'

const BRANCHES = ['a', 'b'] as const
const DEPTH = 3
const LAYERS = BRANCHES.flatMap((b) => Array.from({ length: DEPTH }, (_, i) => `${b}${i + 1}`))

/** Two independent branches a1 <- a2 <- a3 and b1 <- b2 <- b3 on the busybox base. Every run records
 *  when it starts and ends (in the host's uptime, shared by all containers) in its own bound log dir
 *  (layers binding one host dir are coupled and keep file order),
 *  writes a few files and sleeps a second. `fail` makes that layer's run fail. */
function stackerfile(fail?: string): string {
  let y = ''
  for (const b of BRANCHES) {
    for (let i = 1; i <= DEPTH; i++) {
      const name = `${b}${i}`
      const from = i === 1 ? `    type: oci\n    url: \${{BUSYBOX_OCI}}\n` : `    type: built\n    tag: ${b}${i - 1}\n`
      y += `${name}:
  from:
${from}  binds:
    - \${{LOG}}/${name} -> /log
  run: |
    cut -d' ' -f1 /proc/uptime > /log/${name}.start
    mkdir -p /data/${name}
    echo ${name} > /data/${name}/name
    seq 1 ${i * 100} > /data/${name}/numbers
    ln -s name /data/${name}/link
    chmod 0600 /data/${name}/numbers
    sleep 1
    ${name === fail ? 'false' : 'true'}
    cut -d' ' -f1 /proc/uptime > /log/${name}.end
`
    }
  }
  return y
}

interface Interval {
  layer: string
  start: number
  end: number
}

async function intervals(logDir: string): Promise<Interval[]> {
  const out: Interval[] = []
  for (const layer of LAYERS) {
    const start = Number((await readFile(join(logDir, layer, `${layer}.start`), 'utf8')).trim())
    const end = Number((await readFile(join(logDir, layer, `${layer}.end`), 'utf8')).trim())
    expect(Number.isFinite(start) && Number.isFinite(end) && end > start, `${layer}: ${start}..${end}`).toBe(true)
    out.push({ layer, start, end })
  }
  return out
}

const overlaps = (x: Interval, y: Interval) => x.start < y.end && y.start < x.end

/** Pairs of runs that were in progress at the same moment. */
function overlapping(iv: Interval[]): string[] {
  const out: string[] = []
  for (const [i, x] of iv.entries())
    for (const y of iv.slice(i + 1)) if (overlaps(x, y)) out.push(`${x.layer}/${y.layer}`)
  return out
}

async function runcList(stackerDir: string): Promise<string> {
  const r = await execa('runc', ['--root', join(stackerDir, 'runc'), 'list', '-q'], { reject: false })
  return `${r.stdout}${r.stderr}`.trim()
}

interface Run {
  result: StackerResult
  oci: string
  times: Interval[]
}

describe('parallel builds', () => {
  let p: TempProject
  const runs: Record<'serial' | 'two' | 'default', Run> = {} as never

  async function buildWith(name: keyof typeof runs, jobs: string[]): Promise<void> {
    // One log dir for all: its path is in the stacker.yaml annotation, which must not differ.
    const log = p.path('log')
    for (const l of LAYERS) await mkdir(join(log, l), { recursive: true })
    const result = await stacker(
      [
        '--stacker-dir',
        p.path(`${name}/stacker`),
        '--roots-dir',
        p.path(`${name}/roots`),
        '--oci-dir',
        p.path(`${name}/oci`),
        'build',
        ...jobs,
        '--substitute',
        `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`,
        '--substitute',
        `LOG=${log}`,
      ],
      { cwd: p.dir, env: { SOURCE_DATE_EPOCH: '1700000000' } },
    )
    expectOk(result)
    runs[name] = { result, oci: p.path(`${name}/oci`), times: await intervals(log) }
    await rm(log, { recursive: true })
  }

  beforeAll(async () => {
    p = await tempProject({ 'stacker.yaml': stackerfile() })
    // One at a time: the default run's overlap must not come from another build sharing the CPUs.
    await buildWith('serial', ['--jobs', '1'])
    await buildWith('two', ['--jobs', '2'])
    await buildWith('default', [])
  })
  afterAll(() => p?.cleanup())

  it('gives byte-identical outputs whatever the number of jobs', async () => {
    const serialIndex = await readFile(join(runs.serial.oci, 'index.json'))
    expect((await readFile(join(runs.two.oci, 'index.json'))).equals(serialIndex)).toBe(true)
    expect((await readFile(join(runs.default.oci, 'index.json'))).equals(serialIndex)).toBe(true)
    expect(await indexTags(runs.serial.oci)).toEqual(LAYERS)
    const digests = async (oci: string) => (await readIndex(oci)).manifests.map((m) => m.digest)
    expect(await digests(runs.two.oci)).toEqual(await digests(runs.serial.oci))
    const blobs = async (oci: string) => (await readdir(join(oci, 'blobs', 'sha256'))).sort()
    expect(await blobs(runs.two.oci)).toEqual(await blobs(runs.serial.oci))
    // And the images are what the file says: each top layer carries its branch's three layers' files.
    for (const b of BRANCHES) {
      const m = await readManifest(runs.two.oci, `${b}3`)
      const files = new Map<string, string>()
      for (const l of m.layers)
        for (const e of await layerTarEntries(runs.two.oci, l.digest, { withContent: true }))
          files.set(e.name.replace(/^\.?\//, ''), e.content?.toString() ?? '')
      for (let i = 1; i <= DEPTH; i++) {
        expect(files.get(`data/${b}${i}/name`)).toBe(`${b}${i}\n`)
        expect(files.get(`data/${b}${i}/numbers`)?.split('\n')).toHaveLength(i * 100 + 1)
      }
      expect([...files.keys()].some((f) => f.startsWith(`data/${b === 'a' ? 'b' : 'a'}`))).toBe(false)
    }
    for (const r of Object.values(runs)) expect(r.oci.startsWith(p.dir)).toBe(true)
    assertNoMountsUnder(p.dir)
  })

  it('runs independent layers at the same time with --jobs 2 and one at a time with --jobs 1', () => {
    expect(overlapping(runs.serial.times)).toEqual([])
    const two = overlapping(runs.two.times)
    expect(two.length).toBeGreaterThan(0)
    // Only layers of different branches can overlap: a layer waits for its parent.
    for (const pair of two) expect(pair[0]).not.toBe(pair[3])
    // Never more than two at once.
    for (const x of runs.two.times) {
      const at = runs.two.times.filter((y) => y.start <= x.start && x.start < y.end)
      expect(at.length, `runs in progress when ${x.layer} started`).toBeLessThanOrEqual(2)
    }
    assertNoMountsUnder(p.dir)
  })

  it('defaults --jobs to the number of CPUs', () => {
    const pairs = overlapping(runs.default.times)
    if (availableParallelism() > 1) expect(pairs.length).toBeGreaterThan(0)
    else expect(pairs).toEqual([])
    assertNoMountsUnder(p.dir)
  })

  it('prefixes log lines with the layer name when layers build at once, and not otherwise', () => {
    const two = runs.two.result
    const errLines = two.stderr.split('\n')
    const outLines = two.stdout.split('\n')
    for (const l of LAYERS) {
      expect(errLines).toContain(`${l}: preparing image ${l}...`)
      expect(errLines).toContain(`${l}: filesystem ${l} built successfully`)
      expect(outLines).toContain(`${l}: + sleep 1`)
      expect(outLines).toContain(`${l}: + echo ${l}`)
    }
    // Every line about a layer's build names it first.
    for (const line of errLines.filter((x) => / (preparing image|filesystem) /.test(x)))
      expect(line).toMatch(/^([ab][123]): (preparing image|filesystem) \1/)
    expect(errLines.filter((x) => x.startsWith('preparing image'))).toEqual([])

    const serial = runs.serial.result
    const sErr = serial.stderr.split('\n')
    for (const l of LAYERS) {
      expect(sErr).toContain(`preparing image ${l}...`)
      expect(sErr).toContain(`filesystem ${l} built successfully`)
      expect(serial.stdout.split('\n')).toContain(`+ echo ${l}`)
    }
    expect(sErr.filter((x) => /^[ab][123]: /.test(x))).toEqual([])
    assertNoMountsUnder(p.dir)
  })
})

describe('a failing layer in a parallel build', () => {
  let p: TempProject
  afterAll(() => p?.cleanup())

  it('fails the build with the run failure; the other branch is not cut short', async () => {
    p = await tempProject({ 'stacker.yaml': stackerfile('b2') })
    for (const l of LAYERS) await mkdir(p.path(`log/${l}`), { recursive: true })
    const r = await stacker(
      [
        'build',
        '--jobs',
        '2',
        '--substitute',
        `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`,
        '--substitute',
        `LOG=${p.path('log')}`,
      ],
      { cwd: p.dir, env: { SOURCE_DATE_EPOCH: '1700000000' } },
    )
    expect(r.exitCode).toBe(1)
    const errors = r.stderr.split('\n').filter((l) => l.includes('error:'))
    expect(errors, r.stderr).toHaveLength(1)
    expect(errors[0]).toContain(
      `run commands failed for image "b2" in "${p.path('stacker.yaml')}": execute failed: exit status 1`,
    )
    expect(errors[0]).toMatch(/^error: /)
    // b2 stopped at `false`, b3 never ran.
    const logs = (await Promise.all(LAYERS.map((l) => readdir(p.path(`log/${l}`))))).flat()
    expect(logs).toContain('b2.start')
    expect(logs).not.toContain('b2.end')
    expect(logs).not.toContain('b3.start')
    // Nothing of the failed layer or what sits on it is tagged; what was tagged is whole.
    const tags = await indexTags(p.path('oci'))
    expect(tags).not.toContain('b2')
    expect(tags).not.toContain('b3')
    for (const t of tags) expect((await readManifest(p.path('oci'), t)).layers.length).toBeGreaterThan(0)
    // The independent branch was not killed half-way: a run that started also ended.
    for (const l of ['a1', 'a2', 'a3'])
      if (logs.includes(`${l}.start`)) expect(logs, `${l} was cut short`).toContain(`${l}.end`)
    expect(await runcList(p.path('.stacker'))).toBe('')
    assertNoMountsUnder(p.dir)
  })
})
