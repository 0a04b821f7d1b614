import { describe, expect, it } from 'vitest'
import { isStackerError, StackerError } from '../src/errors.js'

describe('StackerError across copies of the package, and its detail', () => {
  it('is recognised when made by another copy (same brand, another class object)', async () => {
    // A second copy of the module, as a second install would load it.
    const url = new URL(`../dist/errors.js?copy=${Date.now()}`, import.meta.url).href
    const other = (await import(url)) as typeof import('../src/errors.js')
    expect(other.StackerError).not.toBe(StackerError)
    const e = new other.StackerError('DEPENDENCY', 'x', { detail: { missing: ['a'] } })
    expect(e instanceof StackerError).toBe(true)
    expect(isStackerError(e, 'DEPENDENCY')).toBe(true)
    expect(isStackerError(e, 'REGISTRY')).toBe(false)
    expect(isStackerError(new Error('x'))).toBe(false)
    if (isStackerError(e, 'DEPENDENCY')) expect(e.detail?.missing).toEqual(['a'])
  })

  it('keeps its one-line form and position', () => {
    const e = new StackerError('STACKERFILE', 'bad', { pos: { file: 's.yaml', line: 2, col: 3 } })
    expect(e.describe()).toBe('bad (s.yaml:2:3)')
    expect(e.detail).toBeUndefined()
  })
})
