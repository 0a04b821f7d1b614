/** biome-ignore-all lint/suspicious/noTemplateCurlyInString: stacker placeholders (${{X}}, ${X}) are the subject of these tests */
import { memoryLogger, StackerError } from '@stacker/core'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  layerBuildOrder,
  layerDefinition,
  parseStackerfileText,
  renderRunScript,
  type StackerfileSet,
  substitute,
} from '../src/index.js'

const HASH = 'ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789'

const SEEDS: string[] = [
  `# a comment with \${{NAME:default}}
config:
  prerequisites:
    - ../base/stacker.yaml
base: &base
  from:
    type: docker
    url: docker://busybox:latest
    insecure: false
  imports:
    - path: files/
      dest: /opt/
      mode: 0644
      uid: 1000
      gid: 1000
    - https://example.com/x.tgz
    - {path: "https://example.com/y", hash: ${HASH}}
  environment:
    A: "1"
    B: yes
  run: |
    echo \${{NAME:hello}}
    ls /
  cmd: /bin/sh -c "echo 'hi'"
  build_only: true
child:
  <<: *base
  from:
    type: built
    tag: base
  build_only: false
  entrypoint: [/bin/sh, -c]
  labels: {org.example: "x"}
  annotations:
    a: b
  volumes: [/data]
  working_dir: /w
  runtime_user: 1000
`,
  `layer1:
  from:
    type: oci
    url: oci-layout:busybox
  overlay_dirs:
    - source: overlay
      dest: /usr/share
    - source: /abs
  binds:
    - /a -> /b
    - /c
    - source: /d
      dest: /e
  build_env:
    X: "1"
  build_env_passthrough: ["HTTP_.*", TERM]
  generate_labels:
    - echo foo > /stacker/oci-labels/foo
  full_command: sleep 1
  os: linux
  arch: arm64
layer2:
  from:
    type: tar
    url: stacker://layer1/out.tar
  import:
    - stacker://layer1/file
  bom:
    generate: true
`,
  `a:
  from: {type: scratch}
  run: ["#!/bin/sh", "echo a"]
b:
  from: {type: built, tag: a}
  imports: stacker://a/x
c: &c
  from: {type: built, tag: b}
  environment: &env {K: v, L: "1"}
d:
  <<: [*c]
  environment: *env
`,
]

const ALPHABET = [
  ':',
  '{',
  '}',
  '[',
  ']',
  '-',
  '&',
  '*',
  '!',
  '|',
  '>',
  "'",
  '"',
  '#',
  '\n',
  ' ',
  '  ',
  '$',
  '%',
  '<<',
  '?',
  ',',
  '\\',
  '\t',
  '\0',
  'é',
  '${{',
  '}}',
  'a',
  '1',
]
const VALUES = [
  '[1]',
  '{a: b}',
  '~',
  '',
  'yes',
  '0777',
  '"s"',
  '3.5',
  '*c',
  '&x v',
  '!!binary aGk=',
  '-1',
  '[[a]]',
  '{path: 3}',
  'stacker://x/y',
  "'unterminated",
  '"${{NAME}}"',
  '${A}',
  '!foo bar',
  '1:2',
  '!!omap [a: 1]',
  '!!set {a}',
  '!!pairs [a: 1]',
  '? [a]',
]

type Op =
  | { k: 'insert' | 'replace'; at: number; s: string }
  | { k: 'delete'; at: number; len: number }
  | { k: 'dupLine' | 'delLine' | 'indent' | 'dedent'; line: number }
  | { k: 'swapLines'; a: number; b: number }
  | { k: 'swapValue'; line: number; v: string }

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    k: fc.constantFrom('insert' as const, 'replace' as const),
    at: fc.nat(),
    s: fc.constantFrom(...ALPHABET),
  }),
  fc.record({ k: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 12 }) }),
  fc.record({
    k: fc.constantFrom('dupLine' as const, 'delLine' as const, 'indent' as const, 'dedent' as const),
    line: fc.nat(),
  }),
  fc.record({ k: fc.constant('swapLines' as const), a: fc.nat(), b: fc.nat() }),
  fc.record({ k: fc.constant('swapValue' as const), line: fc.nat(), v: fc.constantFrom(...VALUES) }),
)

function mutate(text: string, ops: readonly Op[]): string {
  let t = text
  for (const op of ops) {
    const lines = t.split('\n')
    switch (op.k) {
      case 'insert':
      case 'replace': {
        const at = t.length === 0 ? 0 : op.at % t.length
        t = t.slice(0, at) + op.s + t.slice(op.k === 'replace' ? at + 1 : at)
        break
      }
      case 'delete': {
        const at = t.length === 0 ? 0 : op.at % t.length
        t = t.slice(0, at) + t.slice(at + op.len)
        break
      }
      case 'dupLine': {
        const i = op.line % lines.length
        lines.splice(i, 0, lines[i]!)
        t = lines.join('\n')
        break
      }
      case 'delLine':
        lines.splice(op.line % lines.length, 1)
        t = lines.join('\n')
        break
      case 'indent':
      case 'dedent': {
        const i = op.line % lines.length
        lines[i] = op.k === 'indent' ? `  ${lines[i]}` : lines[i]!.replace(/^ {1,2}/, '')
        t = lines.join('\n')
        break
      }
      case 'swapLines': {
        const a = op.a % lines.length
        const b = op.b % lines.length
        ;[lines[a], lines[b]] = [lines[b]!, lines[a]!]
        t = lines.join('\n')
        break
      }
      case 'swapValue': {
        const i = op.line % lines.length
        const line = lines[i]!
        const colon = line.indexOf(': ')
        const dash = line.match(/^(\s*- )/)
        if (colon >= 0) lines[i] = `${line.slice(0, colon + 2)}${op.v}`
        else if (dash) lines[i] = `${dash[1]}${op.v}`
        else lines[i] = `${line}: ${op.v}`
        t = lines.join('\n')
        break
      }
    }
  }
  return t
}

const FILE = '/fuzz/stacker.yaml'

/** Runs the whole pipeline on one text. Returns 'model' or 'error'; anything else thrown escapes. */
function runPipeline(text: string): 'model' | 'error' {
  const logger = memoryLogger()
  try {
    const substituted = substitute(text, ['NAME=fuzz', 'ONE=1'], logger, { file: FILE })
    const sf = parseStackerfileText(substituted, {
      path: FILE,
      referenceDir: '/fuzz',
      requireHash: false,
      logger,
      os: 'linux',
      arch: 'amd64',
    })
    const set: StackerfileSet = {
      files: new Map([[FILE, { ...sf, prerequisites: [] }]]),
      order: [sf],
      findLayer: (n) => sf.layers.get(n),
    }
    for (const l of sf.layers.values()) {
      JSON.stringify(layerDefinition(l))
      renderRunScript(l.run)
    }
    layerBuildOrder(set, { ...sf, prerequisites: [] }, logger)
    return 'model'
  } catch (e) {
    if (e instanceof StackerError) {
      if (typeof e.message !== 'string' || e.message === '') throw new Error('StackerError without a message')
      return 'error'
    }
    throw e
  }
}

describe('fuzz', () => {
  it('every seed is valid', () => {
    for (const s of SEEDS) expect(runPipeline(s)).toBe('model')
  })

  it('10,000+ mutated stackerfiles each give a model or a StackerError', () => {
    const seed = Number(process.env.FUZZ_SEED ?? 20240611)
    const outcomes = { model: 0, error: 0 }
    fc.assert(
      fc.property(fc.constantFrom(...SEEDS), fc.array(opArb, { minLength: 1, maxLength: 6 }), (base, ops) => {
        outcomes[runPipeline(mutate(base, ops))]++
      }),
      { numRuns: 10_500, seed },
    )
    expect(outcomes.model + outcomes.error).toBe(10_500)
    // Both paths must be exercised, or the mutations are not reaching the parser.
    expect(outcomes.model).toBeGreaterThan(500)
    expect(outcomes.error).toBeGreaterThan(500)
  }, 180_000)

  it('alias bombs and self-referencing merges end in bounded time', () => {
    const bomb = [
      'a: &a [x, x, x, x, x, x, x, x, x]',
      'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]',
      'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]',
      'd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]',
      'e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]',
      'f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]',
      'layer:',
      '  from: {type: scratch}',
      '  imports: [*f]',
      '',
    ].join('\n')
    expect(runPipeline(bomb)).toBe('error')
    expect(runPipeline('x: &x\n  <<: *x\n')).toBe('error')
    expect(runPipeline('x: &x [*x]\n')).toBe('error')
  })
})

describe('pathological documents', () => {
  it('deep nesting and long merge chains are StackerErrors', () => {
    expect(runPipeline(`a: ${'['.repeat(20000)}${']'.repeat(20000)}\n`)).toBe('error')
    const chain = Array.from(
      { length: 4000 },
      (_, i) => `m${i}: &m${i}\n  <<: ${i ? `*m${i - 1}` : '{from: {type: scratch}}'}\n  build_only: true`,
    ).join('\n')
    expect(['model', 'error']).toContain(runPipeline(`${chain}\n`))
  })
})
