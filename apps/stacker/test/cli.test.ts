import { mkdtemp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { execa } from 'execa'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const BIN = resolve(import.meta.dirname, '../bin/stacker')
let dir: string

async function stacker(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}) {
  const r = await execa(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? dir, env: opts.env ?? {}, reject: false })
  return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode ?? -1 }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stacker-cli-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('stacker CLI', () => {
  it('prints help with COMMANDS and every command when run without arguments', async () => {
    const r = await stacker([])
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toContain('COMMANDS')
    for (const c of [
      'build',
      'recursive-build',
      'publish',
      'chroot',
      'grab',
      'inspect',
      'clean',
      'check',
      'convert',
      'gc',
      'unpriv-setup',
    ])
      expect(r.stdout).toMatch(new RegExp(`\\n\\s+${c}\\b`))
    expect(r.stdout).not.toContain('internal-go')
  })

  it('--help and --version', async () => {
    const h = await stacker(['--help'])
    expect(h.exitCode).toBe(0)
    expect(h.stdout).toContain('--roots-dir')
    const v = await stacker(['--version'])
    expect(v.exitCode).toBe(0)
    expect(v.stdout).toMatch(/^stacker version \d+\.\d+\.\d+/)
  })

  it('gives one error line and exit 1 for an unknown command or flag', async () => {
    const r = await stacker(['frobnicate'])
    expect(r.exitCode).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toMatch(/^error: /)
    const f = await stacker(['build', '--no-such-flag'])
    expect(f.exitCode).toBe(1)
    expect(f.stderr).toMatch(/^error: unknown option '--no-such-flag'/)
  })

  it('refuses --debug with --quiet', async () => {
    const r = await stacker(['--debug', '--quiet', 'build'])
    expect(r.exitCode).toBe(1)
    expect(r.stderr).toContain("debug and quiet don't make sense together")
  })

  it("refuses ':' in --roots-dir before making it absolute", async () => {
    const r = await stacker(['--roots-dir', 'a:b', 'build'])
    expect(r.exitCode).toBe(1)
    expect(r.stderr.trim()).toBe(
      "error: using ':' in the name of --roots-dir (a:b) is forbidden due to overlay constraints",
    )
  })

  it('unpriv-setup names what it lacks, in one line, and changes nothing', async () => {
    const r = await stacker(['unpriv-setup', '--username', 'no-such-user-here'], { cwd: dir })
    expect(r.exitCode).toBe(1)
    expect(r.stderr.trim()).toBe(
      process.getuid?.() === 0
        ? 'error: please specify --uid or run unpriv-setup with sudo (no user no-such-user-here in the passwd database)'
        : 'error: unpriv-setup must be run as root: it edits /etc/subuid and /etc/subgid',
    )
    expect(await readdir(dir)).not.toContain('.stacker')
  })

  it('convert: upstream flags, the Dockerfile line on an error, a clean error without a Dockerfile', async () => {
    const p = join(dir, 'convert')
    await mkdir(p, { recursive: true })
    await writeFile(join(p, 'Dockerfile'), 'FROM busybox\nSTOPSIGNAL SIGINT\nENTRYPOINT ["/bin/sh"]\n')
    const r = await stacker(['convert'], { cwd: p })
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.stderr).toContain('Dockerfile:2: STOPSIGNAL SIGINT is not converted')
    expect(await readFile(join(p, 'stacker.yaml'), 'utf8')).toContain('url: docker://busybox')
    expect(await readFile(join(p, 'stacker-subs.yaml'), 'utf8')).toContain('IMAGE: app')
    const o = await stacker(['convert', '-i', 'Dockerfile', '-o', 'out.yaml', '-s', 'subs.yaml'], { cwd: p })
    expect(o.exitCode, o.stderr).toBe(0)
    expect(await readFile(join(p, 'out.yaml'), 'utf8')).toContain('entrypoint:')
    await writeFile(join(p, 'Dockerfile'), 'FROM busybox\nRUN echo "open\nCOPY a\n')
    const e = await stacker(['convert', '--docker-file', 'Dockerfile', '--output-file', 'x.yaml'], { cwd: p })
    expect(e.exitCode).toBe(1)
    expect(e.stderr).toBe('error: Dockerfile:3: COPY requires at least two arguments')
    const m = await stacker(['convert', '--docker-file', 'nope'], { cwd: p })
    expect(m.exitCode).toBe(1)
    expect(m.stderr.trim().split('\n')).toHaveLength(1)
    expect(m.stderr).toMatch(/^error: couldn't read Dockerfile nope: /)
  })

  it('a stacker.yaml error is one line with file:line:col, and a stack trace only with --debug', async () => {
    const p = join(dir, 'bad')
    await mkdir(p, { recursive: true })
    await writeFile(join(p, 'stacker.yaml'), 'a:\n  from:\n    type: scratch\n  bogus: 1\n')
    const r = await stacker(['--roots-dir', join(p, 'roots'), 'build', '--order-only'], { cwd: p })
    expect(r.exitCode).toBe(1)
    const lines = r.stderr.trim().split('\n')
    expect(lines.at(-1)).toMatch(/^error: stackerfile: unknown directive bogus \(.*stacker\.yaml:4:3\)$/)
    expect(r.stderr).not.toMatch(/\n\s+at /)
    const d = await stacker(['--debug', '--roots-dir', join(p, 'roots'), 'build', '--order-only'], { cwd: p })
    expect(d.exitCode).toBe(1)
    expect(d.stderr).toMatch(/\n\s+at /)
  })

  it('build --order-only prints the order at normal log level', async () => {
    const p = join(dir, 'order')
    await mkdir(join(p, 'sub1'), { recursive: true })
    await mkdir(join(p, 'sub2'), { recursive: true })
    await writeFile(join(p, 'sub1', 'stacker.yaml'), 'one:\n  from:\n    type: scratch\n')
    await writeFile(
      join(p, 'sub2', 'stacker.yaml'),
      'config:\n  prerequisites:\n    - ../sub1/stacker.yaml\ntwo:\n  from:\n    type: built\n    tag: one\n',
    )
    const r = await stacker(['--roots-dir', join(p, 'roots'), 'build', '--order-only', '-f', 'sub2/stacker.yaml'], {
      cwd: p,
    })
    expect(r.exitCode).toBe(0)
    expect(r.stderr).toContain(`0 build ${join(p, 'sub1/stacker.yaml')}: requires: []`)
    expect(r.stderr).toContain(`1 build ${join(p, 'sub2/stacker.yaml')}: requires: [${join(p, 'sub1/stacker.yaml')}]`)
    const rb = await stacker(['--roots-dir', join(p, 'roots'), 'recursive-build', '--order-only', '-d', p], { cwd: p })
    expect(rb.exitCode).toBe(0)
    expect(rb.stderr).toContain(`1 build ${join(p, 'sub2/stacker.yaml')}: requires: [${join(p, 'sub1/stacker.yaml')}]`)
  })

  it('reads dirs from the config file unless flags are given', async () => {
    const p = join(dir, 'conf')
    await mkdir(p, { recursive: true })
    await writeFile(join(p, 'conf.yaml'), 'stacker_dir: sd\noci_dir: od\nrootfs_dir: rd\n')
    await writeFile(join(p, 'stacker.yaml'), 'a:\n  from:\n    type: scratch\n')
    const r = await stacker(['--config', join(p, 'conf.yaml'), '--debug', 'build', '--order-only'], { cwd: p })
    expect(r.exitCode).toBe(0)
    const { stat } = await import('node:fs/promises')
    expect((await stat(join(p, 'rd'))).isDirectory()).toBe(true)
    expect((await stat(join(p, 'sd'))).isDirectory()).toBe(true)
  })

  it('check reports each tool', async () => {
    const r = await stacker(['--roots-dir', join(dir, 'check-roots'), '--stacker-dir', join(dir, 'check-sd'), 'check'])
    expect(r.stderr).toContain('os/kernel:')
    for (const t of ['runc', 'mksquashfs', 'unsquashfs', 'veritysetup']) expect(r.stderr).toContain(`${t}: ok`)
    expect(r.exitCode).toBe(0)
    const missing = await stacker(
      ['--roots-dir', join(dir, 'check-roots'), '--stacker-dir', join(dir, 'check-sd'), 'check'],
      {
        env: { PATH: '/nonexistent' },
      },
    )
    expect(missing.exitCode).toBe(1)
    expect(missing.stderr).toContain('runc not found')
    expect(missing.stderr).toContain('install the Debian package runc')
  })
})
