/** biome-ignore-all lint/suspicious/noTemplateCurlyInString: stacker placeholders (${{X}}, ${X}) are the subject of these tests */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { memoryLogger, StackerError } from '@stacker/core'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { buildSubstitutions, substitute } from '../src/index.js'

function subError(text: string, subs: string[], file?: string): StackerError {
  try {
    substitute(text, subs, memoryLogger(), file === undefined ? {} : { file })
  } catch (e) {
    if (e instanceof StackerError) return e
    throw e
  }
  throw new Error('expected a StackerError')
}

describe('substitute', () => {
  it("the reference's example", () => {
    const text = '"${{ONE}} ${{TWO:}} ${{TWO:3}} ${{TWO2:22}} ${{THREE:3}} ${{NOTHING:}}"'
    expect(substitute(text, ['ONE=1', 'TWO=2'], memoryLogger())).toBe('"1 2 2 22 3 "')
  })

  it('applies substitutions in order, values split on the first =', () => {
    expect(substitute('${{A}} ${{B}}', ['A=${{B}}', 'B=x=y'], memoryLogger())).toBe('x=y x=y')
    expect(substitute('${{A}}', ['A=1', 'A=2'], memoryLogger())).toBe('1')
  })

  it('runs on the raw text, comments included', () => {
    expect(substitute('# ${{A}}\na: ${{A}}\n', ['A=v'], memoryLogger())).toBe('# v\na: v\n')
  })

  it('inserts values literally and escapes keys', () => {
    expect(substitute('${{A}}', ['A=$1 $& $$'], memoryLogger())).toBe('$1 $& $$')
    expect(substitute('${{A.B}} ${{AxB:d}}', ['A.B=dot'], memoryLogger())).toBe('dot d')
    expect(substitute('${{(}} ${{[x:d}}', ['(=paren', '[x=br'], memoryLogger())).toBe('paren br')
  })

  it('${{X:}} is empty and the default may not contain }', () => {
    expect(substitute('a${{X:}}b', [], memoryLogger())).toBe('ab')
    expect(substitute('${{X:a:b}}', [], memoryLogger())).toBe('a:b')
  })

  it('no value for substitution X, with the placeholder position', () => {
    const e = subError('a: 1\nb: ${{NOPE}}\n', ['A=1'], '/p/stacker.yaml')
    expect(e.code).toBe('SUBSTITUTION')
    expect(e.message).toBe('no value for substitution NOPE')
    expect(e.pos).toEqual({ file: '/p/stacker.yaml', line: 2, col: 4 })
  })

  it('invalid substition (sic)', () => {
    const e = subError('x', ['NOEQUALS'])
    expect(e.message).toBe('invalid substition NOEQUALS')
    expect(e.code).toBe('SUBSTITUTION')
  })

  it('leaves $X alone when X was not provided', () => {
    expect(substitute('$DONTWARN ${DONTWARN} $A', ['B=1'], memoryLogger())).toBe('$DONTWARN ${DONTWARN} $A')
  })

  it('reports unsupported placeholders with upstream messages, then fails', () => {
    const logger = memoryLogger()
    let err: unknown
    try {
      substitute('x: ${A}\ny: $B\nz: ${B:def}\n', ['A=1', 'B=2'], logger, { file: '/p/s.yaml' })
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(StackerError)
    const e = err as StackerError
    expect(e.message).toBe(
      '4 instances of unsupported placeholders found: ${A}, $B, ${B:def} (write ${{NAME}} to use a substitution)',
    )
    expect(e.detail).toEqual({ reason: 'unsupported-placeholder', variables: ['A', 'B'] })
    expect(e.pos).toEqual({ file: '/p/s.yaml', line: 1, col: 4 })
    expect(logger.lines('error')).toEqual([
      `"A=1" was provided as a substitution and unsupported placeholder "\${A}" was found. Replace "\${A}" with "\${{A}}" to use the substitution.`,
      `"A=1" was provided as a substitution and unsupported placeholder "\${A}" was found. Replace "\${A}" with "\${{A}}" to use the substitution.`,
      `"B=2" was provided as a substitution and unsupported placeholder "$B" was found. Replace "$B" with "\${{B}}" to use the substitution.`,
      `"B=2" was provided as a substitution and unsupported placeholder "\${B:def}" was found. Replace "\${B:def}" with "\${{B:def}}" to use the substitution.`,
    ])
  })

  it('$KEY is a substring match, as upstream', () => {
    const logger = memoryLogger()
    expect(() => substitute('$KEYX', ['KEY=1'], logger)).toThrow('1 instances of unsupported placeholders found')
    expect(logger.lines('error')).toHaveLength(1)
  })

  it('logs usage at debug level', () => {
    const logger = memoryLogger()
    substitute('${{A}} ${{A}}', ['A=1', 'B=2'], logger)
    expect(logger.lines('debug')).toEqual(['substitution: "A=1" was used 2 times', 'substitution: "B=2" was NOT used'])
  })
})

describe('buildSubstitutions', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'stackerfile-subs-'))
  })
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true })
  })
  const dirs = { rootsDir: '/r/roots', stackerDir: '/r/.stacker', ociDir: '/r/oci', workDir: '' }

  it('CLI first, then file entries not given, then the STACKER_* dirs', async () => {
    const f = join(dir, 'subs.yaml')
    await writeFile(f, 'B: from-file\nC: 0777\nA: ignored\nD:\n')
    const subs = await buildSubstitutions({ substitute: ['A=cli', 'B=cli=b'], substituteFile: f, dirs })
    expect(subs).toEqual([
      'A=cli',
      'B=cli=b',
      'C=0777',
      'D=',
      'STACKER_ROOTFS_DIR=/r/roots',
      'STACKER_STACKER_DIR=/r/.stacker',
      'STACKER_OCI_DIR=/r/oci',
      'STACKER_WORK_DIR=',
    ])
  })

  it('works without a substitute file', async () => {
    expect(await buildSubstitutions({ substitute: [], dirs })).toHaveLength(4)
  })

  it('read and parse failures have upstream messages', async () => {
    const missing = join(dir, 'missing.yaml')
    await expect(buildSubstitutions({ substitute: [], substituteFile: missing, dirs })).rejects.toThrow(
      `unable to read substitute-file:${missing}, err:open ${missing}: no such file or directory`,
    )
    const bad = join(dir, 'bad.yaml')
    await writeFile(bad, 'A: [1, 2\n')
    await expect(buildSubstitutions({ substitute: [], substituteFile: bad, dirs })).rejects.toThrow(
      new RegExp(`^unable to unmarshal substitute-file:${bad}, err:`),
    )
    const nested = join(dir, 'nested.yaml')
    await writeFile(nested, 'A:\n  B: 1\n')
    const e = await buildSubstitutions({ substitute: [], substituteFile: nested, dirs }).catch((x: unknown) => x)
    expect(e).toBeInstanceOf(StackerError)
    expect((e as StackerError).message).toBe(
      `unable to unmarshal substitute-file:${nested}, err:value of A must be a scalar`,
    )
    expect((e as StackerError).pos).toEqual({ file: nested, line: 2, col: 3 })
    const list = join(dir, 'list.yaml')
    await writeFile(list, '- a\n')
    await expect(buildSubstitutions({ substitute: [], substituteFile: list, dirs })).rejects.toThrow(
      'must be a map of KEY: value',
    )
  })
})
