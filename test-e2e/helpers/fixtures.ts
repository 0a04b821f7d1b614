import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { execa } from 'execa'
import { FIXTURES_DIR, FIXTURES_JSON, MAKE_BUSYBOX_BASE } from './paths.js'

/** The prepared base images, built once per test run by global-setup.ts. Read-only for tests. */
export interface Fixtures {
  /** OCI layout with tag `latest`: busybox-static, applets as hardlinks, a minimal /etc. */
  busyboxLayout: string
  /** OCI layout with tag `latest`: the busybox rootfs plus /etc/issue (Ubuntu) and /bin/bash. */
  ubuntuLayout: string
  /** The busybox rootfs as a gzip tarball, for `type: tar` bases. */
  busyboxTar: string
  /** `<busyboxLayout>:latest`, for `from: {type: oci, url: ...}` and `--substitute BUSYBOX_OCI=...`. */
  BUSYBOX_OCI: string
  /** `<ubuntuLayout>:latest`. */
  UBUNTU_OCI: string
}

/** The fixtures of this run. Throws if global-setup has not built them (run through the e2e project). */
export function fixtures(): Fixtures {
  if (!existsSync(FIXTURES_JSON)) {
    throw new Error(`${FIXTURES_JSON} is missing: run the tests with \`vitest run --project e2e\``)
  }
  return JSON.parse(readFileSync(FIXTURES_JSON, 'utf8')) as Fixtures
}

/**
 * Builds the fixtures if missing and records their paths in FIXTURES_JSON. Idempotent and safe to run
 * concurrently: the builds run under a flock, and make-busybox-base does nothing when its output exists.
 * The directory is named after the script's hash, so editing the script rebuilds the fixtures.
 */
export async function prepareFixtures(): Promise<Fixtures> {
  const hash = createHash('sha256').update(readFileSync(MAKE_BUSYBOX_BASE)).digest('hex').slice(0, 12)
  const dir = join(FIXTURES_DIR, `base-${hash}`)
  await mkdir(dir, { recursive: true })
  const f: Fixtures = {
    busyboxLayout: join(dir, 'busybox'),
    ubuntuLayout: join(dir, 'ubuntu'),
    busyboxTar: join(dir, 'busybox.tar.gz'),
    BUSYBOX_OCI: `${join(dir, 'busybox')}:latest`,
    UBUNTU_OCI: `${join(dir, 'ubuntu')}:latest`,
  }
  const lock = join(FIXTURES_DIR, '.lock')
  const build = async (args: string[]): Promise<void> => {
    const r = await execa('flock', [lock, 'bash', MAKE_BUSYBOX_BASE, ...args], { reject: false, all: true })
    if (r.exitCode !== 0) throw new Error(`make-busybox-base ${args.join(' ')} failed:\n${r.all}`)
  }
  await build([f.busyboxLayout, 'latest'])
  await build(['--ubuntu', f.ubuntuLayout, 'latest'])
  await build(['--tar', f.busyboxTar])
  // Fixtures of older versions of the script are dead weight.
  for (const e of await readdir(FIXTURES_DIR)) {
    if (e.startsWith('base-') && e !== `base-${hash}`) await rm(join(FIXTURES_DIR, e), { recursive: true, force: true })
  }
  await writeFile(FIXTURES_JSON, `${JSON.stringify(f, null, 2)}\n`)
  return f
}
