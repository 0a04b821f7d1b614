// Interrupted builds, locks and concurrent stackers: a build killed (SIGINT or SIGKILL) at any point
// leaves the earlier outputs intact and nothing mounted or running, and the next build succeeds; a
// second stacker on the same dirs fails at once; stackers on different dirs run side by side.
import { type ChildProcess, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, existsSync } from 'node:fs'
import { mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { execa } from 'execa'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  assertNoMountsUnder,
  blobPath,
  expectOk,
  fixtures,
  indexTags,
  layerTarEntries,
  manifestDescriptor,
  mountsUnder,
  readIndex,
  readManifest,
  STACKER_BIN,
  stacker,
  type TarEntry,
  tempProject,
  type TempProject,
  waitUntil,
} from './helpers/index.js'

/** A stacker process the test can watch and kill while it works. */
interface Running {
  child: ChildProcess
  stdout(): string
  stderr(): string
  /** Resolves when the process has exited (its stdio closed). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  done(): boolean
}

const live = new Set<ChildProcess>()

function start(args: string[], cwd: string, env: Record<string, string> = {}): Running {
  const child = spawn(process.execPath, [STACKER_BIN, ...args], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  live.add(child)
  let out = ''
  let err = ''
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d
  })
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err += d
  })
  let finished = false
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
    child.once('close', (code, signal) => {
      finished = true
      live.delete(child)
      res({ code, signal })
    })
  })
  return { child, stdout: () => out, stderr: () => err, exited, done: () => finished }
}

afterAll(() => {
  for (const c of live) c.kill('SIGKILL')
})

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return `sha256:${h.digest('hex')}`
}

/** Every file under blobs/sha256 holds exactly what its name says: no partial blob under a real name. */
async function assertBlobsHashCorrectly(layout: string): Promise<void> {
  const dir = join(layout, 'blobs', 'sha256')
  for (const name of await readdir(dir)) {
    expect(await sha256File(join(dir, name)), `blob ${name}`).toBe(`sha256:${name}`)
  }
}

interface Snapshot {
  digest: string
  blobs: string[]
}

/** The manifest digest of `tag` and every blob it references. */
async function snapshotTag(layout: string, tag: string): Promise<Snapshot> {
  const d = await manifestDescriptor(layout, tag)
  const m = await readManifest(layout, tag)
  return { digest: d.digest, blobs: [d.digest, m.config.digest, ...m.layers.map((l) => l.digest)] }
}

/** `tag` still points at the same manifest and every blob it references is there with the right bytes. */
async function assertTagIntact(layout: string, tag: string, snap: Snapshot): Promise<void> {
  // index.json must parse: readIndex throws otherwise.
  await readIndex(layout)
  expect((await manifestDescriptor(layout, tag)).digest).toBe(snap.digest)
  for (const b of snap.blobs) {
    expect(existsSync(blobPath(layout, b)), `blob ${b} of ${tag}`).toBe(true)
    expect(await sha256File(blobPath(layout, b))).toBe(b)
  }
}

/** Containers runc still knows about under the stacker dir's state dir; runc must list it cleanly. */
async function runcContainers(stackerDir: string): Promise<string[]> {
  const root = join(stackerDir, 'runc')
  if (!existsSync(root)) return []
  const r = await execa('runc', ['--root', root, 'list', '-q'], { reject: false })
  expect(r.stderr, `runc list under ${root}`).toBe('')
  expect(r.exitCode).toBe(0)
  return r.stdout.split('\n').filter((l) => l.trim() !== '')
}

async function removeContainers(stackerDir: string): Promise<void> {
  const root = join(stackerDir, 'runc')
  const r = await execa('runc', ['--root', root, 'list', '-q'], { reject: false })
  for (const id of r.stdout.split('\n').filter((l) => l.trim() !== ''))
    await execa('runc', ['--root', root, 'delete', '--force', id], { reject: false })
}

/** Live processes (zombies hold nothing and are skipped) whose command line or cwd mentions `dir`, or
 *  whose command line is exactly one of `cmdlines`. This process is left out. */
async function strayProcesses(dir: string, cmdlines: string[] = []): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue
    try {
      const stat = await readFile(`/proc/${e}/stat`, 'utf8')
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
      if (state === 'Z' || state === 'X') continue
      const cmdline = (await readFile(`/proc/${e}/cmdline`, 'utf8')).replace(/\0+$/, '').replace(/\0/g, ' ')
      const cwd = await readlink(`/proc/${e}/cwd`).catch(() => '')
      if (cmdline.includes(dir) || cwd === dir || cwd.startsWith(`${dir}/`) || cmdlines.includes(cmdline))
        out.push(`${e}: ${cmdline} (cwd ${cwd})`)
    } catch {
      // The process went away while being looked at.
    }
  }
  return out
}

/** Files of an image's layers, top layer last wins (whiteouts are not expected here). */
async function imageFiles(layout: string, tag: string): Promise<Map<string, TarEntry>> {
  const files = new Map<string, TarEntry>()
  for (const l of (await readManifest(layout, tag)).layers) {
    for (const e of await layerTarEntries(layout, l.digest, { withContent: true })) {
      if (e.type === 'file' && e.size > 1_000_000) e.content = Buffer.alloc(0)
      files.set(e.name.replace(/^\.?\//, ''), e)
    }
  }
  return files
}

const BIG = 12_000_000
// A sleep length no other test uses, so an orphaned container's `sleep` can be told apart.
const NAP = '47'

// t1: a tar base of many small files (slow to unpack) and a run that naps; t2: a run that writes a big
// file (slow to write as a layer); t3 on top; side and side2: independent layers on another OCI base
// that nap. With --jobs 2, side2 waits for a free slot while t1 and side run. Each layer binds a dir
// of its own: layers binding one host dir would keep file order and never run at once.
const VICTIM = `
t1:
  from:
    type: tar
    url: \${{BASE_TAR}}
  binds:
    - \${{MARKS}}/t1 -> /marks
  run: |
    touch /marks/t1-start-\${{ROUND}}
    sleep \${{NAP}}
    echo \${{ROUND}} > /round
    touch /marks/t1-end-\${{ROUND}}
t2:
  from:
    type: built
    tag: t1
  binds:
    - \${{MARKS}}/t2 -> /marks
  run: |
    head -c ${BIG} /dev/urandom > /big
    touch /marks/t2-end-\${{ROUND}}
t3:
  from:
    type: built
    tag: t2
  binds:
    - \${{MARKS}}/t3 -> /marks
  run: |
    touch /marks/t3-start-\${{ROUND}}
    echo three > /three
side:
  from:
    type: oci
    url: \${{UBUNTU_OCI}}
  binds:
    - \${{MARKS}}/side -> /marks
  run: |
    touch /marks/side-start-\${{ROUND}}
    sleep \${{NAP}}
    touch /marks/side-end-\${{ROUND}}
side2:
  from:
    type: oci
    url: \${{UBUNTU_OCI}}
  binds:
    - \${{MARKS}}/side2 -> /marks
  run: |
    touch /marks/side2-start-\${{ROUND}}
    sleep \${{NAP}}
    echo side2 > /side2
`

const FIRST = `
first:
  from:
    type: oci
    url: \${{BUSYBOX_OCI}}
  run: echo first > /first
`

describe('a build killed at any point', () => {
  let p: TempProject
  let firstSnap: Snapshot
  let baseTar: string

  beforeAll(async () => {
    p = await tempProject({ 'stacker.yaml': VICTIM, 'first.yaml': FIRST })
    for (const l of ['t1', 't2', 't3', 'side', 'side2']) await mkdir(p.path(`marks/${l}`), { recursive: true })
    // Thousands of small files make the tar base take a while to unpack.
    const tree = p.path('tarbase')
    await mkdir(tree)
    await execa('tar', ['-xzf', fixtures().busyboxTar, '-C', tree])
    for (let d = 0; d < 3; d++) {
      await mkdir(join(tree, 'many', `d${d}`), { recursive: true })
      await Promise.all(
        Array.from({ length: 100 }, (_, f) => writeFile(join(tree, 'many', `d${d}`, `f${f}`), `${d}/${f}\n`)),
      )
    }
    baseTar = p.path('base.tar.gz')
    await writeFile(join(tree, 'zzz-last'), 'last\n')
    // Sorted, so zzz-last is the final entry: its presence tells whether the unpacking finished.
    await execa('tar', ['--sort=name', '-czf', baseTar, '-C', tree, '.'])
    expectOk(
      await stacker(['build', '-f', 'first.yaml', '--substitute', `BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`], {
        cwd: p.dir,
      }),
    )
    firstSnap = await snapshotTag(p.path('oci'), 'first')
  })
  afterAll(async () => {
    // Should a test fail half-way, containers of a killed build must not outlive the project.
    if (p) await removeContainers(p.path('.stacker'))
    await p?.cleanup()
  })

  const subs = (round: number, nap: string): string[] =>
    [
      `BASE_TAR=${baseTar}`,
      `MARKS=${p.path('marks')}`,
      `ROUND=${round}`,
      `NAP=${nap}`,
      `UBUNTU_OCI=${fixtures().UBUNTU_OCI}`,
    ].flatMap((s) => ['--substitute', s])

  // `t1-start-3` is in marks/t1/.
  const marker = (name: string) => existsSync(p.path(`marks/${name.slice(0, name.indexOf('-'))}/${name}`))

  /** Something is being written into the output layout: a layer blob in progress. */
  const blobInProgress = async () =>
    (await readdir(p.path('oci/.tmp')).catch(() => [] as string[])).some((f) => f.startsWith('blob-'))

  interface KillPoint {
    what: string
    /** How long the naps in run steps last. */
    nap: string
    /** True once the build has reached the point to kill it at. */
    reached(r: Running, round: number): Promise<boolean>
    /** What must not have happened yet when the process has exited (the kill landed in time). */
    notYet?(round: number): boolean
    /** Checks right after a SIGINT. */
    interrupted?(): void
  }

  const POINTS: KillPoint[] = [
    {
      what: 'unpacking the tar base',
      nap: NAP,
      reached: async (r) => r.stderr().includes(`unpacking ${baseTar}`),
      notYet: (round) => !marker(`t1-start-${round}`),
      // SIGINT stops the unpacking itself rather than waiting for it to finish.
      interrupted: () => {
        expect(existsSync(p.path('roots/.store/build/t1/upper'))).toBe(true)
        expect(existsSync(p.path('roots/.store/build/t1/upper/zzz-last'))).toBe(false)
      },
    },
    {
      what: 'running two containers',
      nap: NAP,
      reached: async (_, round) => marker(`t1-start-${round}`) && marker(`side-start-${round}`),
      notYet: (round) => !marker(`t1-end-${round}`) && !marker(`side-end-${round}`),
    },
    {
      what: 'writing a big layer',
      nap: '0',
      reached: async (_, round) => marker(`t2-end-${round}`) && (await blobInProgress()),
      notYet: (round) => !marker(`t3-start-${round}`),
    },
  ]

  /** Builds with the round's inputs and no naps; checks the image and that nothing is left over. */
  async function buildAndCheck(round: number): Promise<void> {
    const r = expectOk(await stacker(['build', ...subs(round, '0')], { cwd: p.dir }))
    expect(r.stderr).not.toContain('error:')
    const oci = p.path('oci')
    const tags = await indexTags(oci)
    expect(tags).toEqual(expect.arrayContaining(['first', 't1', 't2', 't3', 'side', 'side2']))
    expect(new Set(tags).size).toBe(tags.length)
    const files = await imageFiles(oci, 't3')
    expect(files.get('round')?.content?.toString()).toBe(`${round}\n`)
    expect(files.get('three')?.content?.toString()).toBe('three\n')
    expect(files.get('big')?.size).toBe(BIG)
    expect(files.get('zzz-last')?.content?.toString()).toBe('last\n')
    expect(files.get('many/d2/f99')?.content?.toString()).toBe('2/99\n')
    expect(files.has('bin/busybox')).toBe(true)
    await assertTagIntact(oci, 'first', firstSnap)
    await assertBlobsHashCorrectly(oci)
    assertNoMountsUnder(p.dir)
    expect(await runcContainers(p.path('.stacker'))).toEqual([])
    expect(await strayProcesses(p.dir, [`sleep ${NAP}`])).toEqual([])
  }

  let round = 0
  for (const sig of ['SIGINT', 'SIGKILL'] as const) {
    for (const point of POINTS) {
      it(`${sig} while ${point.what}`, async () => {
        round++
        const r = start(['build', '--jobs', '2', ...subs(round, point.nap)], p.dir)
        await waitUntil(() => point.reached(r, round), {
          what: `build reaching "${point.what}"`,
          timeoutMs: 60_000,
          gaveUp: () => (r.done() ? `stacker exited early:\n${r.stderr()}` : undefined),
        })
        r.child.kill(sig)
        const { code, signal } = await r.exited
        if (point.notYet) expect(point.notYet(round), 'the kill came too late to test this point').toBe(true)
        const oci = p.path('oci')
        await assertTagIntact(oci, 'first', firstSnap)
        await assertBlobsHashCorrectly(oci)
        if (sig === 'SIGINT') {
          // Prompt: it exited on its own, with one error line, without waiting for the naps.
          expect(signal).toBeNull()
          point.interrupted?.()
          expect(code).not.toBe(0)
          const errors = r
            .stderr()
            .split('\n')
            .filter((l) => l.includes('error:'))
          expect(errors, r.stderr()).toHaveLength(1)
          expect(errors[0]).toMatch(/^error: /)
          expect(r.stderr().trimEnd().split('\n').at(-1)).toBe(errors[0])
          // Everything released by the process itself.
          assertNoMountsUnder(p.dir)
          expect(await runcContainers(p.path('.stacker'))).toEqual([])
          expect(await strayProcesses(p.dir, [`sleep ${NAP}`])).toEqual([])
        } else {
          expect(signal).toBe('SIGKILL')
        }
        // After SIGKILL the next stacker cleans up what the dead one left.
        await buildAndCheck(round)
      })
    }
  }
})

const SLOW = `
slow:
  from:
    type: oci
    url: \${{BUSYBOX_OCI}}
  binds:
    - \${{MARKS}} -> /marks
  run: |
    touch /marks/\${{NAME}}-start
    i=0
    while [ ! -e /marks/\${{NAME}}-go ]; do
      sleep 0.1
      i=$((i+1))
      [ $i -lt 1200 ] || exit 1
    done
    echo \${{NAME}} > /who
`

describe('locks', () => {
  let p: TempProject
  const holders: ChildProcess[] = []
  beforeAll(async () => {
    p = await tempProject({ 'stacker.yaml': SLOW })
    await mkdir(p.path('marks'))
  })
  afterEach(async () => {
    for (const h of holders.splice(0)) {
      if (h.pid !== undefined && h.exitCode === null && h.signalCode === null) process.kill(-h.pid, 'SIGKILL')
    }
  })
  afterAll(() => p?.cleanup())

  const subs = (name: string, marks = p.path('marks')) =>
    [`BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`, `MARKS=${marks}`, `NAME=${name}`].flatMap((s) => ['--substitute', s])

  it('a second stacker on the same dirs fails at once, and succeeds once the first is done', async () => {
    const first = start(['build', ...subs('one')], p.dir)
    await waitUntil(async () => existsSync(p.path('marks/one-start')), {
      what: 'first build running',
      timeoutMs: 60_000,
      gaveUp: () => (first.done() ? first.stderr() : undefined),
    })
    const second = await stacker(['build', ...subs('two')], { cwd: p.dir })
    expect(second.exitCode).toBe(1)
    expect(second.stderr).toContain("couldn't acquire lock")
    expect(second.stderr).toMatch(/^error: couldn't acquire lock on \S+\/\.lock: lock owned by pid \d+/m)
    // "At once": the second gave up while the first was still in its run.
    expect(first.done()).toBe(false)
    expect(existsSync(p.path('marks/two-start'))).toBe(false)

    await writeFile(p.path('marks/one-go'), '')
    const r1 = await first.exited
    expect(r1.code, first.stderr()).toBe(0)
    await writeFile(p.path('marks/two-go'), '')
    expectOk(await stacker(['build', ...subs('two')], { cwd: p.dir }))
    const files = await imageFiles(p.path('oci'), 'slow')
    expect(files.get('who')?.content?.toString()).toBe('two\n')
    assertNoMountsUnder(p.dir)
  })

  for (const which of ['roots/.lock', '.stacker/.lock']) {
    it(`an external flock on ${which} makes stacker fail with couldn't acquire lock`, async () => {
      await writeFile(p.path('marks/three-go'), '')
      if (!existsSync(p.path(which))) expectOk(await stacker(['build', ...subs('three')], { cwd: p.dir }))
      const holder = spawn('flock', [p.path(which), 'sh', '-c', 'echo held; exec sleep 30'], {
        stdio: ['ignore', 'pipe', 'inherit'],
        detached: true,
      })
      holders.push(holder)
      await new Promise<void>((res, rej) => {
        holder.stdout?.setEncoding('utf8').on('data', (d: string) => {
          if (d.includes('held')) res()
        })
        holder.once('exit', () => rej(new Error('flock exited')))
      })
      const r = await stacker(['build', ...subs('three')], { cwd: p.dir })
      expect(r.exitCode).toBe(1)
      expect(r.stderr).toContain(`couldn't acquire lock on ${p.path(which)}`)
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1)
      process.kill(-(holder.pid as number), 'SIGKILL')
      await new Promise((res) => holder.once('close', res))
      expectOk(await stacker(['build', ...subs('three')], { cwd: p.dir }))
      assertNoMountsUnder(p.dir)
    })
  }

  it('two stackers on different dirs run at the same time and both succeed', async () => {
    const a = await tempProject({ 'stacker.yaml': SLOW })
    const b = await tempProject({ 'stacker.yaml': SLOW })
    try {
      // Each run waits for the other to have started: both finish only if they ran side by side.
      const marks = p.path('marks')
      const rendezvous = (me: string, other: string) =>
        SLOW.replace(`\${{NAME}}-go`, `${other}-start`).replaceAll(`\${{NAME}}`, me)
      await a.write('stacker.yaml', rendezvous('pa', 'pb'))
      await b.write('stacker.yaml', rendezvous('pb', 'pa'))
      const [ra, rb] = await Promise.all([
        stacker(['build', ...subs('x', marks)], { cwd: a.dir }),
        stacker(['build', ...subs('x', marks)], { cwd: b.dir }),
      ])
      expectOk(ra)
      expectOk(rb)
      expect((await imageFiles(a.path('oci'), 'slow')).get('who')?.content?.toString()).toBe('pa\n')
      expect((await imageFiles(b.path('oci'), 'slow')).get('who')?.content?.toString()).toBe('pb\n')
      assertNoMountsUnder(a.dir)
      assertNoMountsUnder(b.dir)
    } finally {
      await a.cleanup()
      await b.cleanup()
    }
  })
})

const CHATTY = `
chatty:
  from:
    type: oci
    url: \${{BUSYBOX_OCI}}
  binds:
    - \${{MARKS}} -> /marks
  run: |
    touch /marks/chatty-start-\${{ROUND}}
    i=0
    while [ $i -lt \${{LINES}} ]; do echo line $i; sleep 0.1; i=$((i+1)); done
`

describe('a reader that goes away', () => {
  let p: TempProject
  beforeAll(async () => {
    p = await tempProject({ 'stacker.yaml': CHATTY })
    for (const l of ['t1', 't2', 't3', 'side', 'side2']) await mkdir(p.path(`marks/${l}`), { recursive: true })
  })
  afterAll(async () => {
    if (p) await removeContainers(p.path('.stacker'))
    await p?.cleanup()
  })
  const subs = (round: number, lines: number) =>
    [`BUSYBOX_OCI=${fixtures().BUSYBOX_OCI}`, `MARKS=${p.path('marks')}`, `ROUND=${round}`, `LINES=${lines}`].flatMap(
      (s) => ['--substitute', s],
    )

  it('(`stacker build 2>&1 | head`) stops the build and releases its container and mounts', async () => {
    const r = start(['build', ...subs(1, 600)], p.dir)
    await waitUntil(async () => existsSync(p.path('marks/chatty-start-1')) && r.stdout().includes('line 1'), {
      what: 'the run step printing',
      timeoutMs: 60_000,
      gaveUp: () => (r.done() ? `stacker exited early:\n${r.stderr()}` : undefined),
    })
    // The reading ends close: the next log line written gets EPIPE.
    r.child.stdout?.destroy()
    r.child.stderr?.destroy()
    const { code, signal } = await r.exited
    expect(signal).toBeNull()
    expect(code).toBe(141)
    assertNoMountsUnder(p.dir)
    expect(await runcContainers(p.path('.stacker'))).toEqual([])
    expect(await strayProcesses(p.dir, ['sleep 0.1'])).toEqual([])
    const again = expectOk(await stacker(['build', ...subs(2, 3)], { cwd: p.dir }))
    expect(again.stdout).toContain('line 2')
    expect(await indexTags(p.path('oci'))).toEqual(['chatty'])
  })
})

describe('a full disk', () => {
  let p: TempProject
  beforeAll(async () => {
    p = await tempProject()
    // The whole project (stacker, roots and oci dirs) on a filesystem of 14 MiB.
    await mkdir(p.path('w'))
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=14m', 'e2e-full', p.path('w')])
    await writeFile(
      p.path('w/stacker.yaml'),
      `small:
  from:
    type: oci
    url: ${fixtures().BUSYBOX_OCI}
  run: echo small > /small
big:
  from:
    type: built
    tag: small
  run: head -c \${{SIZE}} /dev/urandom > /big
`,
    )
  })
  afterAll(async () => {
    if (p) await removeContainers(p.path('w/.stacker'))
    await p?.cleanup()
  })

  it('fails with one line naming the layer, keeps what was built, and builds once `stacker gc` made room', async () => {
    const w = p.path('w')
    expectOk(await stacker(['build', '--substitute', 'SIZE=1000'], { cwd: w }))
    const small = await snapshotTag(p.path('w/oci'), 'small')
    // Fits as a run step's output, not once more as the layer's blob.
    const r = await stacker(['build', '--substitute', 'SIZE=6500000'], { cwd: w })
    expect(r.exitCode).toBe(1)
    expect(r.stderr.split('\n').filter((l) => l.startsWith('error:'))).toEqual([
      expect.stringMatching(/^error: couldn't build big: ENOSPC: no space left on device.*`stacker gc`/),
    ])
    expect(r.stderr).not.toMatch(/^\s+at /m)
    expect(mountsUnder(p.dir)).toEqual([w])
    expect(await runcContainers(p.path('w/.stacker'))).toEqual([])
    expect((await readdir(p.path('w/oci/.tmp')).catch(() => [] as string[])).length).toBe(0)
    expect(await snapshotTag(p.path('w/oci'), 'small')).toEqual(small)
    expectOk(await stacker(['gc'], { cwd: w }))
    expectOk(await stacker(['build', '--substitute', 'SIZE=2000000'], { cwd: w }))
    expect(await snapshotTag(p.path('w/oci'), 'small')).toEqual(small)
    const files = await imageFiles(p.path('w/oci'), 'big')
    expect(files.get('big')?.size).toBe(2000000)
    expect(files.get('small')?.content?.toString()).toBe('small\n')
  })
})
