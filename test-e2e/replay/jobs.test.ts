// Parallelism never changes a result: every stackerfile the e2e suite built (recorded by stacker(), see
// helpers/corpus.ts) that has two layers --jobs may build at once is built again with `--jobs 1` and
// with the default, and the OCI indexes must be byte-identical. Runs as the `e2e-jobs` project, after
// the `e2e` project has recorded the corpus (vitest.config.ts).
import { mkdtemp, rename, rm } from 'node:fs/promises'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, it } from 'vitest'
import { CORPUS_DIR } from '../helpers/paths.js'
import {
  compareStable,
  type CorpusEntry,
  describeDifferences,
  entryLabel,
  readCorpus,
  readLayoutJson,
  type Restored,
  restore,
} from '../helpers/replay.js'
import { expectOk, stacker } from '../helpers/stacker.js'

/** Used when the recorded build did not set one: without it, image configs carry the build time. */
const SOURCE_DATE_EPOCH = '1700000000'
// On a one-CPU machine the default is --jobs 1; the comparison then needs an explicit second job.
const PARALLEL = availableParallelism() > 1 ? [] : ['--jobs', '2']
const PARALLEL_NAME = PARALLEL.length ? '--jobs 2' : `the default (--jobs ${availableParallelism()})`

const { entries, errors, recordings } = readCorpus(CORPUS_DIR)
const candidates = entries.filter((e) => e.recipe.archived)
// Builds of a stackerfile already archived with other substitution values or input content.
const variants = entries.filter((e) => e.recipe.variantOf !== null)

const outcome = {
  identical: [] as string[],
  weakened: [] as Array<{ label: string; unstable: string[] }>,
  skipped: [] as Array<{ label: string; reason: string }>,
}

/** Builds the restored entry from fresh inputs with `jobs`, then moves its OCI layout to `dest`. */
async function buildInto(r: Restored, jobs: string[], dest: string): Promise<string> {
  await r.reset()
  const result = await stacker([...r.args, ...jobs], {
    cwd: r.cwd,
    env: { ...r.env, SOURCE_DATE_EPOCH: r.env.SOURCE_DATE_EPOCH || SOURCE_DATE_EPOCH },
    input: r.input,
  })
  expectOk(result)
  await rename(r.dirs.ociDir, dest)
  return dest
}

function skipReason(e: CorpusEntry): string | undefined {
  const { plan, left } = e.recipe
  if ('error' in plan) return undefined
  if (plan.needsServer.length) return `needs a server that is gone: ${plan.needsServer.join('; ')}`
  if (left.length) return `inputs not recorded: ${left.map((l) => `${l.path} (${l.reason})`).join('; ')}`
  if (plan.readsState.length)
    return `reads what an earlier build left in its stacker or roots dir: ${plan.readsState.join('; ')}`
  if (plan.outsideOutputs.length) return `writes outside its temp dirs: ${plan.outsideOutputs.join(', ')}`
  return undefined
}

describe.concurrent(`--jobs 1 and ${PARALLEL_NAME} build the recorded e2e stackerfiles the same`, () => {
  afterAll(() => {
    const lines = [
      `--jobs replay: ${entries.length} recorded builds, ${entries.length - candidates.length - variants.length} without two independent layers, ${variants.length} variants of another, ${candidates.length} to replay:`,
      `  recording ${recordings.count} builds took ${(recordings.ms / 1000).toFixed(1)} s (summed over the e2e workers)`,
      `  ${outcome.identical.length} byte-identical, ${outcome.weakened.length} compared without what two serial builds disagree on, ${outcome.skipped.length} skipped`,
      ...outcome.weakened.map(
        (w) =>
          `  weakened: ${w.label}\n    not compared: ${w.unstable.slice(0, 8).join('; ')}${w.unstable.length > 8 ? `; ... ${w.unstable.length - 8} more` : ''}`,
      ),
      ...outcome.skipped.map((s) => `  skipped: ${s.label}\n    ${s.reason}`),
    ]
    console.log(lines.join('\n'))
  })

  it('has a corpus, recorded without errors (run the e2e project first)', ({ expect }) => {
    expect(errors, errors.join('\n')).toEqual([])
    expect(entries.length, `no recorded builds in ${CORPUS_DIR}`).toBeGreaterThan(0)
  })

  for (const e of candidates) {
    const label = entryLabel(e)
    it(label, async ({ expect, skip, annotate }) => {
      const { plan } = e.recipe
      if ('error' in plan)
        throw new Error(`the recorded build succeeded, its stackerfiles could not be read: ${plan.error}`)
      const reason = skipReason(e)
      if (reason !== undefined) {
        outcome.skipped.push({ label, reason })
        skip(reason)
      }
      const r = await restore(e)
      const out = await mkdtemp(join(tmpdir(), 'stacker-e2e-jobs-'))
      try {
        const serial = await buildInto(r, ['--jobs', '1'], join(out, 'serial'))
        const parallel = await buildInto(r, PARALLEL, join(out, 'parallel'))
        const a = await readLayoutJson(serial)
        const b = await readLayoutJson(parallel)
        expect(a.tags.length, 'the build tagged nothing').toBeGreaterThan(0)
        if (a.index.equals(b.index)) {
          // Same index, so the same manifest digests; the blobs they name must then be the same bytes.
          for (const [digest, bytes] of a.blobs) expect(b.blobs.get(digest)?.equals(bytes), digest).toBe(true)
          outcome.identical.push(label)
          return
        }
        // Different: a second serial build tells a parallel difference from a build that is not a
        // function of its inputs (a step writing the time, say).
        const again = await buildInto(r, ['--jobs', '1'], join(out, 'serial-again'))
        const c = await readLayoutJson(again)
        if (c.index.equals(a.index)) {
          const diff = await describeDifferences(serial, parallel, ['--jobs 1', PARALLEL_NAME])
          throw new Error(
            `${plan.independent?.file}: --jobs 1 and ${PARALLEL_NAME} give different indexes, and two --jobs 1 builds agree:\n${diff.join('\n')}`,
          )
        }
        const { differences, unstable } = await compareStable(serial, parallel, again)
        outcome.weakened.push({ label, unstable })
        annotate(`two --jobs 1 builds differ; not compared: ${unstable.join('; ')}`)
        expect(differences, `--jobs 1 and ${PARALLEL_NAME} differ where two --jobs 1 builds agree`).toEqual([])
      } finally {
        await r.cleanup()
        await rm(out, { recursive: true, force: true })
      }
    })
  }
})
