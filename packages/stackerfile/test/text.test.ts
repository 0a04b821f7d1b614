import { StackerError } from '@stacker/core'
import { describe, expect, it } from 'vitest'
import { parseStackerfile, stackerfileSet, layerBuildOrder } from '../src/index.js'

describe('parseStackerfile (text in, layers out, no files)', () => {
  it('substitutes, parses and orders, with every option defaulted', () => {
    const text = `
child:
  from: {type: built, tag: base}
  import: [x]
base:
  from: {type: docker, url: "docker://\${{REG:localhost:5000}}/busybox:\${{TAG}}"}
`
    const r = parseStackerfile(text, { path: '/proj/stacker.yaml', substitutions: { TAG: '1.36' } })
    expect(r.layers.map((l) => l.name)).toEqual(['child', 'base'])
    expect(r.layers[1]?.from?.url).toBe('docker://localhost:5000/busybox:1.36')
    expect(r.layers[0]?.imports[0]?.path).toBe('/proj/x')
    expect(r.buildOrder().map((l) => l.name)).toEqual(['base', 'child'])
    expect(r.warnings).toHaveLength(1)
    expect(r.warnings[0]).toContain("'import' directive used in layer 'child'")
    expect(parseStackerfile('a:\n  from: {type: scratch}\n').layers[0]?.os).toBe('linux')
  })

  it('reports a missing substitution with its variables, and a bad directive with its position', () => {
    let e: unknown
    try {
      parseStackerfile('a:\n  from: {type: docker, url: "${{NOPE}}"}\n')
    } catch (x) {
      e = x
    }
    expect(e).toBeInstanceOf(StackerError)
    expect((e as StackerError<'SUBSTITUTION'>).detail).toEqual({ reason: 'no-value', variables: ['NOPE'] })
    try {
      parseStackerfile('a:\n  from: {type: scratch}\n  rnu: x\n', { path: '/p/s.yaml' })
    } catch (x) {
      e = x
    }
    expect((e as StackerError).pos).toEqual({ file: '/p/s.yaml', line: 3, col: 3 })
  })

  it('orders layers that need a layer of another parsed file, through stackerfileSet', () => {
    const base = parseStackerfile('base:\n  from: {type: scratch}\n', { path: '/p/base.yaml' }).file
    const app = parseStackerfile('config:\n  prerequisites: [base.yaml]\napp:\n  from: {type: built, tag: base}\n', {
      path: '/p/app.yaml',
    }).file
    const set = stackerfileSet([app, base])
    expect(set.order.map((f) => f.path)).toEqual(['/p/base.yaml', '/p/app.yaml'])
    expect(layerBuildOrder(set, app).map((l) => l.name)).toEqual(['app'])
    expect(() => parseStackerfile('app:\n  from: {type: built, tag: base}\n').buildOrder()).toThrow(
      "couldn't resolve some dependencies",
    )
  })
})
