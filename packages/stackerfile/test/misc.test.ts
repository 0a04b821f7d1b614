/** biome-ignore-all lint/suspicious/noTemplateCurlyInString: stacker placeholders (${{X}}, ${X}) are the subject of these tests */
import { StackerError } from '@stacker/core'
import { describe, expect, it } from 'vitest'
import { hostGoArch, layerDefinition, renderRunScript, splitShellWords } from '../src/index.js'
import { layer } from './helpers.js'

describe('splitShellWords', () => {
  it('splits like a POSIX shell without expansions', () => {
    expect(splitShellWords('  a  b\tc\n')).toEqual(['a', 'b', 'c'])
    expect(splitShellWords(`'a b' "c d" e\\ f`)).toEqual(['a b', 'c d', 'e f'])
    expect(splitShellWords(`a'b'"c"d`)).toEqual(['abcd'])
    expect(splitShellWords(`'' ""`)).toEqual(['', ''])
    expect(splitShellWords(`"a\\"b\\\\c\\$d\\e"`)).toEqual(['a"b\\c$d\\e'])
    expect(splitShellWords(`'a\\b'`)).toEqual(['a\\b'])
    expect(splitShellWords('a\\\nb')).toEqual(['ab'])
    expect(splitShellWords('$HOME ${X}')).toEqual(['$HOME', '${X}'])
    expect(splitShellWords('')).toEqual([])
  })

  it('rejects unterminated quotes and a trailing backslash', () => {
    expect(() => splitShellWords(`'abc`)).toThrow(new StackerError('STACKERFILE', 'No closing quotation'))
    expect(() => splitShellWords(`"abc`)).toThrow('No closing quotation')
    expect(() => splitShellWords('abc\\')).toThrow('No escaped character')
  })
})

describe('renderRunScript', () => {
  it('adds the default shebang unless the first element has one', () => {
    expect(renderRunScript(['echo a', 'echo b'])).toBe('#!/bin/sh -xe\necho a\necho b\n')
    expect(renderRunScript(['#!/bin/bash\necho a'])).toBe('#!/bin/bash\necho a\n')
    expect(renderRunScript(['echo a\n'])).toBe('#!/bin/sh -xe\necho a\n\n')
    expect(renderRunScript([])).toBe('')
  })
})

describe('hostGoArch', () => {
  it('maps node names to Go names', () => {
    expect(hostGoArch('x64')).toBe('amd64')
    expect(hostGoArch('arm64')).toBe('arm64')
    expect(hostGoArch('ia32')).toBe('386')
    expect(hostGoArch('s390x')).toBe('s390x')
  })
})

describe('layerDefinition', () => {
  const text = (env: string) =>
    `foo:\n  from: {type: docker, url: "docker://x"}\n  environment:\n${env}  run: [echo]\n  cmd: a b\n`
  it('is JSON-able, position-free and sensitive to every directive', () => {
    const a = layerDefinition(layer(text('    A: "1"\n    B: "2"\n'), 'foo'))
    expect(JSON.parse(JSON.stringify(a))).toEqual(a)
    expect(JSON.stringify(a)).not.toContain('"pos"')
    expect(JSON.stringify(a)).not.toContain('line')
    expect(a).toMatchObject({
      from: { type: 'docker', url: 'docker://x', insecure: false },
      run: ['echo'],
      cmd: ['a', 'b'],
    })
    const same = layerDefinition(layer(`\n\n${text('    A: "1"\n    B: "2"\n')}`, 'foo'))
    expect(same).toEqual(a)
    const reordered = layerDefinition(layer(text('    B: "2"\n    A: "1"\n'), 'foo'))
    expect(reordered).not.toEqual(a)
  })
})
