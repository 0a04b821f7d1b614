import type {} from 'vitest'
import type { TestProject } from 'vitest/node'
import { prepareFixtures } from './helpers/fixtures.js'

declare module 'vitest' {
  export interface ProvidedContext {
    fixtures: import('./helpers/fixtures.js').Fixtures
  }
}

/** Builds the base images every e2e test uses (seconds the first time, nothing afterwards). */
export default async function setup(project: TestProject): Promise<void> {
  const f = await prepareFixtures()
  project.provide('fixtures', f)
}
