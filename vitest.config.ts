import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['packages/*/test/**/*.test.ts', 'apps/*/test/**/*.test.ts', 'scripts/test/**/*.test.ts'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test-e2e/**/*.test.ts'],
          exclude: ['test-e2e/replay/**', '**/node_modules/**'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          globalSetup: ['test-e2e/global-setup.ts'],
        },
      },
      {
        // Replays the builds the e2e project recorded (test-e2e/helpers/corpus.ts), so it runs after it.
        test: {
          name: 'e2e-jobs',
          include: ['test-e2e/replay/**/*.test.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          sequence: { groupOrder: 1 },
          // Two entries at a time: a serial build leaves a CPU idle (test-e2e/README.md).
          maxConcurrency: 2,
        },
      },
    ],
  },
})
