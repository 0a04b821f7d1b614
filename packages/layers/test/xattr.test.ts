import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { getXattr, listXattrs, setXattr, xattrErrno } from '../src/xattr.js'

const dir = mkdtempSync(join(tmpdir(), 'stacker-xattr-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('xattr adapter', () => {
  it('gives the errno of a failed call of the binding', () => {
    let failure: unknown
    try {
      setXattr(join(dir, 'missing'), 'user.x', Buffer.from('v'))
    } catch (e) {
      failure = e
    }
    expect(failure).toBeInstanceOf(Error)
    expect(xattrErrno(failure)).toBe(2)
    expect(xattrErrno(new Error('something else'))).toBe(undefined)
  })

  it('lists the xattrs of a file on a filesystem that holds them', () => {
    const f = join(dir, 'f')
    writeFileSync(f, 'x')
    setXattr(f, 'user.stacker.test', Buffer.from('v'))
    expect(listXattrs(f)).toContain('user.stacker.test')
    expect(getXattr(f, 'user.stacker.test')?.toString()).toBe('v')
  })
})
