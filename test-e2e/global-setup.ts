import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type {} from 'vitest'
import type { TestProject } from 'vitest/node'
import { type Fixtures, prepareFixtures } from './helpers/fixtures.js'
import { CORPUS_DIR } from './helpers/paths.js'
import { unmountUnder } from './helpers/temp-project.js'

declare module 'vitest' {
  export interface ProvidedContext {
    fixtures: Fixtures
    /** The default cwd of stacker() when a test gives none. */
    scratchDir: string
    /** Where stacker() records builds for the --jobs replay (helpers/corpus.ts). */
    corpusDir: string
  }
}

/** Builds the base images every e2e test uses (seconds the first time, nothing afterwards) and empties
 *  the build corpus. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const f = await prepareFixtures()
  project.provide('fixtures', f)
  const scratch = await mkdtemp(join(tmpdir(), 'stacker-e2e-cwd-'))
  project.provide('scratchDir', scratch)
  // The replay (replay/jobs.test.ts) reads what this run records, and only that.
  await rm(CORPUS_DIR, { recursive: true, force: true })
  await mkdir(CORPUS_DIR, { recursive: true })
  project.provide('corpusDir', CORPUS_DIR)
  return async () => {
    await unmountUnder(scratch)
    await rm(scratch, { recursive: true, force: true })
  }
}
