import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { runningInUserNamespace } from '../src/index.js'

const DIST = fileURLToPath(new URL('../dist/index.js', import.meta.url))

describe('runningInUserNamespace', () => {
  it('is false in the initial user namespace', () => {
    const initial = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/).join(' ') === '0 0 4294967295'
    expect(runningInUserNamespace()).toBe(!initial)
  })

  it('is true in a user namespace of its own, even as its uid 0', () => {
    const out = execFileSync(
      'unshare',
      [
        '--user',
        '--map-root-user',
        process.execPath,
        '--input-type=module',
        '-e',
        `import { runningInUserNamespace } from ${JSON.stringify(DIST)}; console.log(process.getuid(), runningInUserNamespace())`,
      ],
      { encoding: 'utf8' },
    )
    expect(out.trim()).toBe('0 true')
  })
})
