import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The repository root, found from this file so tests work from any cwd. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const STACKER_BIN = join(REPO_ROOT, 'apps', 'stacker', 'bin', 'stacker')
export const STACKER_MAIN = join(REPO_ROOT, 'apps', 'stacker', 'dist', 'main.js')
export const MAKE_BUSYBOX_BASE = join(REPO_ROOT, 'scripts', 'make-busybox-base')
/** Gitignored; holds the fixture images built once per run by global-setup.ts. */
export const FIXTURES_DIR = join(REPO_ROOT, 'test-e2e', '.fixtures')
export const FIXTURES_JSON = join(FIXTURES_DIR, 'fixtures.json')
/** Gitignored; the builds the e2e project recorded for the --jobs replay (helpers/corpus.ts), remade each run. */
export const CORPUS_DIR = join(REPO_ROOT, 'test-e2e', '.corpus')
