import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type {} from 'vitest'
import type { TestProject } from 'vitest/node'
import { type Fixtures, prepareFixtures } from './helpers/fixtures.js'
import { unmountUnder } from './helpers/temp-project.js'

declare module 'vitest' {
  export interface ProvidedContext {
    fixtures: Fixtures
    /** The default cwd of stacker() when a test gives none. */
    scratchDir: string
  }
}

/** Builds the base images every e2e test uses (seconds the first time, nothing afterwards). */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const f = await prepareFixtures()
  project.provide('fixtures', f)
  const scratch = await mkdtemp(join(tmpdir(), 'stacker-e2e-cwd-'))
  project.provide('scratchDir', scratch)
  return async () => {
    await unmountUnder(scratch)
    await rm(scratch, { recursive: true, force: true })
  }
}
