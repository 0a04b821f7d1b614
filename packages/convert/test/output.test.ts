import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { convert } from './helpers.js'

// Characters that mean something to YAML, to stacker's substitution or to Docker's words.
const tricky = fc.string({
  unit: fc.constantFrom(
    'a',
    'A',
    'V',
    '1',
    ' ',
    '\t',
    '$',
    '{',
    '}',
    '"',
    '\\',
    ':',
    '#',
    '-',
    '?',
    '*',
    'é',
    '\u2028',
  ),
  maxLength: 24,
})

describe('the stackerfile says exactly what the Dockerfile says', () => {
  it('for any ENV, LABEL, ARG default and RUN text', async () => {
    await fc.assert(
      fc.asyncProperty(tricky, tricky, tricky, async (env, arg, run) => {
        const c = await convert(
          [
            'FROM busybox',
            `ARG V='${arg}'`,
            `ENV V_ENV='${env}' FROM_ARG=$V`,
            `LABEL l='${env}'`,
            `RUN printf %s '${run.replace(/\n/g, ' ')}' "$V"`,
            '',
          ].join('\n'),
        )
        const l = c.load().get('app')
        expect(l?.environment).toEqual([
          ['V_ENV', env],
          ['FROM_ARG', arg],
        ])
        expect(l?.labels).toEqual([['l', env]])
        expect(l?.buildEnv.find(([k]) => k === 'V')?.[1] ?? '').toBe(arg)
        expect(l?.run.join('\n')).toContain(`printf %s '\\''${run}'\\'' "$V"`)
        // --substitute wins over the file, and lands as written.
        const o = c.load({ V: 'over' }).get('app')
        expect(o?.environment[1]).toEqual(['FROM_ARG', 'over'])
      }),
      { numRuns: 150, seed: Number(process.env.FUZZ_SEED ?? 20261204) },
    )
  })
})
